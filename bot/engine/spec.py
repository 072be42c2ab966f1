"""What a flow file says, as frozen data with the line each part came from.

The loader builds these from YAML; the checker inspects them; the machine compiles them.
Strings that are rendered (reply texts, titles, links) are kept as Jinja *source* here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TriggerKind = Literal["text", "keywords", "regex", "reply", "payload", "media", "location", "else"]
ReplyKind = Literal[
    "text", "buttons", "list", "image", "video", "audio", "document", "sticker", "location"
]

#: A trigger value meaning "any value of this kind" (``text: "*"``, ``reply: "*"``...).
ANY = "*"


@dataclass(frozen=True, slots=True)
class FallbackSpec:
    """A reply's template fallback, as declared; handed to the template registry's checker.

    ``params`` holds the Jinja expressions in declaration order; ``names`` the parameter
    names when the template uses named parameters (empty for positional ones).
    ``language`` is a locale code, or ``""`` for "choose by the user's language chain".
    """

    template: str
    file: Path
    line: int
    language: str = ""
    params: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    header: tuple[str, ...] = ()
    buttons: tuple[str, ...] = ()
    flow: str = ""
    state: str = ""

    @property
    def named(self) -> bool:
        """Whether the template takes named (``{{first_name}}``) parameters."""
        return bool(self.names)

    @property
    def param_count(self) -> int:
        """How many body parameters the call passes."""
        return len(self.params)


@dataclass(frozen=True, slots=True)
class Button:
    """One reply button."""

    id: str
    title: str
    line: int


@dataclass(frozen=True, slots=True)
class Row:
    """One row of a list message."""

    id: str
    title: str
    line: int
    description: str = ""


@dataclass(frozen=True, slots=True)
class Section:
    """A titled group of list rows."""

    title: str
    rows: tuple[Row, ...]
    line: int


@dataclass(frozen=True, slots=True)
class ReplySpec:
    """One ``say:`` item. ``text`` is the body, or the caption of a media reply."""

    kind: ReplyKind
    line: int
    text: str = ""
    text_line: int = 0
    preview_url: bool = False
    header: str = ""
    footer: str = ""
    buttons: tuple[Button, ...] = ()
    list_button: str = ""
    list_button_line: int = 0
    sections: tuple[Section, ...] = ()
    link: str = ""
    filename: str = ""
    latitude: str = ""
    longitude: str = ""
    name: str = ""
    address: str = ""
    fallback: FallbackSpec | None = None


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    """One way a rule can fire: a kind and the values it accepts (``("*",)`` for any)."""

    kind: TriggerKind
    values: tuple[str, ...]
    line: int

    @property
    def label(self) -> str:
        """A short human description, used in logs, ``Turn.trigger`` and diagrams."""
        if self.kind == "else":
            return "else"
        if self.kind == "location":
            return "location"
        if self.kind == "regex":
            return f"regex /{self.values[0]}/"
        shown = ", ".join(self.values)
        return f"{self.kind} {shown}"


@dataclass(frozen=True, slots=True)
class HookRef:
    """A hook named in ``if:``, ``unless:`` or ``do:``."""

    name: str
    line: int


@dataclass(frozen=True, slots=True)
class SaveSpec:
    """``save:``: what to keep from the message, how to validate it, what to say if invalid."""

    var: str
    source: str
    line: int
    pattern: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    invalid: tuple[ReplySpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Target:
    """Where a rule leads: a state of ``flow`` (``""`` = the rule's own flow).

    ``state`` is ``""`` for "that flow's initial state".
    """

    flow: str
    state: str
    line: int
    text: str


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One entry of ``on:`` or ``commands:``: triggers (any may match) and what follows."""

    triggers: tuple[TriggerSpec, ...]
    line: int
    conditions: tuple[HookRef, ...] = ()
    unless: tuple[HookRef, ...] = ()
    actions: tuple[HookRef, ...] = ()
    saves: tuple[SaveSpec, ...] = ()
    say: tuple[ReplySpec, ...] = ()
    target: Target | None = None
    command: bool = False

    @property
    def label(self) -> str:
        """The triggers, joined for display."""
        text = " / ".join(t.label for t in self.triggers)
        return f"command {text}" if self.command else text

    @property
    def guarded(self) -> bool:
        """Whether conditions can stop this rule from firing after its trigger matched."""
        return bool(self.conditions or self.unless)


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One state: what it says on entry and how it reacts."""

    name: str
    line: int
    say: tuple[ReplySpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    final: bool = False
    enter: tuple[HookRef, ...] = ()
    commands: bool = True


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """One flow file."""

    name: str
    file: Path
    line: int
    initial: str
    initial_line: int
    states: Mapping[str, StateSpec]
    commands: tuple[RuleSpec, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=dict)
    variables: Mapping[str, Any] = field(default_factory=dict)
    hooks: str = "hooks"
    hooks_line: int = 0
    #: ``on_error:`` replies for users in this flow; ``None`` when the flow declares none
    #: (the project's apply), ``()`` when it declares an empty list (no error reply here).
    on_error: tuple[ReplySpec, ...] | None = None
    #: ``match``: a message that starts a conversation (a new user's first, or the next one
    #: after a final state) is greeted by the initial state and then tried against that
    #: state's specific rules; ``greet``: it only gets the greeting.
    first_message: str = "match"


@dataclass(frozen=True, slots=True)
class ProjectSpec:
    """Everything in a flows folder: the flows and the optional ``_project.yaml``."""

    directory: Path
    flows: Mapping[str, FlowSpec]
    commands: tuple[RuleSpec, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=dict)
    variables: Mapping[str, Any] = field(default_factory=dict)
    default_flow: str = ""
    default_flow_line: int = 0
    file: Path | None = None
    hooks: str = "hooks"  # the hooks module of project commands, and flows' default
    unreadable: frozenset[str] = frozenset()  # stems of flow files that could not be read
    #: ``on_error:``: what a user gets when their message could not be handled.
    on_error: tuple[ReplySpec, ...] = ()
