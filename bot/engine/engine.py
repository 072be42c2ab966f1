"""The engine: one inbound message and a user's record in, replies and the new record out.

The engine holds only what the flow files define (compiled once by :meth:`Engine.load`);
everything about a user lives in the :class:`~bot.models.UserRecord` the caller passes in
and gets back in :class:`Turn`, so a million users cost the engine nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from bot.engine._check_replies import FallbackChecker
from bot.engine._on_error import ErrorReplies
from bot.engine.check import analyze
from bot.engine.hooks import HookContext, Reminder, call, text
from bot.engine.machine import (
    NO_GROUPS,
    CompiledState,
    Compiler,
    FlowMachine,
    Groups,
    Rule,
    View,
)
from bot.engine.render import message_context, user_context
from bot.engine.reply import CompiledReply
from bot.errors import FlowError
from bot.findings import Finding, format_findings
from bot.models import InboundMessage, Outgoing, TemplateCall, UserRecord, value_object
from bot.scheduling import resume_point

log = structlog.get_logger("windowbot.engine")


@value_object
class Turn:
    """What one message did.

    Attributes:
        record: the user's record with the new ``flow``, ``state`` and ``variables``; every
            other field (``version`` included) is as passed in, ready for a version-checked
            write.
        outgoing: the replies, in order.
        reminders: messages hooks asked to send later.
        trigger: what fired, for logs: a rule's label (``reply book``, ``text hi``...),
            ``start`` (new user), ``restart`` (message in a final state), either followed
            by ``, <rule>`` when the first message was also matched, ``reprompt`` (no
            rule matched), ``invalid <rule>`` (a ``save:`` refused the input) or ``reset``
            (the record named a flow or state that no longer exists), or ``paused`` (a human
            has the conversation: nothing is answered, see ``UserRecord.paused``).
        source_state: ``flow.state`` the user was in (``""`` for a new user).
        cancels: keys of reminders to cancel (``ctx.cancel``, ``cancel_reminder:``).
    """

    record: UserRecord
    outgoing: tuple[Outgoing, ...]
    reminders: tuple[Reminder, ...]
    trigger: str
    source_state: str
    cancels: tuple[str, ...] = ()


class Engine:
    """Compiled flows of one folder; :meth:`handle` runs one message through them."""

    def __init__(
        self,
        flows: Mapping[str, FlowMachine],
        default_flow: str,
        *,
        variables: Mapping[str, Any] | None = None,
        warnings: Sequence[Finding] = (),
        directory: Path | None = None,
        on_error: ErrorReplies | None = None,
    ) -> None:
        if default_flow not in flows:
            raise FlowError(f"default flow '{default_flow}' does not exist")
        self._flows = MappingProxyType(dict(flows))
        self._constants = MappingProxyType({n: f.constants for n, f in self._flows.items()})
        self.default_flow = default_flow
        self.defaults: Mapping[str, Any] = MappingProxyType(dict(variables or {}))
        self.warnings: tuple[Finding, ...] = tuple(warnings)
        self.directory = directory
        self._on_error = on_error

    @classmethod
    def load(
        cls,
        flows_dir: Path,
        *,
        fallback_checker: FallbackChecker | None = None,
        default_flow: str | None = None,
    ) -> Engine:
        """Check and compile every flow of ``flows_dir``.

        Args:
            flows_dir: the flows folder.
            fallback_checker: see :func:`~bot.engine.check.check_folder`.
            default_flow: the flow new users start in; else ``default_flow:`` of
                ``_project.yaml``, else ``welcome``, else the only flow.

        Raises:
            FlowError: the check found errors; ``findings`` holds all of them.
        """
        flows_dir = Path(flows_dir)
        analysis = analyze(flows_dir, fallback_checker=fallback_checker, default_flow=default_flow)
        errors = analysis.errors
        if errors:
            raise FlowError(
                f"{len(errors)} error(s) in {flows_dir}; fix them and load again:\n"
                f"{format_findings(errors)}",
                list(errors),
            )
        warnings = [f for f in analysis.findings if f.severity == "warning"]
        if warnings:
            log.warning("flow_warnings", count=len(warnings), findings=format_findings(warnings))
        project = analysis.project
        compiled = Compiler(project, analysis.renderer, analysis.modules).compile()
        variables: dict[str, Any] = {}
        for flow in project.flows.values():
            for state in flow.states.values():
                for rule in state.rules:
                    variables.update((s.var, "") for s in rule.saves)
            for rule in (*flow.commands, *project.commands):
                variables.update((s.var, "") for s in rule.saves)
        variables.update(project.variables)
        for flow in project.flows.values():
            variables.update(flow.variables)
        engine = cls(
            compiled,
            analysis.default_flow,
            variables=variables,
            warnings=warnings,
            directory=flows_dir,
            on_error=ErrorReplies.compile(project, analysis.renderer),
        )
        engine.typing_flows = frozenset(n for n, f in project.flows.items() if f.typing_indicator)
        return engine

    #: The flows that asked for a read receipt and typing indicator (``typing_indicator:``).
    typing_flows: frozenset[str] = frozenset()

    def wants_typing(self, record: UserRecord) -> bool:
        """Whether the flow ``record`` is in (a new user: the default one) shows typing."""
        return (record.flow or self.default_flow) in self.typing_flows

    @property
    def flows(self) -> Mapping[str, FlowMachine]:
        """Compiled flows by name (read-only)."""
        return self._flows

    async def handle(self, record: UserRecord, message: InboundMessage, now: float) -> Turn:
        """Run one message: at most one transition, its actions, and the replies.

        A record with an empty ``flow`` or ``state`` is a new user: the message enters the
        default flow's initial state and gets that state's replies; then, unless that flow
        says ``first_message: greet``, it is tried against the state's specific rules (not
        commands, not ``else:`` or ``"*"``), so a first message that already answers the
        greeting is taken as the answer. Otherwise commands, then the state's rules, are
        tried in order; the first whose trigger matches and whose ``if:`` hooks agree fires.
        When none does, a final state starts the user over in the default flow (as for a
        new user) and any other state repeats its ``say:`` replies.

        Raises:
            RenderError: a reply could not be rendered (the checker prevents most causes).
        """
        if record.paused:  # a human has the conversation: record the message, say nothing
            log.info("turn_paused", reason=record.paused_reason, message_id=message.id)
            source = f"{record.flow}.{record.state}" if record.flow else ""
            return Turn(record, (), (), "paused", source)
        return await _Turn(self, record, message, now).run()

    def handle_pure(self, record: UserRecord, message: InboundMessage, now: float) -> Turn | None:
        """:meth:`handle`, when the turn calls no hook: then it has no effect but its result.

        ``None`` when the turn would call a hook (a rule's ``if:``, ``unless:`` or ``do:``, a
        state's ``do:``) or raises: nothing was called, and the caller runs :meth:`handle`.
        A pure turn can be run before its message is stored, and dropped, at no cost but its
        CPU (the dispatcher does so for an idle user's message, see
        :meth:`Dispatcher.receive`).
        """
        if record.paused:
            return None  # handle() logs it
        turn = _Turn(self, record, message, now, pure=True).run()
        try:
            turn.send(None)
        except StopIteration as done:  # it never waited: nothing but CPU was spent
            result: Turn = done.value
            return result
        except Exception:  # _Impure, or a render error: handle() tells the user
            return None
        turn.close()  # it awaited something: only a hook does
        return None

    def error_replies(
        self, record: UserRecord, message: InboundMessage | None, now: float, reason: str
    ) -> tuple[Outgoing, ...]:
        """The replies a user gets when their message could not be handled (never raises).

        These are the ``on_error:`` replies of the user's flow, else those of
        ``_project.yaml``, rendered like any reply (with its template fallback for a closed
        window), each with ``note="on_error"``. A reply that cannot be rendered, even with
        variable defaults and an empty message, is dropped and logged
        (``error_reply_failed``).

        Args:
            record: the user's record as it was before the failed message.
            message: the message whose handling failed, if there is one.
            now: the time of the failure, unix seconds (replies do not depend on it yet).
            reason: why handling failed, for the logs only: it is never shown to the user.

        Returns:
            The replies, in order; ``()`` when nothing is declared or nothing could render.
        """
        if self._on_error is None:
            return ()
        try:
            return self._on_error.render(
                record, message, reason, constants=self._constants, defaults=self.defaults
            )
        except Exception as exc:  # the last line of defence: a failure must not fail twice
            log.error(
                "error_reply_failed",
                error=f"{type(exc).__name__}: {exc}",
                reason=reason,
                now=now,
                effect="no error reply sent",
            )
            return ()


class _Turn:
    """Scratch space for one message; dropped when :class:`Turn` is returned."""

    def __init__(
        self,
        engine: Engine,
        record: UserRecord,
        message: InboundMessage,
        now: float,
        *,
        pure: bool = False,
    ) -> None:
        self.engine = engine
        self.pure = pure  # refuse to call hooks (Engine.handle_pure)
        self.record = record
        self.message = message
        self.now = now
        self.flow = record.flow
        self.state = record.state
        self.vars: dict[str, Any] = dict(record.variables)
        self.out: list[Outgoing] = []
        self.reminders: list[Reminder] = []
        self.cancels: list[str] = []
        self.user_changes: dict[str, Any] = {}  # record fields hooks changed (opt-out)
        self.user = user_context(record)
        self.msg = message_context(message)

    async def run(self) -> Turn:
        self.resume()
        record, flows = self.record, self.engine.flows
        source = f"{record.flow}.{record.state}" if record.flow or record.state else ""
        flow = flows.get(record.flow)
        state = flow.states.get(record.state) if flow is not None else None
        if not record.flow or not record.state:
            trigger = await self.start("start")
        elif state is None:
            log.warning("state_unknown", flow=record.flow, state=record.state, user=record.key)
            trigger = "reset"
            await self.enter_default()
        else:
            trigger = await self.dispatch(state)
        new = dataclasses.replace(
            record, flow=self.flow, state=self.state, variables=self.vars, **self.user_changes
        )
        return Turn(
            new, tuple(self.out), tuple(self.reminders), trigger, source, tuple(self.cancels)
        )

    def resume(self) -> None:
        """A tap on a reminder's button continues in the job's resume point (bot.jobs)."""
        point = resume_point(self.message)
        if point is None:
            return
        flow, state, self.message = point
        if flow in self.engine.flows and state in self.engine.flows[flow].states:
            self.record = dataclasses.replace(self.record, flow=flow, state=state)
            self.flow, self.state = flow, state
        else:
            log.warning("resume_point_unknown", flow=flow, state=state, user=self.record.key)
        self.msg = message_context(self.message)

    async def dispatch(self, state: CompiledState) -> str:
        view = View.of(self.message)
        for rule in state.dispatch:
            groups = rule.match(view)
            if groups is None:
                continue
            trigger = await self.fire(rule, state, groups)
            if trigger is not None:
                return trigger
        if state.final:
            return await self.start("restart")
        self.say(state.say, self.engine.flows[state.flow].constants)
        return "reprompt"

    async def fire(self, rule: Rule, state: CompiledState, groups: Groups) -> str | None:
        """Run a matched rule; ``None`` if its conditions say no."""
        values = {}
        const = self.engine.flows[rule.flow].constants
        for save in rule.saves:
            ok, value = save.extract(self.message, groups)
            if not ok:
                self.say(save.invalid or state.say, const, groups)
                return f"invalid {rule.label}"
            values[save.var] = value
        scratch = {**self.vars, **values}
        extra: list[Outgoing] = []
        if rule.conditions or rule.unless or rule.actions:
            if self.pure:
                raise _Impure(rule.label)
            ctx = self.context(scratch, const, state.flow, state.name, groups)
            for condition in rule.conditions:
                if not await call(condition, ctx):
                    return None
            for condition in rule.unless:
                if await call(condition, ctx):
                    return None
            for action in rule.actions:
                extra += _replies(await call(action, ctx), f"{state.flow}.{state.name}")
            self.reminders += ctx.reminders
            self.cancels += ctx.cancels
            self.user_changes.update(ctx.user_changes)
        self.vars = scratch
        self.say(rule.say, const, groups)
        self.out += extra
        if rule.target is not None:
            await self.enter(*rule.target)
        return rule.label

    async def start(self, trigger: str) -> str:
        """Greet with the default flow's initial state, then (``first_message: match``) try
        the message against that state's specific rules, so a first message that already
        answers the greeting is taken as the answer."""
        await self.enter_default()
        state = self.engine.flows[self.flow].states[self.state]
        view = View.of(self.message)
        for rule in state.first:
            groups = rule.match(view)
            if groups is None:
                continue
            fired = await self.fire(rule, state, groups)
            if fired is not None:
                return f"{trigger}, {fired}"
        return trigger

    async def enter_default(self) -> None:
        default = self.engine.flows[self.engine.default_flow]
        await self.enter(default.name, default.initial)

    async def enter(self, flow_name: str, state_name: str) -> None:
        flow = self.engine.flows[flow_name]
        state = flow.states[state_name]
        self.flow, self.state = flow_name, state_name
        if state.enter:
            if self.pure:
                raise _Impure(f"{flow_name}.{state_name}")
            ctx = self.context(self.vars, flow.constants, flow_name, state_name, {})
            for action in state.enter:
                self.out += _replies(await call(action, ctx), f"{flow_name}.{state_name}")
            self.reminders += ctx.reminders
            self.cancels += ctx.cancels
            self.user_changes.update(ctx.user_changes)
        self.say(state.say, flow.constants)

    def context(
        self,
        variables: dict[str, Any],
        const: Mapping[str, Any],
        flow: str,
        state: str,
        groups: Groups,
    ) -> HookContext:
        return HookContext(
            user=self.record,
            message=self.message,
            vars=variables,
            const=const,
            now=self.now,
            flow=flow,
            state=state,
            match=groups,
            reminders=[],
        )

    def say(
        self,
        replies: tuple[CompiledReply, ...],
        const: Mapping[str, Any],
        groups: Groups = NO_GROUPS,
    ) -> None:
        if not replies:
            return
        message = {**self.msg, "match": dict(groups)} if groups else self.msg
        ctx = {
            "user": self.user,
            "message": message,
            "vars": {**self.engine.defaults, **self.vars},
            "const": const,
        }
        self.out += [reply.render(ctx) for reply in replies]


class _Impure(Exception):
    """A pure turn (:meth:`Engine.handle_pure`) reached a hook; the rule or state names it."""


def _replies(result: Any, note: str) -> list[Outgoing]:
    """What an action returned, as replies (``None`` and booleans mean none)."""
    if result is None or isinstance(result, bool):
        return []
    if isinstance(result, str):
        return [text(result, note=note)]
    if isinstance(result, Outgoing):
        return [result]
    if isinstance(result, TemplateCall):  # a template only, whatever the window
        return [Outgoing(message=None, fallback=result, note=note)]
    if isinstance(result, list | tuple):
        return [r for item in result for r in _replies(item, note)]
    raise TypeError(
        f"a do: hook returned {type(result).__name__}; return None, a string, a reply "
        "(bot.text(), bot.buttons()...), a bot.template() call, or a list of them"
    )
