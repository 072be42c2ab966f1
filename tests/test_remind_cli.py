"""``bot remind add|list|cancel`` and campaigns from a CSV, against the example flows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.cli import main
from bot.models import UserRecord
from bot.store.sqlite import SQLiteStore
from tests.store_access import commit

ROOT = Path(__file__).resolve().parent.parent
ANA = "5511999990000"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example flows on a SQLite file of this test (sandbox: nothing reaches Meta)."""
    monkeypatch.setenv("BOT_STORE_URL", f"sqlite:///{tmp_path / 'bot.db'}")
    monkeypatch.setenv("BOT_FLOWS_DIR", str(ROOT / "flows"))
    monkeypatch.delenv("WHATSAPP_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "bot.db"


def remind(*args: str) -> int:
    """Run ``bot remind ARGS``."""
    return main(["remind", *args])


TEMPLATE = ["--template", "appointment_update", "--param", "Ana", "--param", "tomorrow 10:00"]


class TestAddListCancel:
    def test_add_then_list_then_cancel(self, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A job added by key is listed with its state and reason, and cancelled by key."""
        at = "2030-01-02T10:00:00-03:00 - 1h"
        assert remind("add", ANA, "--at", at, *TEMPLATE, "--key", "appt:1") == 0
        assert f"scheduled {ANA}|appt:1 for 2030-01-02T12:00:00Z" in capsys.readouterr().out
        assert remind("list", "--user", ANA) == 0
        listed = capsys.readouterr().out
        assert "2030-01-02T12:00:00Z" in listed and "appt:1" in listed and "scheduled" in listed
        assert remind("cancel", "appt:1") == 0
        assert "cancelled 1 scheduled job(s)" in capsys.readouterr().out
        assert remind("list", "--state", "cancelled") == 0
        assert "appt:1" in capsys.readouterr().out

    def test_same_key_twice_is_one_job(self, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """Adding a key again replaces the job: the list shows the later one only."""
        for at in ("2030-01-02T09:00:00Z", "2030-01-03T09:00:00Z"):
            assert remind("add", ANA, "--at", at, *TEMPLATE, "--key", "appt:1") == 0
        capsys.readouterr()
        assert remind("list", "--key", "appt:1") == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1 and lines[0].startswith("2030-01-03T09:00:00Z")

    @pytest.mark.parametrize(
        "when",
        [
            ["--at", "every day at 09:00"],
            ["--at", "0 9 * * *"],
            ["--at", "in 1h", "--every", "day"],
        ],
    )
    def test_recurring_is_refused_with_the_reason(
        self, env: Path, capsys: pytest.CaptureFixture[str], when: list[str]
    ) -> None:
        """A recurring schedule is refused, saying why; nothing is scheduled."""
        assert remind("add", ANA, *when, *TEMPLATE) == 1
        assert "recurring content and subscription messaging" in capsys.readouterr().err
        assert remind("list") == 0
        assert capsys.readouterr().out == "no jobs match\n"

    def test_bad_input_is_one_line(self, env: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown template or a bad time is a clear error, not a traceback."""
        assert remind("add", ANA, "--at", "soonish", *TEMPLATE) == 1
        assert "is not a time" in capsys.readouterr().err
        assert remind("add", ANA, "--at", "in 1h", "--template", "nosuch") == 1
        assert "template nosuch" in capsys.readouterr().err


class TestCampaign:
    def test_one_job_per_row_and_a_report_of_the_rest(
        self, env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Known users get one job each under the key prefix; the rest are reported, why."""
        known = ["5511999990001", "5511999990002", "5511999990003"]

        async def users() -> None:
            store = SQLiteStore(env)
            await store.open()
            for n, user in enumerate(known):
                await commit(store, UserRecord(key=user, wa_id=user, opted_out=n == 2))
            await store.close()

        asyncio.run(users())
        rows = [
            "user,1,2",
            f"{known[0]},Ana,Tue 10:00",
            f"{known[1]},Bia,Wed 11:00",
            f"{known[2]},Cid,Thu 09:00",  # opted out
            f"{known[1]},Bia,Wed 11:00",  # twice
            "5511999990999,Dan,Fri 09:00",  # never wrote
            "12ab,Eve,Mon 09:00",
        ]
        csv = tmp_path / "users.csv"
        csv.write_text("\n".join(rows) + "\n")
        args = ["--users", str(csv), "--at", "2030-01-02T09:00:00Z", "--key", "dec-visits:"]
        assert remind("add", *args, "--template", "appointment_update") == 0
        out = capsys.readouterr().out
        assert f"{csv}: 2 scheduled, 4 skipped" in out
        for reason in ("opted out", "duplicate row", "unknown user", "invalid number"):
            assert f"skipped 1: {reason}" in out
        assert remind("list", "--state", "scheduled") == 0
        listed = capsys.readouterr().out
        assert f"dec-visits:{known[0]}" in listed and f"dec-visits:{known[1]}" in listed
        assert remind("cancel", "dec-visits:", "--prefix") == 0
        assert "cancelled 2" in capsys.readouterr().out
