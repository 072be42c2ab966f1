"""Reading ``say:`` items (replies) and their ``fallback:`` templates from YAML nodes."""

from __future__ import annotations

import re

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bot._yaml import Reader, line_of
from bot.engine.spec import FallbackSpec, ReplyButton, ReplyKind, ReplySpec, Row, Section
from bot.templates import LANGUAGE

MEDIA_KINDS: tuple[ReplyKind, ...] = ("image", "video", "audio", "document", "sticker")
REPLY_KEYS = frozenset(
    {
        "text",
        "preview_url",
        "header",
        "footer",
        "buttons",
        "list",
        "location",
        "caption",
        "filename",
        "fallback",
        *MEDIA_KINDS,
    }
)
LIST_KEYS = frozenset({"button", "rows", "sections"})
SECTION_KEYS = frozenset({"title", "rows"})
ROW_KEYS = frozenset({"id", "title", "description"})
BUTTON_KEYS = frozenset({"id", "title"})
LOCATION_KEYS = frozenset({"latitude", "longitude", "name", "address"})
FALLBACK_KEYS = frozenset({"template", "language", "params", "header", "buttons"})


def is_template(text: str) -> bool:
    """Whether a string holds Jinja markup (strings without it are used as they are)."""
    return "{{" in text or "{%" in text or "{#" in text


def slug(title: str) -> str:
    """The id a button or row gets from its title: ``"Opening hours"`` → ``"opening_hours"``."""
    return re.sub(r"\W+", "_", title.casefold()).strip("_")


class ReplyReader:
    """Builds :class:`ReplySpec` values for one file."""

    def __init__(self, reader: Reader, *, flow: str = "") -> None:
        self.r = reader
        self.flow = flow

    def replies(self, node: Node, state: str = "") -> tuple[ReplySpec, ...]:
        """A ``say:`` value: one reply or a list; a plain string is a text reply."""
        out = []
        for item in self.r.items(node):
            reply = self.reply(item, state)
            if reply is not None:
                out.append(reply)
        return tuple(out)

    def reply(self, node: Node, state: str) -> ReplySpec | None:
        """One reply."""
        r = self.r
        if isinstance(node, ScalarNode):
            text = r.text(node, "a reply")
            return ReplySpec("text", line_of(node), text=text or "", text_line=line_of(node))
        m = r.mapping(node, "a reply", REPLY_KEYS)
        if m is None:
            return None
        line = line_of(node)
        kinds = [k for k in ("buttons", "list", "location", *MEDIA_KINDS) if k in m]
        if len(kinds) > 1:
            r.report(node, f"a reply is one message: choose one of {', '.join(kinds)}")
            return None
        kind: ReplyKind = kinds[0] if kinds else "text"
        fields: dict[str, object] = {}
        text_key = "caption" if kind in MEDIA_KINDS else "text"
        wrong = "text" if text_key == "caption" else "caption"
        if wrong in m:
            hint = "media replies take caption:" if wrong == "text" else "use text:"
            r.report(m[wrong][0], f"'{wrong}' does not fit this reply ({hint})")
        if text_key in m:
            fields["text"] = r.text(m[text_key][1], text_key) or ""
            fields["text_line"] = line_of(m[text_key][1])
        elif kind in ("text", "buttons", "list"):
            r.report(node, "this reply needs text: (the message body)")
        for key in ("header", "footer", "filename"):
            if key in m:
                fields[key] = r.text(m[key][1], key) or ""
        if "preview_url" in m:
            fields["preview_url"] = bool(r.flag(m["preview_url"][1], "preview_url"))
        if kind == "buttons":
            fields["buttons"] = self._buttons(m["buttons"][1])
        elif kind == "list":
            self._list(m["list"][1], fields)
        elif kind == "location":
            self._location(m["location"][1], fields)
        elif kind in MEDIA_KINDS:
            fields["link"] = r.text(m[kind][1], f"{kind} (a https:// link)") or ""
        if "fallback" in m:
            fields["fallback"] = self.fallback(m["fallback"][1], state, line_of(m["fallback"][0]))
        return ReplySpec(kind, line, **fields)  # type: ignore[arg-type]

    def _buttons(self, node: Node) -> tuple[ReplyButton, ...]:
        out = []
        for item in self.r.items(node):
            ident, title = self._id_title(item, "a button", BUTTON_KEYS)
            if title is not None:
                out.append(ReplyButton(ident, title, line_of(item)))
        if not out:
            self.r.report(node, "buttons: needs at least one button")
        return tuple(out)

    def _id_title(self, node: Node, what: str, keys: frozenset[str]) -> tuple[str, str | None]:
        """``Title`` (id derived from it) or ``{id: x, title: Title}``."""
        r = self.r
        if isinstance(node, ScalarNode):
            title = r.text(node, what) or ""
            if is_template(title):
                r.report(node, f"{what} with a Jinja title needs an explicit id:")
            return slug(title), title
        m = r.mapping(node, what, keys)
        if m is None:
            return "", None
        if "title" not in m:
            r.report(node, f"{what} needs a title:")
            return "", None
        title = r.text(m["title"][1], "title") or ""
        ident = r.text(m["id"][1], "id") if "id" in m else None
        if ident is None:
            if is_template(title):
                r.report(node, f"{what} with a Jinja title needs an explicit id:")
            ident = slug(title)
        return ident, title

    def _rows(self, node: Node) -> tuple[Row, ...]:
        out = []
        for item in self.r.items(node):
            ident, title = self._id_title(item, "a list row", ROW_KEYS)
            if title is None:
                continue
            description = ""
            if isinstance(item, MappingNode):
                for key, value in item.value:
                    if isinstance(key, ScalarNode) and key.value == "description":
                        description = self.r.text(value, "description") or ""
            out.append(Row(ident, title, line_of(item), description))
        return tuple(out)

    def _list(self, node: Node, fields: dict[str, object]) -> None:
        r = self.r
        m = r.mapping(node, "list", LIST_KEYS)
        if m is None:
            return
        if "button" not in m:
            r.report(node, "list: needs button: (the label of the button that opens it)")
        else:
            fields["list_button"] = r.text(m["button"][1], "button") or ""
            fields["list_button_line"] = line_of(m["button"][1])
        if ("rows" in m) == ("sections" in m):
            r.report(node, "list: needs either rows: or sections:")
            return
        if "rows" in m:
            fields["sections"] = (Section("", self._rows(m["rows"][1]), line_of(m["rows"][1])),)
            return
        sections = []
        for item in r.items(m["sections"][1]):
            s = r.mapping(item, "a list section", SECTION_KEYS)
            if s is None:
                continue
            title = (r.text(s["title"][1], "title") or "") if "title" in s else ""
            rows = self._rows(s["rows"][1]) if "rows" in s else ()
            if not rows:
                r.report(item, "a list section needs rows:")
            sections.append(Section(title, rows, line_of(item)))
        fields["sections"] = tuple(sections)

    def _location(self, node: Node, fields: dict[str, object]) -> None:
        r = self.r
        m = r.mapping(node, "location", LOCATION_KEYS)
        if m is None:
            return
        for key in ("latitude", "longitude"):
            if key not in m:
                r.report(node, f"location: needs {key}:")
        for key in ("latitude", "longitude", "name", "address"):
            if key in m:
                fields[key] = r.text(m[key][1], key) or ""

    def fallback(self, node: Node, state: str, line: int) -> FallbackSpec | None:
        """``fallback: {template, language, params, header, buttons}``."""
        r = self.r
        m = r.mapping(node, "fallback", FALLBACK_KEYS)
        if m is None:
            return None
        if "template" not in m:
            r.report(node, "fallback: needs template: (the template's name)")
            return None
        name = r.text(m["template"][1], "template") or ""
        language = "user"
        if "language" in m:
            language = r.text(m["language"][1], "language") or "user"
            if language != "user" and not LANGUAGE.match(language):
                r.report(
                    m["language"][1],
                    f"language must be 'user' or a locale like en_US, not '{language}'",
                )
        params: tuple[str, ...] = ()
        names: tuple[str, ...] = ()
        if "params" in m:
            pnode = m["params"][1]
            if isinstance(pnode, MappingNode):
                named = r.names(pnode, "params") or {}
                names = tuple(named)
                params = tuple(r.text(v, f"param {k}") or "" for k, (_, v) in named.items())
            elif isinstance(pnode, SequenceNode):
                params = r.texts(pnode, "a param")
            else:
                r.report(pnode, "params must be a list (positional) or a mapping (named)")
        header = r.texts(m["header"][1], "a header param") if "header" in m else ()
        buttons = r.texts(m["buttons"][1], "a button payload") if "buttons" in m else ()
        return FallbackSpec(
            template=name,
            file=r.file,
            line=line,
            language="" if language == "user" else language,
            params=params,
            names=names,
            header=header,
            buttons=buttons,
            flow=self.flow,
            state=state,
        )
