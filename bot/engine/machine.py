"""Flows compiled once into ``transitions`` machines, and the per-message rule lookup.

Each flow becomes one :class:`~transitions.extensions.diagrams.GraphMachine` built with
``model=None``: its states are the flow's states, its transitions the flow's rules (event
``command`` for commands, ``message`` for a state's ``on:`` rules), each transition
carrying its compiled :class:`Rule`. Per message nothing is built and no model is attached:
the engine reads the source state's transitions in declaration order (commands first) from
a tuple prepared at load, evaluates triggers and ``if:`` hooks itself (hooks may be async,
which ``transitions``' synchronous condition checks cannot await), and writes the target
state into the user's record. The same machine renders the Mermaid diagram.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from transitions import State
from transitions.extensions.diagrams import GraphMachine, TransitionGraphSupport

from bot.engine import hooks as hooks_mod
from bot.engine.render import Renderer
from bot.engine.reply import CompiledReply, compile_reply
from bot.engine.spec import ANY, FlowSpec, ProjectSpec, ReplySpec, RuleSpec, SaveSpec, TriggerSpec
from bot.models import InboundMessage

Groups = Mapping[str, str]
NO_GROUPS: Groups = MappingProxyType({})
COMMAND_EVENT = "command"
MESSAGE_EVENT = "message"
_LABEL_UNSAFE = re.compile(r"[:;#{}\"\n\r]")


@dataclass(frozen=True, slots=True)
class View:
    """What triggers look at, computed once per message."""

    type: str
    text: str  # the text of a ``text`` message, stripped; "" for other types
    norm: str  # ``text`` with whitespace collapsed and case folded
    reply_id: str
    payload: str
    media: str

    @classmethod
    def of(cls, message: InboundMessage) -> View:
        """The view of one message."""
        text = message.text.strip() if message.type == "text" else ""
        inter = message.interactive
        return cls(
            type=message.type,
            text=text,
            norm=" ".join(text.split()).casefold(),
            reply_id=inter.id if inter and inter.kind in ("button_reply", "list_reply") else "",
            payload=message.button.payload if message.button else "",
            media=message.media.kind if message.media else "",
        )


Matcher = Callable[[View], Groups | None]


def _matcher(trigger: TriggerSpec) -> Matcher:
    values = trigger.values
    wildcard = ANY in values
    if trigger.kind == "else":
        return lambda v: NO_GROUPS
    if trigger.kind == "location":
        return lambda v: NO_GROUPS if v.type == "location" else None
    if trigger.kind == "text":
        wanted = frozenset(" ".join(x.split()).casefold() for x in values)
        if wildcard:
            return lambda v: NO_GROUPS if v.text else None
        return lambda v: NO_GROUPS if v.text and v.norm in wanted else None
    if trigger.kind == "keywords":
        words = "|".join(re.escape(" ".join(x.split())) for x in values)
        pattern = re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE)
        return lambda v: NO_GROUPS if v.text and pattern.search(v.text) else None
    if trigger.kind == "regex":
        regex = re.compile(values[0], re.IGNORECASE)  # like text: and keywords:

        def search(v: View) -> Groups | None:
            if v.type != "text":
                return None
            m = regex.search(v.text)
            if m is None:
                return None
            return {k: g for k, g in m.groupdict().items() if g is not None} or NO_GROUPS

        return search
    attr = {"reply": "reply_id", "payload": "payload", "media": "media"}[trigger.kind]
    accepted = frozenset(values)

    def field_match(v: View) -> Groups | None:
        got: str = getattr(v, attr)
        return NO_GROUPS if got and (wildcard or got in accepted) else None

    return field_match


class Save:
    """A compiled ``save:``: extracts, validates and converts one value."""

    __slots__ = ("choices", "invalid", "maximum", "minimum", "pattern", "source", "var")

    def __init__(self, spec: SaveSpec, invalid: tuple[CompiledReply, ...]) -> None:
        self.var = spec.var
        self.source = spec.source
        self.pattern = re.compile(spec.pattern) if spec.pattern else None
        self.choices = {c.strip().casefold(): c for c in spec.choices}
        self.minimum = spec.minimum
        self.maximum = spec.maximum
        self.invalid = invalid

    def extract(self, message: InboundMessage, groups: Groups) -> tuple[bool, Any]:
        """``(True, value)``, or ``(False, None)`` when the input is missing or invalid."""
        value = _source(self.source, message, groups)
        if value is None or value == "":
            return False, None
        if isinstance(value, str):
            if self.pattern is not None and not self.pattern.fullmatch(value):
                return False, None
            if self.choices:
                choice = self.choices.get(" ".join(value.split()).casefold())
                if choice is None:
                    return False, None
                value = choice
        if self.source == "number":
            number = _number(str(value))
            if (
                number is None
                or (self.minimum is not None and number < self.minimum)
                or (self.maximum is not None and number > self.maximum)
            ):
                return False, None
            return True, number
        return True, value


def _source(source: str, message: InboundMessage, groups: Groups) -> Any:
    inter, media, loc = message.interactive, message.media, message.location
    if source in ("text", "number"):
        return message.text.strip()
    if source.startswith("match."):
        return groups.get(source.removeprefix("match."), "")
    if source in ("id", "title", "description"):
        return getattr(inter, source) if inter else ""
    if source == "payload":
        return message.button.payload if message.button else ""
    if source == "caption":
        return media.caption if media else ""
    if source == "type":
        return message.type
    if source == "media":
        return None if media is None else asdict(media)
    if source == "location":
        return None if loc is None else asdict(loc)
    return None


def _number(text: str) -> int | float | None:
    text = text.strip().replace(" ", "")
    if "," in text and "." not in text:
        text = text.replace(",", ".")
    try:
        number = float(text)
    except ValueError:
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return int(number) if number.is_integer() and "." not in text else number


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """A compiled rule: how to recognise the message and what to do then."""

    label: str
    matchers: tuple[Matcher, ...]
    conditions: tuple[hooks_mod.Hook, ...]
    unless: tuple[hooks_mod.Hook, ...]
    actions: tuple[hooks_mod.Hook, ...]
    saves: tuple[Save, ...]
    say: tuple[CompiledReply, ...]
    target: tuple[str, str] | None  # (flow, state); None = stay, say nothing more
    flow: str  # whose constants the rule's replies see
    where: str
    specific: bool = True  # a trigger names something (not only else: or "*")
    event: str = MESSAGE_EVENT  # COMMAND_EVENT for commands

    def match(self, view: View) -> Groups | None:
        """The regex groups (possibly empty) if a trigger matches, else ``None``."""
        for matcher in self.matchers:
            groups = matcher(view)
            if groups is not None:
                return groups
        return None


@dataclass(frozen=True, slots=True, eq=False)
class CompiledState:
    """A state ready to serve: its replies, entry hooks and ordered rules."""

    flow: str
    name: str
    say: tuple[CompiledReply, ...]
    enter: tuple[hooks_mod.Hook, ...]
    final: bool
    dispatch: tuple[Rule, ...]
    #: What a conversation's first message is tried against after this state's greeting:
    #: the state's own specific rules (``first_message: match``), else nothing.
    first: tuple[Rule, ...] = ()


class FlowTransition(TransitionGraphSupport):
    """A ``transitions`` transition that carries its compiled :class:`Rule`."""

    def __init__(self, *args: Any, rule: Rule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule = rule


class FlowGraphMachine(GraphMachine):
    """The machine class flows compile into (Mermaid diagrams, no graphviz needed)."""

    transition_cls = FlowTransition


class _LabelledState(State):
    """A state with a diagram label (used for the stand-ins of other flows' states)."""

    def __init__(self, name: str, label: str) -> None:
        super().__init__(name)
        self.label = label


@dataclass(frozen=True, slots=True, eq=False)
class FlowMachine:
    """One flow, compiled."""

    name: str
    file: Path
    initial: str
    constants: Mapping[str, Any]
    states: Mapping[str, CompiledState]
    machine: FlowGraphMachine


class Compiler:
    """Compiles every flow of a checked project (call only when the check found no errors)."""

    def __init__(
        self, project: ProjectSpec, renderer: Renderer, modules: Mapping[str, ModuleType]
    ) -> None:
        self.p = project
        self.renderer = renderer
        self.modules = modules

    def compile(self) -> dict[str, FlowMachine]:
        """name → compiled flow."""
        return {name: self._flow(flow) for name, flow in self.p.flows.items()}

    def _flow(self, flow: FlowSpec) -> FlowMachine:
        machine = FlowGraphMachine(
            model=None,
            states=[State(n, final=s.final) for n, s in flow.states.items()],
            initial=flow.initial,
            auto_transitions=False,
            graph_engine="mermaid",
            show_conditions=True,
            title=flow.name,
        )
        stand_ins: dict[tuple[str, str], str] = {}
        with_commands = [n for n, s in flow.states.items() if s.commands]
        commands = [(r, flow, flow.hooks) for r in flow.commands]
        commands += [(r, flow, self.p.hooks) for r in self.p.commands]
        for rule, owner, hooks in commands:
            if with_commands:
                self._add(machine, COMMAND_EVENT, with_commands, rule, owner, hooks, stand_ins)
        for name, state in flow.states.items():
            for rule in state.rules:
                self._add(machine, MESSAGE_EVENT, [name], rule, flow, flow.hooks, stand_ins)
        states = {}
        for name, state in flow.states.items():
            dispatch = tuple(
                t.rule
                for event in (COMMAND_EVENT, MESSAGE_EVENT)
                if event in machine.events
                for t in machine.events[event].transitions.get(name, [])
                if isinstance(t, FlowTransition)
            )
            own = [r for r in dispatch if r.event == MESSAGE_EVENT]  # not the commands
            first = tuple(r for r in own if r.specific) if flow.first_message == "match" else ()
            states[name] = CompiledState(
                flow=flow.name,
                name=name,
                say=self._replies(state.say, flow, f"{flow.name}.{name}"),
                enter=tuple(self._hook(h.name, flow.hooks) for h in state.enter),
                final=state.final,
                dispatch=dispatch,
                first=first,
            )
        constants = MappingProxyType({**self.p.constants, **flow.constants})
        return FlowMachine(
            flow.name, flow.file, flow.initial, constants, MappingProxyType(states), machine
        )

    def _add(
        self,
        machine: FlowGraphMachine,
        event: str,
        sources: list[Any],
        spec: RuleSpec,
        flow: FlowSpec,
        hooks: str,
        stand_ins: dict[tuple[str, str], str],
    ) -> None:
        target = None
        dest: str | None = None
        if spec.target is not None:
            other = self.p.flows[spec.target.flow or flow.name]
            target = (other.name, spec.target.state or other.initial)
            dest = (
                target[1] if other.name == flow.name else self._stand_in(machine, target, stand_ins)
            )
        note = f"{flow.name}.{sources[0] if event == MESSAGE_EVENT else '*'}"
        rule = Rule(
            label=spec.label,
            matchers=tuple(_matcher(t) for t in spec.triggers),
            conditions=tuple(self._hook(h.name, hooks) for h in spec.conditions),
            unless=tuple(self._hook(h.name, hooks) for h in spec.unless),
            actions=tuple(self._hook(h.name, hooks) for h in spec.actions),
            saves=tuple(Save(s, self._replies(s.invalid, flow, note)) for s in spec.saves),
            say=self._replies(spec.say, flow, note),
            target=target,
            flow=flow.name,
            where=f"{flow.file}:{spec.line}",
            specific=any(t.kind != "else" and ANY not in t.values for t in spec.triggers),
            event=event,
        )
        machine.add_transition(
            event,
            sources,
            dest,
            rule=rule,
            label=_LABEL_UNSAFE.sub(" ", spec.label),
            conditions=[h.name for h in spec.conditions] or None,
            unless=[h.name for h in spec.unless] or None,
        )

    def _stand_in(
        self,
        machine: FlowGraphMachine,
        target: tuple[str, str],
        stand_ins: dict[tuple[str, str], str],
    ) -> str:
        if target not in stand_ins:
            name = f"{target[0]}__{target[1]}"
            while name in machine.states:
                name += "_"
            machine.add_state(_LabelledState(name, f"{target[0]}.{target[1]}"))
            stand_ins[target] = name
        return stand_ins[target]

    def _replies(
        self, specs: tuple[ReplySpec, ...], flow: FlowSpec, note: str
    ) -> tuple[CompiledReply, ...]:
        return tuple(compile_reply(self.renderer, s, f"{flow.file}:{s.line}", note) for s in specs)

    def _hook(self, name: str, module: str) -> hooks_mod.Hook:
        hook = hooks_mod.resolve(self.modules[module], name)
        if hook is None:  # the checker reports this; reaching here is a bug
            raise LookupError(f"hook {name!r} missing from {module}")
        return hook
