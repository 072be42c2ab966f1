"""Properties of the welcome flow over arbitrary input."""

from __future__ import annotations

import asyncio
import dataclasses
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.engine import Engine
from tests.engine.helpers import FLOWS, NOW, text, user


@cache
def engine() -> Engine:
    return Engine.load(FLOWS)


class TestWelcomeAlwaysAnswers:
    @settings(max_examples=300, deadline=None)
    @given(
        body=st.text(max_size=300), state=st.sampled_from(["", "menu", "hours", "help", "stopped"])
    )
    def test_any_text_gets_a_reply(self, body: str, state: str) -> None:
        """Whatever a user types, in any welcome state, handling never raises and replies."""
        record = dataclasses.replace(user(), flow="welcome" if state else "", state=state)
        turn = asyncio.run(engine().handle(record, text(body), NOW))
        assert len(turn.outgoing) >= 1
        assert all(reply.message for reply in turn.outgoing)
        assert turn.record.flow in engine().flows
