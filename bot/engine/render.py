"""Sandboxed Jinja: compiling reply texts once, building the context, checking names.

Flow authors' strings are templates; what users send is *data* placed in the context and
never compiled, so a user typing ``{{ 7*7 }}`` sees exactly that echoed back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bot.engine._check_sandbox import sandbox_problems
from bot.engine._replies import is_template
from bot.errors import RenderError
from bot.findings import did_you_mean
from bot.models import InboundMessage, UserRecord

#: A compiled string: context → value.
Renderable = Callable[[Mapping[str, Any]], Any]

ROOTS = frozenset({"user", "message", "vars", "const"})
_PATH = re.compile(r"(user|message|vars|const)((?:\.[A-Za-z_]\w*)+)")
#: A template that is one such path and nothing else, like ``{{ message.text }}``.
_WHOLE_PATH = re.compile(r"\{\{-?\s*(" + _PATH.pattern + r")\s*-?\}\}")
USER_FIELDS = frozenset(
    {
        "key",
        "wa_id",
        "user_id",
        "profile_name",
        "language",
        "message_count",
        "last_inbound_at",
        "flow",
        "state",
    }
)
MESSAGE_FIELDS = frozenset(
    {
        "wamid",
        "type",
        "text",
        "id",
        "title",
        "description",
        "payload",
        "caption",
        "media",
        "location",
        "match",
        "timestamp",
        "emoji",
    }
)


def user_context(record: UserRecord) -> dict[str, Any]:
    """``user`` as templates see it."""
    return {
        "key": record.key,
        "wa_id": record.wa_id,
        "user_id": record.user_id,
        "profile_name": record.profile_name,
        "language": record.language,
        "message_count": record.message_count,
        "last_inbound_at": record.last_inbound_at,
        "flow": record.flow,
        "state": record.state,
    }


def message_context(message: InboundMessage) -> dict[str, Any]:
    """``message`` as templates see it (``match`` is filled per rule from regex groups)."""
    inter, button, media, loc = message.interactive, message.button, message.media, message.location
    return {
        "wamid": message.id,
        "type": message.type,
        "text": message.text,
        "id": inter.id if inter else "",
        "title": inter.title if inter else "",
        "description": inter.description if inter else "",
        "payload": button.payload if button else "",
        "caption": media.caption if media else "",
        "media": None if media is None else asdict(media),
        "location": None if loc is None else asdict(loc),
        "match": {},
        "timestamp": message.timestamp,
        "emoji": message.reaction.emoji if message.reaction else "",
    }


def blank_message_context() -> dict[str, Any]:
    """``message`` with every field empty: for replies that are not about a message (or
    whose message cannot be trusted, like the one whose handling just failed)."""
    return {
        "wamid": "",
        "type": "",
        "text": "",
        "id": "",
        "title": "",
        "description": "",
        "payload": "",
        "caption": "",
        "media": None,
        "location": None,
        "match": {},
        "timestamp": 0,
        "emoji": "",
    }


MAX_RENDERED = 20_000
"""Most characters one string may render to (WhatsApp's longest field takes 4,096)."""


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, plus a bound on what ``*``, ``**`` and ``%`` may build.

    ``('x' * 20000000)`` would otherwise allocate the whole string before anything could
    look at its size; intercepted operators are also never folded at compile time.
    """

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """``left operator right``, refused when the result would be too large."""
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > MAX_RENDERED:
                    raise SecurityError(
                        f"the result would be {len(seq) * times} long; at most {MAX_RENDERED}"
                    )
        ints = isinstance(left, int) and isinstance(right, int)
        if operator == "**" and ints and right > 0 and left.bit_length() * right > MAX_RENDERED * 4:
            raise SecurityError(f"{left} ** {right} is too large a number")
        result = super().call_binop(context, operator, left, right)
        if operator == "%" and isinstance(result, str) and len(result) > MAX_RENDERED:
            raise SecurityError(f"the result is {len(result)} long; at most {MAX_RENDERED}")
        return result


class Renderer:
    """One sandboxed environment; compiles strings once and checks them."""

    def __init__(self) -> None:
        self.env = Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
        # Jinja copies its globals into every render's context; keep only what replies use.
        self.env.globals = {"range": self.env.globals["range"]}
        self._templates: dict[str, Template] = {}

    def template(self, source: str) -> Template:
        """The compiled template of ``source``; each distinct string is compiled once."""
        template = self._templates.get(source)
        if template is None:
            template = self._templates[source] = self.env.from_string(source)
        return template

    def text(self, source: str, where: str) -> Renderable:
        """A reply string: rendered by Jinja if it holds markup, else used as it is."""
        if not is_template(source):
            return lambda _ctx: source
        template = self.template(source)

        def render(ctx: Mapping[str, Any]) -> str:
            try:
                out = template.render(ctx)
            except Exception as exc:  # Jinja's errors, and ZeroDivisionError & co. of the values
                raise _render_error(where, exc) from exc
            if len(out) > MAX_RENDERED:
                raise RenderError(
                    f"{where}: rendered to {len(out)} characters; at most {MAX_RENDERED}"
                )
            return out

        whole = _WHOLE_PATH.fullmatch(source)  # "{{ message.text }}": one value, shown as is
        return render if whole is None else _path_lookup(whole.group(1), render)

    def expression(self, source: str, where: str) -> Renderable:
        """A template parameter: a Jinja expression, or a template if it holds ``{{``."""
        if is_template(source):
            return self.text(source, where)
        expr = self.env.compile_expression(source, undefined_to_none=False)

        def evaluate(ctx: Mapping[str, Any]) -> str:
            try:
                out = str(expr(**ctx))
            except Exception as exc:  # Jinja's errors, and ZeroDivisionError & co. of the values
                raise _render_error(where, exc) from exc
            if len(out) > MAX_RENDERED:
                raise RenderError(
                    f"{where}: rendered to {len(out)} characters; at most {MAX_RENDERED}"
                )
            return out

        path = _PATH.fullmatch(source.strip())
        return evaluate if path is None else _path_lookup(path.group(), evaluate)

    def problems(
        self,
        source: str,
        *,
        expression: bool,
        variables: frozenset[str],
        constants: frozenset[str],
    ) -> list[tuple[int, str]]:
        """(1-based line within ``source``, message) for syntax errors and unknown names."""
        try:
            if expression and not is_template(source):
                self.env.compile_expression(source)
                source = "{{ (" + source + ") }}"
            ast = self.env.parse(source)
            self.template(source)  # unknown filters and tests surface here
        except TemplateError as exc:
            lineno = getattr(exc, "lineno", 1) or 1
            message = getattr(exc, "message", None) or str(exc)
            return [(lineno, f"Jinja syntax error: {message}")]
        out = sandbox_problems(self.env, ast)
        for name in sorted(meta.find_undeclared_variables(ast) - ROOTS - set(self.env.globals)):
            out.append(
                (
                    _lineno(ast, name),
                    f"unknown name '{name}'{_root_hint(name, variables, constants)}",
                )
            )
        known = {
            "user": USER_FIELDS,
            "message": MESSAGE_FIELDS,
            "vars": variables,
            "const": constants,
        }
        for root, attr, lineno in _root_lookups(ast):
            if attr not in known[root]:
                hint = did_you_mean(attr, known[root])
                what = "variable" if root == "vars" else "field"
                if root == "vars" and not hint:
                    hint = " (declare it under vars: or save: it somewhere)"
                if root == "const" and not hint:
                    hint = " (declare it under constants:)"
                out.append((lineno, f"unknown {what} '{root}.{attr}'{hint}"))
        return out


def _path_lookup(path: str, slow: Renderable) -> Renderable:
    """``vars.name`` and the like as plain dict lookups, as Jinja would do them.

    Any other case (a missing key, an object that is not a mapping, a string too long) goes
    through ``slow``, Jinja itself, for its exact result or error.
    """
    root, *keys = path.split(".")
    if any(hasattr(dict, key) for key in keys):
        return slow  # Jinja looks attributes up first: ``vars.items`` is the dict's method

    def lookup(ctx: Mapping[str, Any]) -> str:
        value = ctx[root]
        for key in keys:
            if not isinstance(value, Mapping) or key not in value:
                return str(slow(ctx))
            value = value[key]
        out = str(value)
        return out if len(out) <= MAX_RENDERED else str(slow(ctx))

    return lookup


def _render_error(where: str, exc: Exception) -> RenderError:
    what = str(exc) if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
    return RenderError(f"{where}: {what}")


def _root_lookups(ast: nodes.Template) -> list[tuple[str, str, int]]:
    found = []
    for node in ast.find_all(nodes.Getattr):
        base = node.node
        if isinstance(base, nodes.Name) and base.name in ROOTS:
            found.append((base.name, str(node.attr), int(node.lineno)))
    for item in ast.find_all(nodes.Getitem):
        base, arg = item.node, item.arg
        if (
            isinstance(base, nodes.Name)
            and base.name in ROOTS
            and isinstance(arg, nodes.Const)
            and isinstance(arg.value, str)
        ):
            found.append((base.name, arg.value, int(item.lineno)))
    return found


def _lineno(ast: nodes.Template, name: str) -> int:
    for node in ast.find_all(nodes.Name):
        if node.name == name:
            return int(node.lineno)
    return 1


def _root_hint(name: str, variables: frozenset[str], constants: frozenset[str]) -> str:
    for root, names in (
        ("vars", variables),
        ("const", constants),
        ("user", USER_FIELDS),
        ("message", MESSAGE_FIELDS),
    ):
        if name in names:
            return f" (did you mean '{root}.{name}'?)"
    return did_you_mean(name, ROOTS) or " (templates see user, message, vars and const)"
