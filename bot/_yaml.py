"""The one YAML reader of flow files and the template file: nodes that keep their lines.

``yaml.compose`` gives a node tree where every node carries ``start_mark``; working on
nodes rather than on ``yaml.safe_load``'s plain objects is what lets every finding name a
line. Scalars expected as text are read from their *source* text, so ``text: [yes, no]`` or
``id: 1`` mean the strings ``"yes"``, ``"no"`` and ``"1"`` rather than YAML 1.1 booleans.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bot.findings import Finding, Severity, did_you_mean

_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


def compose(file: Path, findings: list[Finding]) -> Node | None:
    """The node tree of one YAML file, or ``None`` (with a finding) if it cannot be read."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        findings.append(Finding(file, 0, f"cannot read file: {exc}"))
        return None
    try:
        node = parse(text)
    except yaml.MarkedYAMLError as exc:
        line = error_line(exc)
        problem = exc.problem or "invalid YAML"
        context = f" ({exc.context})" if exc.context else ""
        findings.append(Finding(file, line, f"YAML syntax error: {problem}{context}"))
        return None
    except yaml.YAMLError as exc:
        findings.append(Finding(file, 0, f"YAML error: {exc}"))
        return None
    if node is None:
        findings.append(Finding(file, 1, "the file is empty"))
    return node


def parse(text: str) -> Node | None:
    """The node tree of a YAML document (safe tags only); raises ``yaml.YAMLError``."""
    return yaml.compose(text, Loader=yaml.SafeLoader)


def error_line(exc: yaml.YAMLError) -> int:
    """The 1-based line a YAML error points at, 0 if it points nowhere."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        return mark.line + 1 if mark else 0
    return 0


class Marked(dict[str, Any]):
    """A mapping read by :func:`plain` that remembers its own line and the line of each key."""

    line: int = 0
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int:
        """The line of ``key``, else of the mapping."""
        return self.key_lines.get(key, self.line)


def plain(node: Node, duplicates: list[tuple[int, str]]) -> Any:
    """A node as plain data that keeps lines: mappings become :class:`Marked`, scalars their
    source text (``no`` stays ``"no"``, ``1`` stays ``"1"``), null ``None``.

    A repeated key is appended to ``duplicates`` as (line, key); the later value wins.
    """
    if isinstance(node, ScalarNode):
        return None if node.tag == _NULL else str(node.value)
    if isinstance(node, SequenceNode):
        return [plain(item, duplicates) for item in node.value]
    assert isinstance(node, MappingNode)
    SafeConstructor().flatten_mapping(node)
    out = Marked()
    out.line, out.key_lines = node.start_mark.line + 1, {}
    for key_node, value_node in node.value:
        key = str(key_node.value) if isinstance(key_node, ScalarNode) else str(key_node)
        if key in out:
            duplicates.append((key_node.start_mark.line + 1, key))
        out[key] = plain(value_node, duplicates)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def line_of(node: Node) -> int:
    """The 1-based line a node starts on; for ``|``/``>`` block text, the first text line."""
    line: int = node.start_mark.line + 1
    if isinstance(node, ScalarNode) and node.style in ("|", ">"):
        line += 1
    return line


class Reader:
    """Typed access to nodes of one file; every problem becomes a :class:`Finding`."""

    def __init__(self, file: Path, findings: list[Finding]) -> None:
        self.file = file
        self.findings = findings
        self._constructor = SafeConstructor()

    def report(self, at: Node | int, message: str, severity: Severity = "error") -> None:
        """Record a finding at a node's line (or at a line number)."""
        line = at if isinstance(at, int) else line_of(at)
        self.findings.append(Finding(self.file, line, message, severity))

    def mapping(
        self, node: Node, what: str, allowed: Collection[str]
    ) -> dict[str, tuple[Node, Node]] | None:
        """Key → (key node, value node), in file order; unknown and repeated keys reported."""
        if not isinstance(node, MappingNode):
            self.report(node, f"{what} must be a mapping (key: value lines)")
            return None
        self._constructor.flatten_mapping(node)
        out: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, f"keys of {what} must be plain words")
                continue
            key = str(key_node.value)
            if key in out:
                first = line_of(out[key][0])
                self.report(key_node, f"duplicate key '{key}' in {what} (first at line {first})")
                continue
            if allowed and key not in allowed:
                hint = did_you_mean(key, allowed)
                self.report(key_node, f"unknown key '{key}' in {what}{hint}")
                continue
            out[key] = (key_node, value_node)
        return out

    def names(self, node: Node, what: str) -> dict[str, tuple[Node, Node]] | None:
        """A mapping whose keys are free names (states, constants...); repeats reported."""
        return self.mapping(node, what, ())

    def items(self, node: Node) -> list[Node]:
        """A sequence's items; a single non-sequence value counts as a one-item list."""
        if isinstance(node, SequenceNode):
            return list(node.value)
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return []
        return [node]

    def text(self, node: Node, what: str) -> str | None:
        """A scalar as its source text (``yes`` stays ``"yes"``); ``None`` if not a scalar."""
        if not isinstance(node, ScalarNode):
            self.report(node, f"{what} must be text, not a {_kind(node)}")
            return None
        if node.tag == _NULL:
            return ""
        return str(node.value)

    def texts(self, node: Node, what: str) -> tuple[str, ...]:
        """One text or a list of texts."""
        out = []
        for item in self.items(node):
            value = self.text(item, what)
            if value is not None:
                out.append(value)
        return tuple(out)

    def flag(self, node: Node, what: str) -> bool | None:
        """A YAML boolean (``true``/``false``)."""
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return bool(self._constructor.construct_object(node))
        self.report(node, f"{what} must be true or false")
        return None

    def number(self, node: Node, what: str) -> float | None:
        """An int or float."""
        if isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT):
            return float(self._constructor.construct_object(node))
        self.report(node, f"{what} must be a number")
        return None

    def value(self, node: Node) -> Any:
        """Any node as plain Python data (for ``constants:`` and ``vars:`` defaults)."""
        return self._constructor.construct_document(node)


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "mapping"
    if isinstance(node, SequenceNode):
        return "list"
    return "value"
