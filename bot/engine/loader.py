"""Flow files → :class:`ProjectSpec`, with a :class:`Finding` for every problem of form.

This module checks *shape* (keys, types, regular expressions); whether targets exist,
states are reachable or replies render is the checker's business (:mod:`bot.engine.check`).
"""

from __future__ import annotations

import re
from pathlib import Path

from yaml.nodes import Node, ScalarNode

from bot.engine._replies import MEDIA_KINDS, ReplyReader
from bot.engine._yaml import Reader, compose, line_of
from bot.engine.spec import (
    ANY,
    FlowSpec,
    HookRef,
    ProjectSpec,
    ReplySpec,
    RuleSpec,
    SaveSpec,
    StateSpec,
    Target,
    TriggerKind,
    TriggerSpec,
)
from bot.findings import Finding, did_you_mean

PROJECT_FILE = "_project.yaml"
#: Files in the flows folder that are not flows (the template registry owns ``templates.yaml``).
NOT_FLOWS = frozenset({"templates.yaml", "templates.yml"})

FLOW_KEYS = frozenset(
    {
        "flow",
        "initial",
        "states",
        "commands",
        "constants",
        "vars",
        "hooks",
        "on_error",
        "first_message",
    }
)
#: What ``first_message:`` may say (see FlowSpec.first_message).
FIRST_MESSAGE = ("match", "greet")
PROJECT_KEYS = frozenset({"default_flow", "commands", "constants", "vars", "hooks", "on_error"})
STATE_KEYS = frozenset({"say", "on", "final", "do", "commands"})
TRIGGER_KEYS: tuple[TriggerKind, ...] = (
    "text",
    "keywords",
    "regex",
    "reply",
    "payload",
    "media",
    "location",
    "else",
)
RULE_KEYS = frozenset({*TRIGGER_KEYS, "if", "unless", "do", "save", "say", "to", "goto"})
SAVE_KEYS = frozenset({"var", "from", "pattern", "choices", "min", "max", "invalid"})
#: Where ``save: {from: ...}`` can take a value from (plus ``match.<group>`` for regex groups).
SOURCES = frozenset(
    {
        "text",
        "id",
        "title",
        "description",
        "payload",
        "number",
        "location",
        "caption",
        "media",
        "type",
    }
)
_DEFAULT_SOURCE = {"reply": "id", "payload": "payload", "location": "location", "media": "media"}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def flow_files(flows_dir: Path) -> list[Path]:
    """The flow files of a folder: ``*.yaml``/``*.yml`` except ``templates.yaml`` and ``_*``."""
    files = [*flows_dir.glob("*.yaml"), *flows_dir.glob("*.yml")]
    return sorted(f for f in files if f.name not in NOT_FLOWS and not f.name.startswith("_"))


def load_project(flows_dir: Path) -> tuple[ProjectSpec, list[Finding]]:
    """Read every flow file and the optional project file; never raises for bad content."""
    findings: list[Finding] = []
    if not flows_dir.is_dir():
        findings.append(Finding(flows_dir, 0, "flows folder not found"))
        return ProjectSpec(flows_dir, {}), findings
    project = _read_project(flows_dir, findings)
    flows: dict[str, FlowSpec] = {}
    unreadable: list[str] = []
    for file in flow_files(flows_dir):
        flow = _FlowReader(file, findings, project.hooks_default).read()
        if flow is None:
            unreadable.append(file.stem)
        elif flow.name in flows:
            other = flows[flow.name].file
            findings.append(
                Finding(file, flow.line, f"flow '{flow.name}' is also defined in {other}")
            )
        else:
            flows[flow.name] = flow
    if not flows and not unreadable:
        findings.append(Finding(flows_dir, 0, "no flow files (*.yaml) in the flows folder"))
    spec = ProjectSpec(
        directory=flows_dir,
        flows=flows,
        commands=project.commands,
        constants=project.constants,
        variables=project.variables,
        default_flow=project.default_flow,
        default_flow_line=project.default_flow_line,
        file=project.file,
        hooks=project.hooks_default,
        unreadable=frozenset(unreadable),
        on_error=project.on_error,
    )
    return spec, findings


class _ProjectFile:
    def __init__(self) -> None:
        self.file: Path | None = None
        self.commands: tuple[RuleSpec, ...] = ()
        self.constants: dict[str, object] = {}
        self.variables: dict[str, object] = {}
        self.default_flow = ""
        self.default_flow_line = 0
        self.hooks_default = "hooks"
        self.on_error: tuple[ReplySpec, ...] = ()


def _read_project(flows_dir: Path, findings: list[Finding]) -> _ProjectFile:
    out = _ProjectFile()
    file = flows_dir / PROJECT_FILE
    if not file.exists():
        return out
    out.file = file
    node = compose(file, findings)
    if node is None:
        return out
    r = _FlowReader(file, findings, "hooks")
    m = r.r.mapping(node, "the project file", PROJECT_KEYS)
    if m is None:
        return out
    if "default_flow" in m:
        out.default_flow = r.r.text(m["default_flow"][1], "default_flow") or ""
        out.default_flow_line = line_of(m["default_flow"][1])
    if "hooks" in m:
        out.hooks_default = r.r.text(m["hooks"][1], "hooks") or "hooks"
    out.constants = r.plain_mapping(m.get("constants"), "constants")
    out.variables = r.plain_mapping(m.get("vars"), "vars")
    if "commands" in m:
        out.commands = r.rules(m["commands"][1], command=True, in_project=True)
    if "on_error" in m:
        out.on_error = r.replies.replies(m["on_error"][1], "on_error")
    return out


class _FlowReader:
    def __init__(self, file: Path, findings: list[Finding], hooks_default: str) -> None:
        self.file = file
        self.r = Reader(file, findings)
        self.replies = ReplyReader(self.r, flow=file.stem)
        self.hooks_default = hooks_default

    def read(self) -> FlowSpec | None:
        node = compose(self.file, self.r.findings)
        if node is None:
            return None
        m = self.r.mapping(node, "a flow file", FLOW_KEYS)
        if m is None:
            return None
        name = self.file.stem
        if "flow" in m:
            name = self.r.text(m["flow"][1], "flow") or name
        if not NAME.match(name):
            self.r.report(
                m["flow"][1] if "flow" in m else node,
                f"flow name '{name}' must be a word (letters, digits, _)",
            )
        self.replies.flow = name
        if "states" not in m:
            self.r.report(node, "a flow needs states:")
            return None
        states = self.states(m["states"][1])
        initial, initial_line = "", line_of(m["states"][1])
        if "initial" in m:
            initial = self.r.text(m["initial"][1], "initial") or ""
            initial_line = line_of(m["initial"][1])
        elif states:
            initial = next(iter(states))
        hooks, hooks_line = self.hooks_default, 0
        if "hooks" in m:
            hooks = self.r.text(m["hooks"][1], "hooks") or self.hooks_default
            hooks_line = line_of(m["hooks"][1])
            if not NAME.match(hooks):
                self.r.report(
                    m["hooks"][1],
                    f"hooks must name a module file in the flows "
                    f"folder without .py (like 'hooks'), not '{hooks}'",
                )
        first = "match"
        if "first_message" in m:
            first = self.r.text(m["first_message"][1], "first_message") or "match"
            if first not in FIRST_MESSAGE:
                self.r.report(
                    m["first_message"][1],
                    f"first_message must be match or greet, not '{first}'",
                )
        return FlowSpec(
            name=name,
            file=self.file,
            line=line_of(node),
            first_message=first,
            initial=initial,
            initial_line=initial_line,
            states=states,
            commands=self.rules(m["commands"][1], command=True) if "commands" in m else (),
            constants=self.plain_mapping(m.get("constants"), "constants"),
            variables=self.plain_mapping(m.get("vars"), "vars"),
            hooks=hooks,
            hooks_line=hooks_line,
            on_error=self.replies.replies(m["on_error"][1], "on_error")
            if "on_error" in m
            else None,
        )

    def plain_mapping(self, pair: tuple[Node, Node] | None, what: str) -> dict[str, object]:
        if pair is None:
            return {}
        m = self.r.names(pair[1], what)
        if m is None:
            return {}
        out = {}
        for key, (key_node, value) in m.items():
            if not NAME.match(key):
                self.r.report(key_node, f"{what} names must be words (letters, digits, _): '{key}'")
            out[key] = self.r.value(value)
        return out

    def states(self, node: Node) -> dict[str, StateSpec]:
        m = self.r.names(node, "states")
        if m is None:
            return {}
        if not m:
            self.r.report(node, "states: is empty")
        out = {}
        for name, (key_node, value) in m.items():
            if not NAME.match(name):
                self.r.report(key_node, f"state name '{name}' must be a word (letters, digits, _)")
            out[name] = self.state(name, key_node, value)
        return out

    def state(self, name: str, key_node: Node, node: Node) -> StateSpec:
        line = line_of(key_node)
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            return StateSpec(name, line)
        m = self.r.mapping(node, f"state '{name}'", STATE_KEYS)
        if m is None:
            return StateSpec(name, line)
        final = bool(self.r.flag(m["final"][1], "final")) if "final" in m else False
        commands = True
        if "commands" in m:
            commands = self.r.flag(m["commands"][1], "commands (false turns them off)") is not False
        return StateSpec(
            name=name,
            line=line,
            say=self.replies.replies(m["say"][1], name) if "say" in m else (),
            rules=self.rules(m["on"][1], state=name) if "on" in m else (),
            final=final,
            enter=self.hook_refs(m["do"][1], "do") if "do" in m else (),
            commands=commands,
        )

    def rules(
        self, node: Node, *, command: bool = False, in_project: bool = False, state: str = ""
    ) -> tuple[RuleSpec, ...]:
        out = []
        for item in self.r.items(node):
            rule = self.rule(item, command=command, in_project=in_project, state=state)
            if rule is not None:
                out.append(rule)
        return tuple(out)

    def rule(self, node: Node, *, command: bool, in_project: bool, state: str) -> RuleSpec | None:
        r = self.r
        m = r.mapping(node, "a command" if command else "a rule", RULE_KEYS)
        if m is None:
            return None
        triggers = [self.trigger(k, *m[k]) for k in m if k in TRIGGER_KEYS]
        found = [t for t in triggers if t is not None]
        if not triggers:
            r.report(node, f"a rule needs a trigger: one of {', '.join(TRIGGER_KEYS)}")
            return None
        if not found:
            return None
        target = None
        if "to" in m and "goto" in m:
            r.report(m["goto"][0], "use either to: (a state here) or goto: (another flow)")
        elif "to" in m:
            text = r.text(m["to"][1], "to") or ""
            if "." in text:
                r.report(m["to"][1], f"to: names a state of this flow; for '{text}' use goto:")
            elif in_project:
                r.report(m["to"][1], "project commands need goto: flow or goto: flow.state")
            target = Target("", text, line_of(m["to"][1]), text)
        elif "goto" in m:
            text = r.text(m["goto"][1], "goto") or ""
            flow, _, st = text.partition(".")
            target = Target(flow, st, line_of(m["goto"][1]), text)
        saves = self.saves(m["save"][1], found[0].kind) if "save" in m else ()
        return RuleSpec(
            triggers=tuple(found),
            line=line_of(node),
            conditions=self.hook_refs(m["if"][1], "if") if "if" in m else (),
            unless=self.hook_refs(m["unless"][1], "unless") if "unless" in m else (),
            actions=self.hook_refs(m["do"][1], "do") if "do" in m else (),
            saves=saves,
            say=self.replies.replies(m["say"][1], state) if "say" in m else (),
            target=target,
            command=command,
        )

    def trigger(self, kind: TriggerKind, key: Node, node: Node) -> TriggerSpec | None:
        r = self.r
        line = line_of(key)
        if kind in ("else", "location"):
            if isinstance(node, ScalarNode) and (node.tag.endswith(":null") or node.value == ANY):
                return TriggerSpec(kind, (ANY,), line)
            if r.flag(node, kind) is not True:
                return None
            return TriggerSpec(kind, (ANY,), line)
        if kind == "regex":
            pattern = r.text(node, "regex")
            if pattern is None:
                return None
            try:
                re.compile(pattern)
            except re.error as exc:
                r.report(node, f"invalid regular expression: {exc}")
                return None
            return TriggerSpec(kind, (pattern,), line)
        values = r.texts(node, kind)
        if not values or not all(v.strip() for v in values):
            r.report(node, f'{kind}: needs a non-empty value (or "*" for any)')
            return None
        if ANY in values and len(values) > 1:
            r.report(node, f'{kind}: "*" already accepts everything; drop the other values')
        if kind == "media":
            for v in values:
                if v != ANY and v not in MEDIA_KINDS:
                    r.report(node, f"unknown media type '{v}' (one of {', '.join(MEDIA_KINDS)})")
        return TriggerSpec(kind, values, line)

    def saves(self, node: Node, first_trigger: TriggerKind) -> tuple[SaveSpec, ...]:
        r = self.r
        default = _DEFAULT_SOURCE.get(first_trigger, "text")
        out = []
        for item in r.items(node):
            if isinstance(item, ScalarNode):
                var = r.text(item, "save") or ""
                if self._var_ok(item, var):
                    out.append(SaveSpec(var, default, line_of(item)))
                continue
            m = r.mapping(item, "save", SAVE_KEYS)
            if m is None:
                continue
            if "var" not in m:
                r.report(item, "save: needs var: (the variable to store into)")
                continue
            var = r.text(m["var"][1], "var") or ""
            if not self._var_ok(m["var"][1], var):
                continue
            source = default
            if "from" in m:
                source = r.text(m["from"][1], "from") or default
                if source not in SOURCES and not source.startswith("match."):
                    r.report(
                        m["from"][1], f"unknown source '{source}' for save{_choices_hint(source)}"
                    )
            pattern = (r.text(m["pattern"][1], "pattern") or "") if "pattern" in m else ""
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    r.report(m["pattern"][1], f"invalid regular expression: {exc}")
                    pattern = ""
            out.append(
                SaveSpec(
                    var=var,
                    source=source,
                    line=line_of(item),
                    pattern=pattern,
                    choices=r.texts(m["choices"][1], "a choice") if "choices" in m else (),
                    minimum=r.number(m["min"][1], "min") if "min" in m else None,
                    maximum=r.number(m["max"][1], "max") if "max" in m else None,
                    invalid=self.replies.replies(m["invalid"][1]) if "invalid" in m else (),
                )
            )
        return tuple(out)

    def _var_ok(self, node: Node, var: str) -> bool:
        if NAME.match(var):
            return True
        self.r.report(node, f"variable name '{var}' must be a word (letters, digits, _)")
        return False

    def hook_refs(self, node: Node, what: str) -> tuple[HookRef, ...]:
        out = []
        for item in self.r.items(node):
            name = self.r.text(item, f"{what} (a hook name)")
            if name is None:
                continue
            if not NAME.match(name) or name.startswith("_"):
                self.r.report(
                    item, f"{what}: '{name}' must name a public function of the hooks module"
                )
                continue
            out.append(HookRef(name, line_of(item)))
        return tuple(out)


def _choices_hint(source: str) -> str:
    return did_you_mean(source, SOURCES) or f" (one of {', '.join(sorted(SOURCES))}, match.NAME)"
