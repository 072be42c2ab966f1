"""Which flows and states no conversation can reach from the default flow's initial state."""

from __future__ import annotations

from collections import deque

from bot.engine.spec import ProjectSpec
from bot.findings import Finding


def unreachable(project: ProjectSpec, default_flow: str) -> list[Finding]:
    """Warnings for flows never entered and states never reached.

    Edges are every ``to:``/``goto:`` of a state's rules and of the commands available in
    it, and the resume point of every reminder they schedule (a tap on it lands there); the
    walk starts where new users start.
    """
    if default_flow not in project.flows:
        return []
    seen: set[tuple[str, str]] = set()
    queue = deque([(default_flow, project.flows[default_flow].initial)])
    while queue:
        node = queue.popleft()
        flow = project.flows.get(node[0])
        if node in seen or flow is None or node[1] not in flow.states:
            continue
        seen.add(node)
        state = flow.states[node[1]]
        commands = (*flow.commands, *project.commands) if state.commands else ()
        for rule in (*state.rules, *commands):
            for reminder in rule.reminders:
                target, _, name = reminder.resume.partition(".")
                if target:
                    queue.append((target, name))
            if rule.target is not None:
                other = project.flows.get(rule.target.flow or flow.name)
                if other is not None:
                    queue.append((other.name, rule.target.state or other.initial))
    found = []
    entered = {name for name, _ in seen}
    for flow in project.flows.values():
        if flow.name not in entered:
            found.append(
                Finding(
                    flow.file,
                    flow.line,
                    f"flow '{flow.name}' is never entered: "
                    "no goto: leads to it and it is not the default flow",
                    "warning",
                )
            )
            continue
        for state in flow.states.values():
            if (flow.name, state.name) not in seen:
                found.append(
                    Finding(
                        flow.file,
                        state.line,
                        f"state '{state.name}' is unreachable: no rule leads to it",
                        "warning",
                    )
                )
    return found
