"""``mermaid``: a flow's diagram, drawn by transitions' Mermaid backend."""

from __future__ import annotations

import pytest

from bot.engine import Engine, mermaid
from bot.errors import FlowError
from tests.engine.helpers import FLOWS


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(FLOWS)


class TestMermaid:
    def test_booking_diagram(self, engine: Engine) -> None:
        """States, labelled edges with conditions, the initial and final markers, flow exits."""
        source = mermaid(engine, "booking")
        assert source.startswith("---\ntitle: booking\n---\nstateDiagram-v2\n")
        lines = [line.strip() for line in source.splitlines()]
        for expected in (
            'state "pick_slot" as pick_slot',
            "pick_slot --> confirm: reply * [slot_available]",
            "confirm --> booked: reply yes / text yes, confirm, ok",
            'state "welcome.menu" as welcome__menu',
            "confirm --> welcome__menu: reply cancel / text no, cancel",
            "[*] --> ask_name",
            "booked --> [*]",
        ):
            assert expected in lines
        assert not any(line.startswith("Class ") for line in lines)

    def test_commands_are_optional(self, engine: Engine) -> None:
        """Command edges (one per state) appear only when asked for."""
        assert "command" not in mermaid(engine, "welcome")
        with_commands = mermaid(engine, "welcome", commands=True)
        assert "hours --> stopped: command text stop, unsubscribe" in with_commands

    def test_unknown_flow(self, engine: Engine) -> None:
        """Asking for a flow that does not exist names the ones that do."""
        with pytest.raises(FlowError, match="booking, welcome"):
            mermaid(engine, "nope")
