"""Mermaid ``stateDiagram-v2`` of a flow, drawn by ``transitions``' own Mermaid support."""

from __future__ import annotations

import re
from typing import Any

from transitions.extensions.diagrams_mermaid import Graph

from bot.engine.engine import Engine
from bot.engine.machine import COMMAND_EVENT
from bot.errors import FlowError


class _FlowGraph(Graph):
    """``transitions``' Mermaid graph, optionally without the command edges of every state."""

    def __init__(self, machine: Any, *, commands: bool) -> None:
        self.commands = commands
        super().__init__(machine)

    def _get_elements(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        states, transitions = super()._get_elements()
        if not self.commands:
            transitions = [t for t in transitions if t.get("trigger") != COMMAND_EVENT]
            used = {t["source"] for t in transitions} | {t.get("dest") for t in transitions}
            # stand-ins for other flows' states carry a label; drop those only commands reach
            states = [s for s in states if "label" not in s or s["name"] in used]
        return states, transitions


def mermaid(engine: Engine, flow: str, *, commands: bool = False) -> str:
    """The Mermaid source of ``flow``'s diagram.

    Other flows' states that ``goto:`` leads to appear as states labelled ``flow.state``;
    final states lead to ``[*]``. Commands (available in every state) are left out unless
    ``commands=True``, as they would draw an edge from every state.

    Raises:
        FlowError: there is no flow of that name.
    """
    compiled = engine.flows.get(flow)
    if compiled is None:
        raise FlowError(f"no flow named '{flow}' (flows: {', '.join(sorted(engine.flows))})")
    machine = compiled.machine
    # transitions writes the title verbatim between front-matter fences; Mermaid expects
    # the ``title:`` key there.
    source = _FlowGraph(machine, commands=commands).get_graph(title=f"title: {flow}").source
    # Mermaid's keyword is ``class``; transitions 0.9.3 writes ``Class``.
    lines = [re.sub(r"^(\s*)Class ", r"\1class ", line) for line in source.splitlines()]
    lines += [f"  {name} --> [*]" for name, s in compiled.states.items() if s.final]
    return "\n".join(lines) + "\n"
