"""Checking a flows folder: every problem at once, each with its file and line.

:func:`check_folder` is what ``bot check`` runs; :func:`analyze` is what
:meth:`Engine.load <bot.engine.engine.Engine.load>` builds on, so a folder that checks
clean is exactly a folder that loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from bot.engine import hooks as hooks_mod
from bot.engine._check_graph import unreachable
from bot.engine._check_replies import FallbackChecker, ReplyChecker
from bot.engine._check_rules import shadowed
from bot.engine._remind import check_reminders
from bot.engine.loader import load_project
from bot.engine.render import Renderer
from bot.engine.spec import (
    ANY,
    FlowSpec,
    HookRef,
    ProjectSpec,
    ReplyButton,
    RuleSpec,
    Section,
    StateSpec,
    Target,
)
from bot.findings import Finding, did_you_mean, sort_findings

#: The flow new users start in when nothing else is configured.
DEFAULT_FLOW = "welcome"


@dataclass
class Analysis:
    """A loaded, checked folder: the spec, the hooks modules and every finding."""

    project: ProjectSpec
    findings: list[Finding]
    default_flow: str
    renderer: Renderer = field(default_factory=Renderer)
    modules: dict[str, ModuleType] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        """The findings that stop a load."""
        return [f for f in self.findings if f.severity == "error"]

    def hooks_file(self, module: str) -> Path:
        """The file a hooks module name stands for."""
        return self.project.directory / f"{module}.py"


def check_folder(
    flows_dir: Path, *, fallback_checker: FallbackChecker | None = None
) -> list[Finding]:
    """Load and check every flow file of ``flows_dir``; all findings, in file and line order.

    Args:
        flows_dir: the flows folder (``*.yaml`` flows, optional ``_project.yaml``, hooks).
        fallback_checker: called with each reply's :class:`FallbackSpec`; every string it
            returns becomes an error at the fallback's line (the template registry plugs in
            here to check names, languages and parameter counts).
    """
    return analyze(Path(flows_dir), fallback_checker=fallback_checker).findings


def analyze(
    flows_dir: Path,
    *,
    fallback_checker: FallbackChecker | None = None,
    default_flow: str | None = None,
) -> Analysis:
    """Load the folder and run every check."""
    project, findings = load_project(flows_dir)
    analysis = Analysis(project, findings, _default_flow(project, default_flow, findings))
    _Checker(analysis, fallback_checker).run()
    analysis.findings = sort_findings(analysis.findings)
    return analysis


def _default_flow(project: ProjectSpec, wanted: str | None, findings: list[Finding]) -> str:
    name = wanted or project.default_flow
    where = project.file or project.directory
    if name:
        if name not in project.flows and name not in project.unreadable:
            line = project.default_flow_line if not wanted else 0
            findings.append(
                Finding(
                    where,
                    line,
                    f"default flow '{name}' does not exist{did_you_mean(name, project.flows)}",
                )
            )
        return name
    if DEFAULT_FLOW in project.flows or len(project.flows) != 1:
        if DEFAULT_FLOW not in project.flows and project.flows:
            findings.append(
                Finding(
                    where,
                    0,
                    "no 'welcome' flow: set default_flow: in "
                    "_project.yaml to the flow new users start in",
                )
            )
        return DEFAULT_FLOW
    return next(iter(project.flows))


class _Checker:
    def __init__(self, analysis: Analysis, fallback_checker: FallbackChecker | None) -> None:
        self.a = analysis
        self.p = analysis.project
        self.fallback_checker = fallback_checker
        self.variables = frozenset(self._variables())
        self.reply_ids = self._reply_ids()

    def add(self, file: Path, line: int, message: str, severity: str = "error") -> None:
        self.a.findings.append(
            Finding(file, line, message, "warning" if severity == "warning" else "error")
        )

    def run(self) -> None:
        project_file = self.p.file or self.p.directory
        project_replies = self._replies_checker(project_file, self.p.constants)
        for rule in self.p.commands:
            self._rule(rule, project_file, None, None, project_replies, self.p.hooks)
        self._shadowing(project_file, self.p.commands)
        project_replies.on_error(self.p.on_error, self.p.commands)
        for flow in self.p.flows.values():
            self._flow(flow)
        self._reachability()

    def _variables(self) -> set[str]:
        names = set(self.p.variables)
        for flow in self.p.flows.values():
            names.update(flow.variables)
            for rule in _all_rules(self.p, flow):
                names.update(s.var for s in rule.saves)
        return names

    def _reply_ids(self) -> set[str]:
        ids: set[str] = set()
        replies = list(self.p.on_error)
        for flow in self.p.flows.values():
            replies += [r for s in flow.states.values() for r in s.say]
            replies += [r for rule in _all_rules(self.p, flow) for r in rule.say]
            replies += flow.on_error or ()
        for reply in replies:
            ids.update(b.id for b in reply.buttons)
            ids.update(row.id for sec in reply.sections for row in sec.rows)
        return ids

    def _replies_checker(self, file: Path, constants: Mapping[str, object]) -> ReplyChecker:
        return ReplyChecker(
            file,
            self.a.findings,
            self.a.renderer,
            variables=self.variables,
            constants=frozenset(constants) | frozenset(self.p.constants),
            fallback_checker=self.fallback_checker,
        )

    def _flow(self, flow: FlowSpec) -> None:
        replies = self._replies_checker(flow.file, flow.constants)
        if flow.hooks_line and not self.a.hooks_file(flow.hooks).is_file():
            self.add(
                flow.file,
                flow.hooks_line,
                f"hooks module {self.a.hooks_file(flow.hooks)} not found",
            )
        if flow.initial and flow.initial not in flow.states:
            self.add(
                flow.file,
                flow.initial_line,
                f"initial state '{flow.initial}' is not a "
                f"state of this flow{did_you_mean(flow.initial, flow.states)}",
            )
        for rule in flow.commands:
            self._rule(rule, flow.file, flow, None, replies, flow.hooks)
        self._shadowing(flow.file, flow.commands)
        replies.on_error(flow.on_error or (), (*flow.commands, *self.p.commands))
        for state in flow.states.values():
            for reply in state.say:
                replies.reply(reply)
                self._unhandled_buttons(flow, state, reply.buttons, reply.sections)
            self._hooks(state.enter, flow.file, flow.hooks)
            for rule in state.rules:
                self._rule(rule, flow.file, flow, state, replies, flow.hooks)
            self._shadowing(flow.file, state.rules)
            self._way_out(flow, state)

    def _rule(
        self,
        rule: RuleSpec,
        file: Path,
        flow: FlowSpec | None,
        state: StateSpec | None,
        replies: ReplyChecker,
        hooks_module: str,
    ) -> None:
        if rule.target is not None:
            self._target(rule.target, file, flow)
        self._hooks((*rule.conditions, *rule.unless, *rule.actions), file, hooks_module)
        for reply in rule.say:
            replies.reply(reply)
        for reminder in rule.reminders:
            check_reminders(self.p, reminder, file, replies)
        for key in rule.cancels:
            replies.jinja(key, rule.line)
        regex = [t for t in rule.triggers if t.kind == "regex"]
        for save in rule.saves:
            for reply in save.invalid:
                replies.reply(reply)
            if save.source.startswith("match."):
                group = save.source.removeprefix("match.")
                groups = set(re.compile(regex[0].values[0]).groupindex) if regex else set()
                if len(rule.triggers) != 1 or group not in groups:
                    self.add(
                        file,
                        save.line,
                        f"from: {save.source} needs a regex trigger with "
                        f"a (?P<{group}>...) group{did_you_mean(group, groups)}",
                    )
            if (save.minimum is not None or save.maximum is not None) and save.source != "number":
                self.add(file, save.line, "min:/max: only apply with from: number", "warning")
        for trigger in rule.triggers:
            if trigger.kind == "reply":
                for ident in trigger.values:
                    if ident != ANY and ident not in self.reply_ids:
                        self.add(
                            file,
                            trigger.line,
                            f"no button or list row has the id "
                            f"'{ident}'{did_you_mean(ident, self.reply_ids)}",
                            "warning",
                        )
        if state is not None and flow is not None and state.commands:
            self._command_overlap(file, flow, rule)

    def _target(self, target: Target, file: Path, flow: FlowSpec | None) -> None:
        if target.flow:
            other = self.p.flows.get(target.flow)
            if other is None:
                if target.flow not in self.p.unreadable:
                    self.add(
                        file,
                        target.line,
                        f"unknown flow '{target.flow}'{did_you_mean(target.flow, self.p.flows)}",
                    )
                return
            if target.state and target.state not in other.states:
                self.add(
                    file,
                    target.line,
                    f"unknown state '{target.state}' in flow "
                    f"'{other.name}'{did_you_mean(target.state, other.states)}",
                )
        elif flow is not None and target.state not in flow.states:
            self.add(
                file,
                target.line,
                f"unknown state '{target.state}'{did_you_mean(target.state, flow.states)}",
            )

    def _hooks(self, refs: Iterable[HookRef], file: Path, module_name: str) -> None:
        refs = list(refs)
        if not refs:
            return
        module = self._module(module_name, file, refs[0].line)
        if module is None:
            return
        for ref in refs:
            hook = hooks_mod.resolve(module, ref.name)
            if hook is None:
                hint = did_you_mean(ref.name, hooks_mod.hook_names(module))
                self.add(
                    file,
                    ref.line,
                    f"unknown hook '{ref.name}' in {self.a.hooks_file(module_name)}{hint}",
                )
            elif problem := hooks_mod.signature_problem(hook):
                self.add(file, ref.line, f"hook '{ref.name}' {problem}")

    def _module(self, name: str, file: Path, line: int) -> ModuleType | None:
        if name in self.a.modules:
            return self.a.modules[name]
        path = self.a.hooks_file(name)
        if not path.is_file():
            self.add(file, line, f"hooks module {path} not found (hooks are looked up there)")
            return None
        try:
            module = hooks_mod.load_module(path)
        except hooks_mod.HooksLoadError as exc:
            self.add(path, exc.line, str(exc))
            return None
        self.a.modules[name] = module
        return module

    def _shadowing(self, file: Path, rules: tuple[RuleSpec, ...]) -> None:
        for line, message, severity in shadowed(rules):
            self.add(file, line, message, severity)

    def _command_overlap(self, file: Path, flow: FlowSpec, rule: RuleSpec) -> None:
        commands = [*flow.commands, *self.p.commands]
        for t in rule.triggers:
            if t.kind != "text":
                continue
            for command in commands:
                for ct in command.triggers:
                    if ct.kind == "text" and {v.casefold() for v in t.values} & {
                        v.casefold() for v in ct.values
                    }:
                        self.add(
                            file,
                            t.line,
                            f"'{rule.label}' is taken by a command first "
                            "(commands are checked before a state's rules)",
                            "warning",
                        )
                        return

    def _way_out(self, flow: FlowSpec, state: StateSpec) -> None:
        if state.final:
            if state.rules:
                self.add(
                    flow.file,
                    state.rules[0].line,
                    f"final state '{state.name}' cannot "
                    "have on: rules (a message in a final state starts over)",
                )
            return
        leaves = any(
            r.target is not None and (r.target.flow or r.target.state != state.name)
            for r in state.rules
        )
        if not leaves:
            self.add(
                flow.file,
                state.line,
                f"state '{state.name}' has no way out: add an on: "
                "rule with to:/goto:, or mark it final: true",
            )

    def _unhandled_buttons(
        self,
        flow: FlowSpec,
        state: StateSpec,
        buttons: tuple[ReplyButton, ...],
        sections: tuple[Section, ...],
    ) -> None:
        if state.final:
            return
        ids = [(b.id, b.line) for b in buttons]
        ids += [(row.id, row.line) for sec in sections for row in sec.rows]
        rules = [*state.rules, *(flow.commands + self.p.commands if state.commands else ())]
        for ident, line in ids:
            if not any(
                t.kind == "else" or (t.kind == "reply" and (ANY in t.values or ident in t.values))
                for r in rules
                for t in r.triggers
            ):
                self.add(
                    flow.file,
                    line,
                    f"state '{state.name}' has no rule for its button "
                    f"'{ident}' (add '- reply: {ident}' under on:)",
                    "warning",
                )

    def _reachability(self) -> None:
        self.a.findings.extend(unreachable(self.p, self.a.default_flow))


def _all_rules(project: ProjectSpec, flow: FlowSpec) -> list[RuleSpec]:
    rules = [*project.commands, *flow.commands]
    for state in flow.states.values():
        rules.extend(state.rules)
    return rules
