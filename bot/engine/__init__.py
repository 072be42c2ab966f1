"""The flow engine: YAML flow files compiled into state machines that answer messages.

Public API: :class:`Engine` (load a folder, handle a message), :class:`Turn` and
:class:`Reminder` (what a message produced), :class:`HookContext` (what hooks receive),
:func:`check_folder` / :func:`format_findings` / :class:`Finding` (``bot check``),
:class:`FallbackSpec` (what a template registry checks), :func:`mermaid` (``bot graph``).
"""

from bot.engine.check import check_folder
from bot.engine.engine import Engine, Turn
from bot.engine.graph import mermaid
from bot.engine.hooks import HookContext, Reminder
from bot.engine.spec import FallbackSpec
from bot.findings import Finding, format_findings

__all__ = [
    "Engine",
    "FallbackSpec",
    "Finding",
    "HookContext",
    "Reminder",
    "Turn",
    "check_folder",
    "format_findings",
    "mermaid",
]
