"""Typed reply builders: what a hook returns or schedules, without the Cloud API's JSON.

Each builder checks WhatsApp's limits when it is called, so a reply the Cloud API would
refuse fails in the hook that built it, with a message saying which part is too long::

    from bot import HookContext, buttons, template, text

    def offer(ctx: HookContext):
        return buttons("Pick a day", {"mon": "Monday", "tue": "Tuesday"}, footer="Reply anytime")

    def remind(ctx: HookContext) -> None:
        ctx.schedule(
            text("Your visit is tomorrow.", fallback=template("visit_reminder", ctx.vars["name"])),
            delay=3600,
        )
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bot.models import JSON, Outgoing, TemplateCall

__all__ = ["buttons", "image", "list_", "template", "text"]

#: WhatsApp's limits (characters) for the parts of a message.
LIMITS = {
    "text": 4096,
    "body": 1024,
    "caption": 1024,
    "header": 60,
    "footer": 60,
    "button_title": 20,
    "button_id": 256,
    "list_button": 20,
    "row_title": 24,
    "row_description": 72,
    "row_id": 200,
    "section_title": 24,
}
MAX_BUTTONS = 3
MAX_ROWS = 10

#: Choices given as ``{id: title}`` or as ``(id, title)`` pairs; list rows may add a description.
Choices = Mapping[str, str] | Iterable[tuple[str, str]]
Rows = Mapping[str, str] | Iterable[tuple[str, str] | tuple[str, str, str]]


def text(
    body: str,
    *,
    preview_url: bool = False,
    fallback: TemplateCall | None = None,
    note: str = "",
) -> Outgoing:
    """A text message (with ``fallback`` as the template to send once the window has closed)."""
    message = {"type": "text", "text": {"body": _part(body, "text"), "preview_url": preview_url}}
    return Outgoing(message=message, fallback=fallback, note=note)


def buttons(
    body: str,
    choices: Choices,
    *,
    header: str = "",
    footer: str = "",
    fallback: TemplateCall | None = None,
    note: str = "",
) -> Outgoing:
    """Up to three reply buttons under ``body``; a tap comes back as the button's id."""
    pairs = _pairs(choices)
    if not 1 <= len(pairs) <= MAX_BUTTONS:
        raise ValueError(f"buttons() takes 1 to {MAX_BUTTONS} choices, got {len(pairs)}")
    action = {
        "buttons": [
            {
                "type": "reply",
                "reply": {"id": _part(i, "button_id"), "title": _part(t, "button_title")},
            }
            for i, t in pairs
        ]
    }
    return _interactive("button", body, action, header, footer, fallback, note)


def list_(
    body: str,
    rows: Rows = (),
    *,
    button: str = "Choose",
    sections: Mapping[str, Rows] | None = None,
    header: str = "",
    footer: str = "",
    fallback: TemplateCall | None = None,
    note: str = "",
) -> Outgoing:
    """A list message: ``button`` opens up to ten rows, given as ``rows`` or titled ``sections``.

    Named ``list_`` so it does not hide the builtin ``list``.
    """
    if sections is not None and rows:
        raise ValueError("list_() takes rows or sections, not both")
    groups = dict(sections) if sections is not None else {"": rows}
    built = []
    for title, items in groups.items():
        section: JSON = {"title": _part(title, "section_title")} if title else {}
        section["rows"] = [_row(item) for item in _rows(items)]
        if not section["rows"]:
            raise ValueError(f"list_() section {title!r} has no rows" if title else "no rows")
        built.append(section)
    count = sum(len(s["rows"]) for s in built)
    if count > MAX_ROWS:
        raise ValueError(f"a list message holds at most {MAX_ROWS} rows, got {count}")
    if len(built) > 1 and any("title" not in s for s in built):
        raise ValueError("every section of a list with several sections needs a title")
    action = {"button": _part(button, "list_button"), "sections": built}
    return _interactive("list", body, action, header, footer, fallback, note)


def image(
    link: str, *, caption: str = "", fallback: TemplateCall | None = None, note: str = ""
) -> Outgoing:
    """An image from an https ``link``, with an optional caption."""
    if not link.startswith(("https://", "http://")):
        raise ValueError(f"image() needs an http(s) link, got {link!r}")
    media: JSON = {"link": link}
    if caption:
        media["caption"] = _part(caption, "caption")
    return Outgoing(message={"type": "image", "image": media}, fallback=fallback, note=note)


def template(
    name: str,
    /,
    *params: Any,
    language: str = "",
    header: Iterable[Any] = (),
    buttons: Iterable[str] = (),
    **named: Any,
) -> TemplateCall:
    """A template call: positional ``params`` for ``{{1}}``… or ``named`` ones, not both.

    Every value is sent as one line of text (newlines and runs of spaces are collapsed, as
    WhatsApp requires). ``language`` empty picks the variant by the user's language chain;
    ``buttons`` are the payloads of the template's quick-reply buttons, in order.
    Use it as the ``fallback`` of a session reply, or schedule it alone. (``language``,
    ``header`` and ``buttons`` cannot be the names of named parameters.)
    """
    if params and named:
        raise ValueError(f"template {name!r}: give positional or named parameters, not both")
    parameters: tuple[str, ...] | dict[str, str] = (
        {k: one_line(v) for k, v in named.items()} if named else tuple(map(one_line, params))
    )
    return TemplateCall(
        name=name,
        parameters=parameters,
        language=language,
        header=tuple(map(one_line, header)),
        buttons=tuple(buttons),
    )


def _interactive(
    kind: str,
    body: str,
    action: JSON,
    header: str,
    footer: str,
    fallback: TemplateCall | None,
    note: str,
) -> Outgoing:
    inter: JSON = {"type": kind}
    if header:
        inter["header"] = {"type": "text", "text": _part(header, "header")}
    inter["body"] = {"text": _part(body, "body")}
    if footer:
        inter["footer"] = {"text": _part(footer, "footer")}
    inter["action"] = action
    return Outgoing(
        message={"type": "interactive", "interactive": inter}, fallback=fallback, note=note
    )


def _part(value: str, limit: str) -> str:
    """``value`` checked against WhatsApp's limit for that part."""
    value = str(value)
    if not value.strip():
        raise ValueError(f"the {limit.replace('_', ' ')} is empty")
    if len(value) > LIMITS[limit]:
        raise ValueError(
            f"the {limit.replace('_', ' ')} {value[:30]!r}... has {len(value)} characters;"
            f" WhatsApp allows {LIMITS[limit]}"
        )
    return value


def _pairs(choices: Choices) -> list[tuple[str, str]]:
    return list(choices.items()) if isinstance(choices, Mapping) else list(choices)


def _rows(rows: Rows) -> list[tuple[str, ...]]:
    return list(rows.items()) if isinstance(rows, Mapping) else [tuple(r) for r in rows]


def _row(item: tuple[str, ...]) -> JSON:
    if len(item) not in (2, 3):
        raise ValueError(f"a list row is (id, title) or (id, title, description), got {item!r}")
    row: JSON = {"id": _part(item[0], "row_id"), "title": _part(item[1], "row_title")}
    if len(item) == 3 and item[2]:
        row["description"] = _part(item[2], "row_description")
    return row


def one_line(value: Any) -> str:
    """Template parameters may not hold newlines, tabs or runs of spaces: collapse them."""
    return " ".join(str(value).split())
