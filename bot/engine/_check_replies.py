"""Checks of ``say:`` items: Jinja names and syntax, WhatsApp's limits, template fallbacks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bot.engine._replies import is_template
from bot.engine.render import Renderer
from bot.engine.reply import LIMITS, MAX_BUTTONS, MAX_ROWS
from bot.engine.spec import ANY, FallbackSpec, ReplySpec, RuleSpec
from bot.findings import Finding

FallbackChecker = Callable[[FallbackSpec], list[str]]
"""Checks a fallback; each string is an error, or a warning when it starts with ``WARNING``."""
WARNING = "warning: "
_TEMPLATE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class ReplyChecker:
    """Checks replies of one file against one set of known variables and constants."""

    def __init__(
        self,
        file: Path,
        findings: list[Finding],
        renderer: Renderer,
        *,
        variables: frozenset[str],
        constants: frozenset[str],
        fallback_checker: FallbackChecker | None,
    ) -> None:
        self.file = file
        self.findings = findings
        self.renderer = renderer
        self.variables = variables
        self.constants = constants
        self.fallback_checker = fallback_checker

    def error(self, line: int, message: str) -> None:
        """Record an error at ``line``."""
        self.findings.append(Finding(self.file, line, message))

    def jinja(self, source: str, line: int, *, expression: bool = False) -> None:
        """Syntax errors and unknown names of one template string."""
        if not expression and not is_template(source):
            return
        for lineno, message in self.renderer.problems(
            source, expression=expression, variables=self.variables, constants=self.constants
        ):
            self.error(line + lineno - 1, message)

    def length(self, source: str, limit: str, line: int, what: str) -> None:
        """WhatsApp's length limits, for literal strings (rendered ones are cut at runtime)."""
        maximum = LIMITS[limit]
        if not is_template(source) and len(source) > maximum:
            self.error(
                line,
                f"{what} is {len(source)} characters; WhatsApp allows {maximum}: '{source[:30]}…'",
            )

    def reply(self, spec: ReplySpec) -> None:
        """Every check of one reply."""
        text_line = spec.text_line or spec.line
        self.jinja(spec.text, text_line)
        for value in (
            spec.header,
            spec.footer,
            spec.link,
            spec.filename,
            spec.name,
            spec.address,
            spec.latitude,
            spec.longitude,
        ):
            self.jinja(value, spec.line)
        if spec.kind == "text":
            self.length(spec.text, "text", text_line, "text")
        elif spec.kind in ("buttons", "list"):
            self.length(spec.text, "body", text_line, "the body of an interactive message")
            self.length(spec.header, "header", spec.line, "header")
            self.length(spec.footer, "footer", spec.line, "footer")
        elif spec.kind == "location":
            self._coordinates(spec)
        else:
            self.length(spec.text, "caption", text_line, "caption")
            if spec.link and not is_template(spec.link) and not spec.link.startswith("https://"):
                self.findings.append(
                    Finding(
                        self.file,
                        spec.line,
                        f"media link should be an https:// URL: '{spec.link}'",
                        "warning",
                    )
                )
        if spec.kind == "buttons":
            self._buttons(spec)
        if spec.kind == "list":
            self._list(spec)
        if spec.fallback is not None:
            self.fallback(spec.fallback)

    def on_error(self, specs: tuple[ReplySpec, ...], commands: tuple[RuleSpec, ...]) -> None:
        """``on_error:`` replies: every reply check, and buttons that only commands can take.

        An error reply reaches a user in whatever state their message failed in, so a
        button or list row on it is answered only if a command (not a state's rule) takes
        its id.
        """
        triggers = [t for rule in commands for t in rule.triggers]
        for spec in specs:
            self.reply(spec)
            ids = [(b.id, b.line) for b in spec.buttons]
            ids += [(row.id, row.line) for section in spec.sections for row in section.rows]
            for ident, line in ids:
                if not any(
                    t.kind == "else"
                    or (t.kind == "reply" and (ANY in t.values or ident in t.values))
                    for t in triggers
                ):
                    self.findings.append(
                        Finding(
                            self.file,
                            line,
                            f"on_error button '{ident}' is taken by no command (the user may "
                            f"be in any state; add a command '- reply: {ident}' with goto:)",
                            "warning",
                        )
                    )

    def _buttons(self, spec: ReplySpec) -> None:
        if len(spec.buttons) > MAX_BUTTONS:
            self.error(
                spec.buttons[MAX_BUTTONS].line,
                f"{len(spec.buttons)} buttons; WhatsApp "
                f"allows {MAX_BUTTONS} (use a list: for more choices)",
            )
        seen: dict[str, int] = {}
        for b in spec.buttons:
            self.jinja(b.title, b.line)
            self.jinja(b.id, b.line)
            if not b.title.strip() or not b.id.strip():
                self.error(b.line, "a button needs a non-empty title and id")
            self.length(b.title, "button_title", b.line, "button title")
            self.length(b.id, "button_id", b.line, "button id")
            if b.id in seen:
                self.error(
                    b.line,
                    f"button id '{b.id}' is used twice in one message (first at line {seen[b.id]})",
                )
            seen.setdefault(b.id, b.line)

    def _list(self, spec: ReplySpec) -> None:
        self.jinja(spec.list_button, spec.list_button_line or spec.line)
        self.length(
            spec.list_button, "list_button", spec.list_button_line or spec.line, "list button label"
        )
        rows = [row for section in spec.sections for row in section.rows]
        if len(rows) > MAX_ROWS:
            self.error(
                rows[MAX_ROWS].line, f"{len(rows)} list rows; WhatsApp allows {MAX_ROWS} in total"
            )
        if len(spec.sections) > 1:
            for section in spec.sections:
                if not section.title:
                    self.error(section.line, "with several sections, each needs a title:")
        seen: dict[str, int] = {}
        for section in spec.sections:
            self.jinja(section.title, section.line)
            self.length(section.title, "section_title", section.line, "section title")
        for row in rows:
            for value in (row.id, row.title, row.description):
                self.jinja(value, row.line)
            if not row.title.strip() or not row.id.strip():
                self.error(row.line, "a list row needs a non-empty title and id")
            self.length(row.title, "row_title", row.line, "row title")
            self.length(row.description, "row_description", row.line, "row description")
            self.length(row.id, "row_id", row.line, "row id")
            if row.id in seen:
                self.error(
                    row.line,
                    f"row id '{row.id}' is used twice in one list (first at line {seen[row.id]})",
                )
            seen.setdefault(row.id, row.line)

    def _coordinates(self, spec: ReplySpec) -> None:
        for name, value, bound in (
            ("latitude", spec.latitude, 90.0),
            ("longitude", spec.longitude, 180.0),
        ):
            if not value or is_template(value):
                continue
            try:
                number = float(value)
            except ValueError:
                self.error(spec.line, f"{name} must be a number, not '{value}'")
                continue
            if not -bound <= number <= bound:
                self.error(spec.line, f"{name} {number} is outside ±{bound:g}")

    def fallback(self, spec: FallbackSpec) -> None:
        """A fallback's own checks, then the template registry's (``fallback_checker``)."""
        if not spec.template or not set(spec.template) <= _TEMPLATE_NAME_CHARS:
            self.error(
                spec.line,
                f"template name '{spec.template}' must use lowercase letters, digits and _ only",
            )
        for param in (*spec.params, *spec.header):
            self.jinja(param, spec.line, expression=True)
        for payload in spec.buttons:
            self.jinja(payload, spec.line)
        if self.fallback_checker is None:
            return
        try:
            problems = self.fallback_checker(spec)
        except Exception as exc:  # a broken checker must not hide the other findings
            problems = [
                f"fallback checker failed on template '{spec.template}': "
                f"{type(exc).__name__}: {exc}"
            ]
        for problem in problems:
            if problem.startswith(WARNING):
                self.findings.append(
                    Finding(self.file, spec.line, problem.removeprefix(WARNING), "warning")
                )
            else:
                self.error(spec.line, problem)
