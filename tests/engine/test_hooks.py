"""Hooks: the context they receive and how their module is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.engine import HookContext, Reminder
from bot.engine.hooks import HooksLoadError, load_module, resolve
from bot.models import TemplateCall
from tests.engine.helpers import NOW, text, user, write


def context() -> HookContext:
    return HookContext(
        user=user(), message=text("x"), vars={}, const={}, now=NOW, flow="f", state="s"
    )


class TestSchedule:
    def test_needs_exactly_one_time(self) -> None:
        """``schedule`` refuses both or neither of ``at``/``delay``."""
        ctx = context()
        with pytest.raises(ValueError, match="exactly one"):
            ctx.schedule("x")
        with pytest.raises(ValueError, match="exactly one"):
            ctx.schedule("x", at=1.0, delay=1.0)
        assert ctx.reminders == []

    def test_records_reminders_in_order(self) -> None:
        """Strings become texts, template calls stay templates; notes default to the state."""
        ctx = context()
        first = ctx.schedule("hi", delay=5)
        second = ctx.schedule(TemplateCall("t"), at=NOW + 9, note="n")
        assert ctx.reminders == [first, second]
        assert first == Reminder(at=NOW + 5, outgoing=first.outgoing, note="f.s:reminder")
        assert second == Reminder(at=NOW + 9, template=TemplateCall("t"), note="n")


class TestLoading:
    def test_modules_are_loaded_by_path_and_kept_apart(self, tmp_path: Path) -> None:
        """Two folders' hooks.py never share state, and neither needs to be on sys.path."""
        a = write(tmp_path / "a", {"hooks.py": "VALUE = 'a'\ndef hook(ctx):\n    return VALUE\n"})
        b = write(tmp_path / "b", {"hooks.py": "VALUE = 'b'\ndef hook(ctx):\n    return VALUE\n"})
        mod_a, mod_b = load_module(a / "hooks.py"), load_module(b / "hooks.py")
        hook_a, hook_b = resolve(mod_a, "hook"), resolve(mod_b, "hook")
        assert hook_a is not None and hook_b is not None
        assert (hook_a(context()), hook_b(context())) == ("a", "b")

    def test_private_names_and_classes_are_not_hooks(self, tmp_path: Path) -> None:
        """Only public functions resolve."""
        folder = write(tmp_path, {"hooks.py": "def _p(ctx): pass\nclass C: pass\nX = 1\n"})
        module = load_module(folder / "hooks.py")
        assert [resolve(module, n) for n in ("_p", "C", "X", "missing")] == [None] * 4

    def test_import_error_points_at_the_line(self, tmp_path: Path) -> None:
        """An exception while importing names the hooks file's line."""
        folder = write(tmp_path, {"hooks.py": "import os\n\nraise RuntimeError('boom')\n"})
        with pytest.raises(HooksLoadError, match="boom") as info:
            load_module(folder / "hooks.py")
        assert info.value.line == 3
