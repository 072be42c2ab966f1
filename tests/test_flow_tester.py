"""FlowTester: the example flows turn by turn, in-process, on a fake clock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.errors import FlowError
from bot.testing import FlowTester
from tests.server import ROOT

FLOWS = ROOT / "flows"


class TestFlowTester:
    async def test_booking_turn_by_turn(self) -> None:
        """Greeting, menu tap, name, slot pick and confirmation, with state and vars kept."""
        bot = FlowTester.load(FLOWS, name="Ana")
        first = await bot.send("hi")
        assert first.trigger == "start" and "Welcome" in first.texts[0]
        assert first.choices == ["Book", "Hours", "Help"]
        await bot.tap("book")
        answer = await bot.send("Ana Souza")
        assert "Ana Souza" in answer.texts[-1] and bot.vars["name"] == "Ana Souza"
        await bot.pick("d1_1100", "Tomorrow 11:00")
        done = await bot.tap("yes")
        assert any("booked" in t for t in done.texts) and bot.state.startswith("booking.")

    async def test_the_fake_clock_brings_reminders_due_and_closes_the_window(self) -> None:
        """advance() returns the reminder a hook scheduled once its time comes, not before."""
        bot = FlowTester.load(FLOWS)
        for step in (bot.send("hi"), bot.tap("book"), bot.send("Ana")):
            await step
        await bot.pick("d1_1100")
        await bot.tap("yes")
        [reminder] = bot.pending
        assert bot.advance(seconds=reminder.at - bot.now - 1) == []
        assert bot.window_open
        assert bot.advance(seconds=1) == [reminder]
        assert reminder.outgoing is not None and reminder.outgoing.fallback is not None
        assert reminder.outgoing.fallback.name == "appointment_reminder"
        bot.advance(hours=25)
        assert not bot.window_open

    def test_a_folder_with_errors_is_refused_with_the_findings(self, tmp_path: Path) -> None:
        """Loading a folder whose flow has an error raises FlowError naming file and line."""
        folder = tmp_path
        (folder / "welcome.yaml").write_text("flow: welcome\ninitial: nowhere\nstates: {a: {}}\n")
        with pytest.raises(FlowError, match=r"welcome\.yaml:2"):
            FlowTester.load(folder)


class TestPackage:
    def test_import_bot_does_not_load_the_web_server(self) -> None:
        """``import bot`` leaves aiohttp.web (and the app module) out of sys.modules."""
        code = "import sys, bot; print([m for m in ('aiohttp.web', 'bot.app') if m in sys.modules])"
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
        )
        assert out.stdout.strip() == "[]"

    def test_everything_a_hook_or_test_author_needs_is_exported(self) -> None:
        """The builders, HookContext and the tester are in the packages' __all__."""
        import bot
        import bot.testing

        assert {"HookContext", "text", "buttons", "list_", "image", "template"} <= set(bot.__all__)
        assert {"FlowTester", "FakeCloudAPI", "text_message"} <= set(bot.testing.__all__)
        assert all(hasattr(bot, name) for name in bot.__all__)
