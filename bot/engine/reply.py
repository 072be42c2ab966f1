"""Replies compiled once at load: ``say:`` items → Cloud API bodies and template calls.

A compiled reply is a tree shaped like the Cloud API body whose leaves that vary are
:data:`~bot.engine.render.Renderable`; rendering fills the leaves from the context.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.engine.render import Renderable, Renderer
from bot.engine.spec import FallbackSpec, ReplySpec
from bot.errors import RenderError
from bot.models import Outgoing, TemplateCall
from bot.replies import LIMITS, one_line


class CompiledFallback:
    """A ``fallback:`` ready to render into a :class:`TemplateCall`."""

    __slots__ = ("buttons", "header", "language", "name", "named", "params")

    def __init__(self, renderer: Renderer, spec: FallbackSpec) -> None:
        where = f"{spec.file}:{spec.line}"
        self.name = spec.template
        self.language = spec.language
        self.params = tuple(renderer.expression(p, where) for p in spec.params)
        self.named = spec.names
        self.header = tuple(renderer.expression(h, where) for h in spec.header)
        self.buttons = tuple(renderer.text(b, where) for b in spec.buttons)

    def render(self, ctx: Mapping[str, Any]) -> TemplateCall:
        """The template call, every parameter rendered to one line of text."""
        values = tuple(one_line(p(ctx)) for p in self.params)
        parameters: tuple[str, ...] | Mapping[str, str] = (
            dict(zip(self.named, values, strict=True)) if self.named else values
        )
        return TemplateCall(
            name=self.name,
            parameters=parameters,
            language=self.language,
            header=tuple(one_line(h(ctx)) for h in self.header),
            buttons=tuple(str(b(ctx)) for b in self.buttons),
        )


class CompiledReply:
    """One ``say:`` item ready to render into an :class:`Outgoing`."""

    __slots__ = ("body", "fallback", "note")

    def __init__(self, body: dict[str, Any], fallback: CompiledFallback | None, note: str) -> None:
        self.body = _builder(body)
        self.fallback = fallback
        self.note = note

    def render(self, ctx: Mapping[str, Any]) -> Outgoing:
        """The reply for this context."""
        message = self.body(ctx)
        fallback = self.fallback.render(ctx) if self.fallback is not None else None
        return Outgoing(message=message, fallback=fallback, note=self.note)


def compile_reply(renderer: Renderer, spec: ReplySpec, where: str, note: str) -> CompiledReply:
    """Compile one reply; ``where`` (``file:line``) prefixes render errors."""

    def t(source: str, limit: str = "") -> Renderable:
        r = renderer.text(source, where)
        return _limited(r, LIMITS[limit]) if limit else r

    body: dict[str, Any]
    if spec.kind == "text":
        body = {
            "type": "text",
            "text": {"body": t(spec.text, "text"), "preview_url": spec.preview_url},
        }
    elif spec.kind in ("buttons", "list"):
        inter: dict[str, Any] = {"type": "button" if spec.kind == "buttons" else "list"}
        if spec.header:
            inter["header"] = {"type": "text", "text": t(spec.header, "header")}
        inter["body"] = {"text": t(spec.text, "body")}
        if spec.footer:
            inter["footer"] = {"text": t(spec.footer, "footer")}
        if spec.kind == "buttons":
            inter["action"] = {
                "buttons": [
                    {
                        "type": "reply",
                        "reply": {"id": t(b.id, "button_id"), "title": t(b.title, "button_title")},
                    }
                    for b in spec.buttons
                ]
            }
        else:
            sections = []
            for s in spec.sections:
                section: dict[str, Any] = {"title": t(s.title, "section_title")} if s.title else {}
                section["rows"] = [_row(t, row.id, row.title, row.description) for row in s.rows]
                sections.append(section)
            inter["action"] = {"button": t(spec.list_button, "list_button"), "sections": sections}
        body = {"type": "interactive", "interactive": inter}
    elif spec.kind == "location":
        loc: dict[str, Any] = {
            "latitude": _float(t(spec.latitude), where),
            "longitude": _float(t(spec.longitude), where),
        }
        if spec.name:
            loc["name"] = t(spec.name)
        if spec.address:
            loc["address"] = t(spec.address)
        body = {"type": "location", "location": loc}
    else:
        media: dict[str, Any] = {"link": t(spec.link)}
        if spec.text and spec.kind in ("image", "video", "document"):
            media["caption"] = t(spec.text, "caption")
        if spec.filename and spec.kind == "document":
            media["filename"] = t(spec.filename)
        body = {"type": spec.kind, spec.kind: media}
    fallback = CompiledFallback(renderer, spec.fallback) if spec.fallback else None
    return CompiledReply(body, fallback, note)


def _row(t: Any, ident: str, title: str, description: str) -> dict[str, Any]:
    row = {"id": t(ident, "row_id"), "title": t(title, "row_title")}
    if description:
        row["description"] = t(description, "row_description")
    return row


def _limited(render: Renderable, limit: int) -> Renderable:
    """Cut a rendered string to WhatsApp's limit (the checker catches literal overflows)."""

    def cut(ctx: Mapping[str, Any]) -> str:
        value = str(render(ctx))
        return value if len(value) <= limit else value[: limit - 1] + "…"

    return cut


def _float(render: Renderable, where: str) -> Renderable:
    def number(ctx: Mapping[str, Any]) -> float:
        value = render(ctx)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RenderError(f"{where}: location coordinate {value!r} is not a number") from None

    return number


def _builder(tree: Any) -> Renderable:
    """A function that builds a fresh copy of ``tree`` with its callables evaluated.

    Compiled once per reply, so rendering walks no tree: each dict or list becomes one
    comprehension over its precomputed parts, and static parts are copied, never shared
    (callers may mutate the bodies they get).
    """
    if callable(tree):
        leaf: Renderable = tree
        return leaf
    if isinstance(tree, dict):
        parts = [
            (k, _builder(v) if isinstance(v, dict | list) or callable(v) else None, v)
            for k, v in tree.items()
        ]
        return lambda ctx: {k: f(ctx) if f is not None else v for k, f, v in parts}
    if isinstance(tree, list):
        builders = [_builder(v) for v in tree]
        return lambda ctx: [f(ctx) for f in builders]
    return lambda ctx: tree
