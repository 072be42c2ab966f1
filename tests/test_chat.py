"""``bot chat`` (bot.chat): a throwaway store, a fake clock that stays in the chat, the terminal."""

from __future__ import annotations

import io
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from bot.chat import ChatSession
from bot.config import Config, load_config
from bot.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


def config_for(tmp_path: Path) -> Config:
    return load_config(
        None,
        environ={
            "BOT_STORE_URL": f"sqlite:///{tmp_path / 'real.db'}",
            "BOT_FLOWS_DIR": str(ROOT / "flows"),
        },
    )


def chat_process(tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOT_", "WHATSAPP_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        BOT_FLOWS_DIR=str(ROOT / "flows"),
        BOT_STORE_URL=f"sqlite:///{tmp_path / 'real.db'}",
        BOT_LOG_FORMAT="json",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "chat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
    )


def read_until(proc: subprocess.Popen[bytes], marker: bytes) -> bytes:
    assert proc.stdout is not None
    seen = b""
    while marker not in seen:
        chunk = os.read(proc.stdout.fileno(), 4096)
        assert chunk, f"chat ended before {marker!r}: {seen!r}"
        seen += chunk
    return seen


def wait_reading_stdin(proc: subprocess.Popen[bytes]) -> None:
    """Until the chat's main thread is blocked in read(0, ...): a Ctrl-C sent between the
    prompt and the read would be a race no human at a terminal can hit."""
    deadline = time.monotonic() + 60
    syscall = Path(f"/proc/{proc.pid}/syscall")
    read = {"x86_64": "0", "aarch64": "63"}.get(platform.machine())
    if read is None:
        pytest.skip(f"no read(2) syscall number known for {platform.machine()}")
    while not syscall.read_text().startswith(f"{read} 0x0 "):  # read(), on fd 0
        assert time.monotonic() < deadline, syscall.read_text()
        time.sleep(0.01)


class TestThrowawayStore:
    async def test_chat_never_touches_the_configured_store(self, tmp_path: Path) -> None:
        """A chat with /wait leaves the configured store alone (it used to get the fake clock)."""
        out = io.StringIO()
        async with ChatSession(config_for(tmp_path), "15550009999", "Ana", out) as chat:
            for line in ["hi", "/wait 5d", "menu"]:
                await chat.handle_line(line)
            scratch = Path(str(chat.store.description).removeprefix("sqlite:///"))
        assert "Welcome to Lumen Dental" in out.getvalue()
        assert not (tmp_path / "real.db").exists()
        assert scratch.name == "chat.db" and not scratch.parent.exists()  # deleted at the end

    async def test_wait_is_refused_in_a_real_store(self, tmp_path: Path) -> None:
        """With --store the clock cannot move, so no fake time is written into a real store."""
        out = io.StringIO()
        url = f"sqlite:///{tmp_path / 'real.db'}"
        async with ChatSession(config_for(tmp_path), "1555", "Ana", out, store_url=url) as chat:
            await chat.handle_line("hi")
            await chat.handle_line("/wait 5d")
            await chat.handle_line("menu")
        assert "/wait is off" in out.getvalue()
        store = SQLiteStore(tmp_path / "real.db")
        await store.open()
        record = await store.get_user("1555")
        await store.close()
        assert record is not None and record.last_inbound_at <= time.time()


class TestSession:
    async def test_a_reply_not_sent_says_so_once(self, tmp_path: Path) -> None:
        """A skipped reply prints its reason once, not 'not sent: not sent: ...'."""
        out = io.StringIO()
        async with ChatSession(config_for(tmp_path), "15550009999", "Ana", out) as chat:
            await chat.handle_line("hi")
            await chat.handle_line("/wait 25h")
            await chat.handle_line("/late 26h what")  # "Sorry, I didn't..." has no fallback
        skipped = [line for line in out.getvalue().splitlines() if "not sent" in line]
        assert skipped and all(line.count("not sent") == 1 for line in skipped), skipped

    async def test_state_after_reset_is_a_new_user(self, tmp_path: Path) -> None:
        """/state after /reset says the user is new instead of 'flow , state ,'."""
        out = io.StringIO()
        async with ChatSession(config_for(tmp_path), "15550009999", "Ana", out) as chat:
            for line in ["hi", "/reset", "/state"]:
                await chat.handle_line(line)
        text = out.getvalue()
        assert "flow , state" not in text and "new user" in text.splitlines()[-1]

    async def test_buttons_can_be_picked_after_a_restart(self, tmp_path: Path) -> None:
        """In a real store, the last message's buttons are pickable when the chat starts again."""
        url = f"sqlite:///{tmp_path / 'real.db'}"
        cfg, first, second = config_for(tmp_path), io.StringIO(), io.StringIO()
        async with ChatSession(cfg, "1555", "Ana", first, store_url=url) as chat:
            await chat.handle_line("hi")
        async with ChatSession(cfg, "1555", "Ana", second, store_url=url) as chat:
            await chat.handle_line("2")
        assert "1. Book" in first.getvalue()
        assert "→ [Hours]" in second.getvalue() and "We're open" in second.getvalue()


class TestTerminal:
    def test_ctrl_c_exits_at_once(self, tmp_path: Path) -> None:
        """Ctrl-C at the prompt ends bot chat (it used to hang until Enter was pressed)."""
        proc = chat_process(tmp_path)
        try:
            read_until(proc, b"you: ")
            wait_reading_stdin(proc)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)  # a guard against the old hang, not a speed bar
        finally:
            proc.kill()
            proc.communicate()
        assert code == 130

    def test_log_lines_carry_the_chat_clock(self, tmp_path: Path) -> None:
        """A warning logged after /wait 3d is stamped 3 days ahead, like the conversation."""
        proc = chat_process(tmp_path)
        _, err = proc.communicate(b"hi\n/wait 3d\n/late 80h what\n", timeout=120)
        assert proc.returncode == 0, err
        lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        [skipped] = [e for e in lines if e["event"] == "reply_not_sent"]
        stamped = datetime.fromisoformat(skipped["timestamp"]).timestamp()
        assert stamped > time.time() + 2 * 86400, skipped
        assert not (tmp_path / "real.db").exists() and not (tmp_path / "windowbot.db").exists()
