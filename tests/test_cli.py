"""The ``bot`` command: check, graph, send and chat against the example flows."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from bot.chat import ChatSession, parse_duration
from bot.cli import main
from bot.commands import send
from bot.config import Config, load_config
from bot.log import configure_logging
from bot.store.sqlite import SQLiteStore
from bot.testing import FakeCloudAPI
from tests.store_access import commit, pending_outbox

ROOT = Path(__file__).resolve().parent.parent


def config_for(tmp_path: Path, flows: Path = ROOT / "flows", **env: str) -> Config:
    return load_config(
        None,
        environ={
            "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
            "BOT_FLOWS_DIR": str(flows),
            **env,
        },
    )


class TestCheck:
    def test_example_flows_are_clean(self, capsys: pytest.CaptureFixture[str]) -> None:
        """bot check on the shipped flows exits 0 with no error and no warning."""
        code = main(["--config", str(ROOT / "config.example.toml"), "check"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert out.splitlines()[-1].endswith("2 flow file(s), 0 error(s), 0 warning(s)"), out
        assert len(out.splitlines()) == 1, out

    def test_broken_flow_fails_with_file_and_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A typo in a flow makes bot check exit 1 naming the file, line and a suggestion."""
        flows = tmp_path / "flows"
        shutil.copytree(ROOT / "flows", flows)
        text = (flows / "welcome.yaml").read_text().replace("to: hours", "to: hour", 1)
        (flows / "welcome.yaml").write_text(text)
        line = text.splitlines().index("        to: hour") + 1
        monkeypatch.setenv("BOT_FLOWS_DIR", str(flows))
        assert main(["check"]) == 1
        out = capsys.readouterr().out
        assert f"welcome.yaml:{line}: error:" in out and "'hours'" in out

    def test_template_mismatch_is_reported(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A fallback whose parameter count differs from the template is an error at its line."""
        flows = tmp_path / "flows"
        shutil.copytree(ROOT / "flows", flows)
        text = (flows / "welcome.yaml").read_text()
        text = text.replace(
            'params: [user.profile_name or "there", const.hours]', "params: [const.hours]", 1
        )
        (flows / "welcome.yaml").write_text(text)
        monkeypatch.setenv("BOT_FLOWS_DIR", str(flows))
        assert main(["check"]) == 1
        out = capsys.readouterr().out
        assert "business_hours" in out and "2 parameter" in out

    @pytest.mark.parametrize("folder", ["flowz", "empty"])
    def test_missing_or_empty_folder_is_an_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], folder: str
    ) -> None:
        """bot check on a folder that is missing or holds no flow exits 1 saying so."""
        (tmp_path / "empty").mkdir()
        assert main(["check", str(tmp_path / folder)]) == 1
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and str(tmp_path / folder) in out

    def test_broken_template_file_is_one_root_cause_first(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """One MARKETING template used to give 8 errors, the cause 5th: now its finding comes
        first and alone names it (a warning: Meta may re-categorize a template, and only a
        flow that names it as a fallback is an error), and no line says 'error: warning:'."""
        from tests.example_templates import with_pending

        flows = tmp_path / "flows"
        shutil.copytree(ROOT / "flows", flows)
        with_pending(flows)
        path = flows / "templates.yaml"
        text = path.read_text().replace(
            "category: ALERT\n    status: PENDING", "category: MARKETING\n    status: PENDING"
        )
        path.write_text(text)
        assert main(["check", str(flows)]) == 0  # no flow uses spring_sale
        out = capsys.readouterr().out
        first = out.splitlines()[0]
        assert first.startswith(f"{path}:") and "MARKETING" in first and "never sends" in first
        assert "0 error(s)" in out and "error: warning:" not in out

    def test_missing_template_file_is_one_error(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without templates.yaml the seven fallbacks of the example give one error, not seven."""
        flows = tmp_path / "flows"
        shutil.copytree(ROOT / "flows", flows)
        (flows / "templates.yaml").unlink()
        assert main(["check", str(flows)]) == 1
        out = capsys.readouterr().out
        assert out.count("error:") == 1 and "has no templates.yaml" in out, out

    def test_pending_fallback_is_one_warning(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A fallback naming a PENDING template is warned about once (by the template file),
        never as 'error: warning: ...' at every fallback."""
        from tests.example_templates import with_pending

        flows = tmp_path / "flows"
        shutil.copytree(ROOT / "flows", flows)
        with_pending(flows)
        welcome = flows / "welcome.yaml"
        welcome.write_text(
            welcome.read_text().replace("template: business_hours", "template: spring_sale")
        )
        assert main(["check", str(flows)]) == 0
        out = capsys.readouterr().out
        assert "error" not in out.replace("0 error(s)", "") and "3 warning(s)" in out, out

    def test_bot_run_refuses_broken_flows(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """bot run prints the same report and exits non-zero instead of starting."""
        flows = tmp_path / "flows"
        shutil.copytree(ROOT / "flows", flows)
        (flows / "welcome.yaml").write_text("flow: welcome\ninitial: nowhere\nstates: {}\n")
        monkeypatch.setenv("BOT_FLOWS_DIR", str(flows))
        monkeypatch.setenv("BOT_STORE_URL", f"sqlite:///{tmp_path / 'bot.db'}")
        assert main(["run", "--port", "1"]) == 1
        err = capsys.readouterr().err
        assert "welcome.yaml" in err and "nowhere" in err and "Traceback" not in err

    def test_bad_config_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A bad config stops the command with exit 2 and one line naming the key."""
        bad = tmp_path / "bot.toml"
        bad.write_text("[server]\nport = 'x'\n")
        assert main(["--config", str(bad), "check"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "server.port" in err


class TestGraph:
    def test_prints_mermaid(self, capsys: pytest.CaptureFixture[str]) -> None:
        """bot graph booking prints a stateDiagram-v2 with the flow's states."""
        assert main(["--config", str(ROOT / "config.example.toml"), "graph", "booking"]) == 0
        out = capsys.readouterr().out
        assert "stateDiagram-v2" in out.splitlines()[:5]
        assert "ask_name" in out and "confirm" in out

    def test_writes_markdown(self, tmp_path: Path) -> None:
        """--output writes a Markdown file with a mermaid block."""
        target = tmp_path / "booking.md"
        cfg = str(ROOT / "config.example.toml")
        assert main(["--config", cfg, "graph", "booking", "--output", str(target)]) == 0
        text = target.read_text()
        assert text.startswith("# Flow `booking`") and "```mermaid\n" in text
        assert "stateDiagram-v2" in text and text.rstrip().endswith("```")

    def test_unknown_flow(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown flow name lists the flows there are."""
        assert main(["--config", str(ROOT / "config.example.toml"), "graph", "bookng"]) == 1
        assert "booking" in capsys.readouterr().err


class TestSend:
    async def test_template_send_goes_through_decision_and_outbox(self, tmp_path: Path) -> None:
        """bot send --template to a user who never wrote sends the approved template."""
        async with FakeCloudAPI(token="tok", phone_number_id="PN") as fake:
            cfg = config_for(
                tmp_path,
                WHATSAPP_TOKEN="tok",
                WHATSAPP_PHONE_NUMBER_ID="PN",
                WHATSAPP_API_URL=fake.url,
            )
            code = await send(
                cfg,
                "5215512345678",
                None,
                "appointment_update",
                ["Ana", "your dentist moved to Tue 10:00"],
                "",
            )
            assert code == 0
            (msg,) = fake.messages_to("5215512345678")
            assert msg.type == "template"
            assert msg.body["template"]["language"]["code"] == "es_MX"  # country code 52
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        assert await pending_outbox(store, "5215512345678") == []
        await store.close()

    async def test_text_outside_window_is_not_sent(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """bot send --text to a closed window exits 1 (nothing went out), saying why once."""
        configure_logging()  # as main() does: log lines go to stderr, the verdict to stdout
        async with FakeCloudAPI(token="tok", phone_number_id="PN") as fake:
            cfg = config_for(
                tmp_path,
                WHATSAPP_TOKEN="tok",
                WHATSAPP_PHONE_NUMBER_ID="PN",
                WHATSAPP_API_URL=fake.url,
            )
            assert await send(cfg, "15550001234", "hello", None, [], "") == 1
            assert fake.messages == []
        out = capsys.readouterr().out
        assert out.startswith("not sent: window closed") and out.count("not sent") == 1, out

    def test_recipient_that_is_not_a_number_is_refused(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """bot send not-a-number is one line, exit 1, and nothing is queued for it."""
        monkeypatch.setenv("BOT_STORE_URL", f"sqlite:///{tmp_path / 'bot.db'}")
        assert main(["send", "not-a-number", "--text", "hi"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "'not-a-number' is not a WhatsApp number" in err
        assert not (tmp_path / "bot.db").exists()

    async def test_wrong_parameter_count_is_worded_once(self, tmp_path: Path) -> None:
        """The parameter error names the template once, not 'template X: template X ...'."""
        from bot.errors import BotError

        with pytest.raises(BotError) as info:
            await send(config_for(tmp_path), "15550001234", None, "appointment_update", ["A"], "")
        assert str(info.value) == "template appointment_update takes 2 parameter(s), 1 given"

    async def test_unknown_template_is_refused_before_queuing(self, tmp_path: Path) -> None:
        """A template not in the registry is refused with a clear error; nothing is queued."""
        from bot.errors import BotError

        with pytest.raises(BotError, match="nosuch"):
            await send(config_for(tmp_path), "15550001234", None, "nosuch", [], "")


class TestChat:
    async def test_conversation_window_and_state(self, tmp_path: Path) -> None:
        """A scripted chat books a slot, shows state, and a late message gets a template reply."""
        out = io.StringIO()
        async with ChatSession(config_for(tmp_path), "15550009999", "Ana", out) as chat:
            lines = ["hi", "1", "Ana Souza", "1", "1", "/state", "/wait 25h", "/late 26h menu"]
            for line in lines:
                assert await chat.handle_line(line)
            assert not await chat.handle_line("/quit")
        text = out.getvalue()
        assert "Welcome to Lumen Dental" in text
        assert "What name should the appointment be under?" in text
        assert "1. Tomorrow 09:00" in text
        assert "state booked" in text and "'slot': 'Tomorrow 09:00'" in text
        assert "[template: window closed" in text and "business_hours" in text
        assert text.count("[session:") >= 5

    async def test_wait_sends_the_booking_reminder_at_its_time(self, tmp_path: Path) -> None:
        """/wait fires the booking's reminder at its time: its session text while the window
        is open then, its template once it has closed; rebooking replaces it; /jobs shows it."""
        out = io.StringIO()
        user = "15550009997"
        async with ChatSession(config_for(tmp_path), user, "Ana", out) as chat:
            for line in ["hi", "1", "Ana Souza", "1", "1"]:  # book Tomorrow 09:00
                await chat.handle_line(line)
            assert chat.jobs is not None
            [job] = await chat.jobs.store.find_jobs(user=user)
            assert (job.key, job.state, job.resume) == (
                "appointment",
                "scheduled",
                "booking.reminded",
            )
            await chat.handle_line(f"/wait {int(job.send_at - chat.clock()) - 3 * 3600}s")
            await chat.handle_line("hi")  # the user writes 3 h before: the window is open then
            start = len(out.getvalue())
            await chat.handle_line("/wait 4h")
            at_time = out.getvalue()[start:]
            shown = time.strftime("%H:%M UTC", time.gmtime(job.send_at))
            assert (
                f"(clock moved to {time.strftime('%a %d %b', time.gmtime(job.send_at))} {shown})"
                in at_time
            )
            assert "[session: window open" in at_time
            assert "Reminder: your appointment is at Tomorrow 09:00." in at_time
            await chat.handle_line("/jobs")
            assert "appointment: sent — sent as session" in out.getvalue()
            for line in ["book", "Ana Souza", "5", "1"]:  # book again: Day after 14:00
                await chat.handle_line(line)
            [again] = await chat.jobs.store.find_jobs(user=user, key="appointment")
            assert again.uid != job.uid and again.state == "scheduled"  # replaced
            start = len(out.getvalue())
            await chat.handle_line("/wait 4d")
            later = out.getvalue()[start:]
            assert "[template: window closed" in later and "appointment_reminder" in later
            [done] = await chat.jobs.store.find_jobs(user=user, key="appointment")
            assert done.state == "sent" and done.reason.startswith("sent as template")

    async def test_template_text_is_literal(self, tmp_path: Path) -> None:
        """A user typing Jinja gets it back literally, never evaluated."""
        out = io.StringIO()
        async with ChatSession(config_for(tmp_path), "15550009998", "Bo", out) as chat:
            await chat.handle_line("hello")
            await chat.handle_line("{{ 7*7 }}")
        bot_lines = [line for line in out.getvalue().splitlines() if line.startswith("bot")]
        assert any("{{ 7*7 }}" in line for line in bot_lines)
        assert not any("49" in line for line in bot_lines)

    def test_parse_duration(self) -> None:
        """Durations accept s/m/h/d and refuse anything else."""
        assert parse_duration("25h") == 90000 and parse_duration("30m") == 1800
        with pytest.raises(ValueError, match="25x"):
            parse_duration("25x")
        _ = time


class TestRun:
    def test_port_in_use_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """bot run on a port another program holds exits 1 with a one-line reason."""
        import socket

        monkeypatch.setenv("BOT_STORE_URL", f"sqlite:///{tmp_path / 'bot.db'}")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            assert main(["run", "--host", "127.0.0.1", "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert "cannot listen" in err and "Traceback" not in err

    def test_store_down_at_startup_is_one_line(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """bot run whose store cannot be opened exits 1 naming the store, no traceback."""
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        monkeypatch.setenv("BOT_STORE_URL", f"sqlite:///{blocker}/bot.db")
        assert main(["run", "--host", "127.0.0.1", "--port", "1"]) == 1
        err = capsys.readouterr().err
        assert str(blocker) in err and "Traceback" not in err and "cannot listen" not in err


class TestSendText:
    async def test_text_with_template_goes_as_session_inside_the_window(
        self, tmp_path: Path
    ) -> None:
        """--text with --template sends the text to a user who wrote recently."""
        from bot.models import UserRecord

        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        user = "15550004321"
        record = UserRecord(key=user, wa_id=user, last_inbound_at=int(time.time()) - 60)
        await commit(store, record, [], time.time())
        await store.close()
        async with FakeCloudAPI(token="tok", phone_number_id="PN") as fake:
            fake.user_wrote(user)
            cfg = config_for(
                tmp_path,
                WHATSAPP_TOKEN="tok",
                WHATSAPP_PHONE_NUMBER_ID="PN",
                WHATSAPP_API_URL=fake.url,
            )
            code = await send(
                cfg, user, "Your order shipped", "appointment_update", ["Ana", "shipped"], ""
            )
            assert code == 0
            [msg] = fake.messages_to(user)
            assert msg.type == "text" and msg.body["text"]["body"] == "Your order shipped"

    def test_send_needs_text_or_template(self, capsys: pytest.CaptureFixture[str]) -> None:
        """bot send without --text or --template is a usage error."""
        assert main(["send", "15550001"]) == 2
        assert "--text" in capsys.readouterr().err


class TestRunNeedsFlows:
    @pytest.mark.parametrize("folder", ["flowz", "empty"])
    def test_missing_or_empty_flows_folder_refuses_to_start(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        folder: str,
    ) -> None:
        """bot run with a missing or empty flows folder exits 1 in one line (it used to answer
        every webhook 200 and never reply)."""
        (tmp_path / "empty").mkdir()
        monkeypatch.setenv("BOT_FLOWS_DIR", str(tmp_path / folder))
        monkeypatch.setenv("BOT_STORE_URL", f"sqlite:///{tmp_path / 'bot.db'}")
        assert main(["run", "--host", "127.0.0.1", "--port", "1"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(tmp_path / folder) in err, err
        assert "--record-only" in err and "cannot listen" not in err
        assert not (tmp_path / "bot.db").exists()

    async def test_record_only_stores_without_flows(
        self, tmp_path: Path, aiohttp_client: Any
    ) -> None:
        """Record-only, asked for explicitly, starts without flows, records every message
        and answers none."""
        from bot.app import DISPATCHER
        from bot.runtime import build_app
        from tests.conftest import make_config, recorded, signed

        cfg = make_config(tmp_path, BOT_RECORD_ONLY="1")
        client = await aiohttp_client(build_app(cfg))
        raw, headers = signed(recorded("text.json"))
        assert (await client.post("/webhook", data=raw, headers=headers)).status == 200
        await client.app[DISPATCHER].idle()
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        assert await store.inbox_counts() == {"pending": 0, "done": 1, "failed": 0}
        assert await store.outbox_of("5511999990000") == []  # recorded, never answered
        await store.close()


class TestHelp:
    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """bot --version prints the distribution's version and exits 0."""
        with pytest.raises(SystemExit) as info:
            main(["--version"])
        assert info.value.code == 0
        assert capsys.readouterr().out.startswith("windowbot ")

    def test_help_lists_every_command_in_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """bot --help names each command with a one-line description."""
        with pytest.raises(SystemExit):
            main(["--help"])
        out = capsys.readouterr().out.splitlines()
        for command in ("run", "check", "graph", "chat", "send"):
            [line] = [x for x in out if x.split()[:1] == [command]]
            assert len(line.split()) > 2, line
