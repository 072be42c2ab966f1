"""What the Jinja sandbox would refuse at run time, found in the template's syntax tree.

Reply strings render in :class:`~bot.engine.render.Sandbox`. Without this check a template
like ``{{ ''.__class__ }}`` passes ``bot check`` and fails only when a user reaches it; here
each such expression is a finding at its line.
"""

from __future__ import annotations

from string import Formatter
from typing import Any

from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment, modifies_known_mutable

_DIVISIONS = (nodes.Div, nodes.FloorDiv, nodes.Mod)
_MUTABLES: tuple[object, ...] = ([], {}, set())


def sandbox_problems(env: SandboxedEnvironment, ast: nodes.Template) -> list[tuple[int, str]]:
    """(line within the template, message) for every expression the sandbox refuses."""
    out: list[tuple[int, str]] = []
    for node in ast.find_all(nodes.Getattr):
        inner = node.node  # ''.__class__.__mro__: only the first refused name is reported
        if str(node.attr).startswith("_") and not _private(inner):
            out.append(
                (node.lineno, f"'.{node.attr}' is refused by the sandbox (it starts with _)")
            )
    for item in ast.find_all(nodes.Getitem):
        key = item.arg
        if isinstance(key, nodes.Const) and str(key.value).startswith("__"):
            out.append((item.lineno, f"'[{key.value!r}]' is refused by the sandbox (a dunder)"))
    for flt in ast.find_all(nodes.Filter):
        if flt.name == "attr":
            out.append((flt.lineno, "the attr filter is not allowed: write the name with a dot"))
    for call in ast.find_all(nodes.Call):
        out += _call_problems(call)
    for expr in ast.find_all(nodes.BinExpr):
        out += _binop_problems(env, expr)
    return sorted(out)


def _private(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Getattr) and (
        str(node.attr).startswith("_") or _private(node.node)
    )


def _call_problems(call: nodes.Call) -> list[tuple[int, str]]:
    target = call.node
    if not isinstance(target, nodes.Getattr):
        return []
    method = str(target.attr)
    if any(modifies_known_mutable(obj, method) for obj in _MUTABLES):
        return [(call.lineno, f"'.{method}()' changes a value, which templates may not do")]
    receiver = target.node
    if method in ("format", "format_map") and isinstance(receiver, nodes.Const):
        for field in _format_fields(str(receiver.value)):
            if any(part.startswith("_") for part in field.replace("[", ".").split(".")[1:]):
                return [(call.lineno, f"'{{{field}}}' in str.format is refused by the sandbox")]
    return []


def _format_fields(text: str) -> list[str]:
    try:
        return [name for _, name, _, _ in Formatter().parse(text) if name]
    except ValueError:
        return []


def _binop_problems(env: SandboxedEnvironment, expr: nodes.BinExpr) -> list[tuple[int, str]]:
    right = expr.right
    if isinstance(expr, _DIVISIONS) and isinstance(right, nodes.Const) and right.value == 0:
        return [(expr.lineno, f"'{expr.operator} 0' divides by zero")]
    left = expr.left
    if not (isinstance(left, nodes.Const) and isinstance(right, nodes.Const)):
        return []
    try:
        env.call_binop(_NO_CONTEXT, expr.operator, left.value, right.value)
    except Exception as exc:  # what the render would raise, at check time
        return [(expr.lineno, f"'{expr.operator}' fails: {exc}")]
    return []


_NO_CONTEXT: Any = None  # Sandbox.call_binop does not read the render context
