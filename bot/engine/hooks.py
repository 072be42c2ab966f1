"""What hooks see (:class:`HookContext`), what they may ask for (:class:`Reminder`), and how
the hooks module is found.

Hooks are plain functions, sync or async, in a Python file of the flows folder
(``hooks.py`` unless a flow says ``hooks: other``). Conditions (``if:``/``unless:``) return
a truth value; actions (``do:``) may change ``ctx.vars``, call :meth:`HookContext.schedule`,
and return replies to send (a string, an :class:`~bot.models.Outgoing`, or a list of them).
They never see HTTP: everything they need is on the context.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from bot.models import InboundMessage, Outgoing, TemplateCall, UserRecord

Hook = Callable[["HookContext"], Any]


@dataclass(frozen=True, slots=True)
class Reminder:
    """A message to send later, asked for by a hook; the caller stores and schedules it.

    Exactly one of ``outgoing`` (a session message, possibly with its template fallback) and
    ``template`` (a business-initiated template) is set. ``at`` is unix seconds.
    """

    at: float
    outgoing: Outgoing | None = None
    template: TemplateCall | None = None
    note: str = ""


@dataclass(frozen=True, slots=True)
class HookContext:
    """The turn as a hook sees it.

    Attributes:
        user: the user's record as it was when the message arrived.
        message: the message being handled.
        vars: this turn's variables (already holding the rule's ``save:`` values); changes
            are kept when the turn completes.
        const: the flow's constants.
        now: the time of the turn, unix seconds (never read a clock in a hook; use this).
        flow: the flow the user is in.
        state: the state the user is in.
        match: named groups of the rule's regular expression, if it had one.
    """

    user: UserRecord
    message: InboundMessage
    vars: dict[str, Any]
    const: Mapping[str, Any]
    now: float
    flow: str
    state: str
    match: Mapping[str, str] = field(default_factory=dict)
    reminders: list[Reminder] = field(default_factory=list, repr=False, compare=False)
    user_changes: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def opt_out(self) -> None:
        """The user asked for no business-initiated messages: templates are no longer sent
        to them (replies inside an open window still are)."""
        self.user_changes["opted_out"] = True

    def opt_in(self) -> None:
        """The user welcomes business-initiated messages again."""
        self.user_changes["opted_out"] = False

    def handoff(self, reason: str = "") -> None:
        """Hand the user to a human: the bot stops answering them (this turn's replies still
        go out) until an operator hands them back in the console."""
        self.user_changes.update(
            paused=True,
            paused_reason=reason or f"handoff in {self.flow}.{self.state}",
            paused_at=self.now,
        )

    def schedule(
        self,
        what: Outgoing | TemplateCall | str,
        *,
        at: float | None = None,
        delay: float | None = None,
        note: str = "",
    ) -> Reminder:
        """Ask for ``what`` to be sent at ``at`` (unix seconds) or ``delay`` seconds from now.

        A string is sent as a text message; a :class:`TemplateCall` as a template (works
        outside the 24 h window); an :class:`Outgoing` as given (give it a ``fallback`` so it
        still reaches the user when the window has closed).
        """
        if (at is None) == (delay is None):
            raise ValueError("schedule() needs exactly one of at= or delay=")
        when = at if at is not None else self.now + (delay or 0.0)
        note = note or f"{self.flow}.{self.state}:reminder"
        if isinstance(what, str):
            what = text(what)
        if isinstance(what, TemplateCall):
            reminder = Reminder(at=when, template=what, note=note)
        else:
            reminder = Reminder(at=when, outgoing=what, note=note)
        self.reminders.append(reminder)
        return reminder


def text(body: str, *, fallback: TemplateCall | None = None, note: str = "") -> Outgoing:
    """A plain text reply (for hooks that return or schedule messages)."""
    return Outgoing(
        message={"type": "text", "text": {"body": body, "preview_url": False}},
        fallback=fallback,
        note=note,
    )


async def call(hook: Hook, ctx: HookContext) -> Any:
    """Call a hook, awaiting it if it is async."""
    result = hook(ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


class HooksLoadError(Exception):
    """The hooks module could not be imported; ``line`` points into it."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


def load_module(path: Path) -> ModuleType:
    """Import a hooks file by path (the flows folder need not be on ``sys.path``).

    Each call executes the file afresh under a name unique to its path, so two engines
    loaded from two folders never share hooks.
    """
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"windowbot_hooks_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise HooksLoadError(f"cannot import {path}", 0)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise HooksLoadError(f"syntax error in hooks: {exc.msg}", exc.lineno or 0) from exc
    except Exception as exc:
        sys.modules.pop(name, None)
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        line = frames[-1].lineno if frames else 0
        raise HooksLoadError(
            f"importing hooks failed: {type(exc).__name__}: {exc}", line or 0
        ) from exc
    return module


def resolve(module: ModuleType, name: str) -> Hook | None:
    """The public callable ``name`` of the module, or ``None``."""
    value = getattr(module, name, None)
    if name.startswith("_") or not callable(value) or inspect.isclass(value):
        return None
    hook: Hook = value
    return hook


def hook_names(module: ModuleType) -> list[str]:
    """The module's public functions (for "did you mean" hints)."""
    return [
        n
        for n in vars(module)
        if resolve(module, n) is not None and inspect.isfunction(getattr(module, n))
    ]


def signature_problem(hook: Hook) -> str:
    """Why ``hook`` cannot be called with one context argument, or ``""``."""
    try:
        inspect.signature(hook).bind(object())
    except TypeError:
        return "must take exactly one argument (the HookContext)"
    except ValueError:
        return ""
    return ""
