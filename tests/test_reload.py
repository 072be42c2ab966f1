"""``bot run --reload``: a real process picks up flow and hook edits; bad edits keep the old."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from bot.config import load_config
from bot.reload import EngineRef, reload_once
from bot.runtime import load_engine
from bot.templates import TemplateRegistry
from bot.testing import FakeCloudAPI, signed_request, text_message
from tests.conftest import SECRET
from tests.server import BotProcess, log_events

pytestmark = pytest.mark.slow

TOKEN, PNID, USER = "reload-token", "123456789012345", "15557770001"

FLOW = """\
flow: welcome
initial: start
states:
  start:
    say: "hello"
    on:
      - text: bye
        to: done
      - else:
        do: [answer]
        say: "flow one {{ message.text }}"
  done:
    final: true
"""
HOOKS = "from bot import text\n\n\ndef answer(ctx):\n    return text('hook one')\n"


def replace_file(path: Path, content: str) -> None:
    """Write ``content`` atomically, as editors do, so the watcher never sees half a file."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


async def log_count(log: Path, event: str, at_least: int, within: float = 30.0) -> str:
    """Wait until ``event`` appears ``at_least`` times in the process log; the log."""
    deadline = time.monotonic() + within
    while True:
        text = await asyncio.to_thread(log.read_text)
        if sum(e["event"] == event for e in log_events(text)) >= at_least:
            return text
        assert time.monotonic() < deadline, f"no {event} x{at_least}:\n{text[-3000:]}"
        await asyncio.sleep(0.05)


class TestReload:
    async def test_edits_are_picked_up_and_errors_keep_the_previous_flows(
        self, tmp_path: Path
    ) -> None:
        """Flow edit, hook edit: new replies, user's state kept; broken edit: findings, old."""
        flows = tmp_path / "flows"
        flows.mkdir()
        (flows / "welcome.yaml").write_text(FLOW)
        (flows / "hooks.py").write_text(HOOKS)
        log = tmp_path / "bot.log"
        process = BotProcess(
            {
                "WHATSAPP_APP_SECRET": SECRET,
                "WHATSAPP_TOKEN": TOKEN,
                "WHATSAPP_PHONE_NUMBER_ID": PNID,
                "WHATSAPP_VERIFY_TOKEN": "reload-verify",
                "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
                "BOT_FLOWS_DIR": str(flows),
            },
            log,
            args=("--reload",),
        )
        async with FakeCloudAPI(token=TOKEN, phone_number_id=PNID) as fake:
            process.env["WHATSAPP_API_URL"] = fake.url
            fake.user_wrote(USER)
            async with process, aiohttp.ClientSession() as session:
                sent = 0

                async def say(text: str, replies: int) -> list[str]:
                    nonlocal sent
                    raw, headers = signed_request(text_message(USER, text), SECRET)
                    async with session.post(
                        f"{process.url}/webhook", data=raw, headers=headers
                    ) as resp:
                        assert resp.status == 200
                    sent += replies
                    await fake.wait_for(USER, sent, within=20)
                    bodies = [m.body["text"]["body"] for m in fake.messages_to(USER)]
                    return bodies[sent - replies :]

                await log_count(log, "reload_watching", 1)
                assert await say("a", 1) == ["hello"]
                assert await say("b", 2) == ["flow one b", "hook one"]

                replace_file(flows / "welcome.yaml", FLOW.replace("flow one", "flow two"))
                await log_count(log, "flows_reloaded", 1)
                assert await say("c", 2) == ["flow two c", "hook one"]

                replace_file(flows / "hooks.py", HOOKS.replace("hook one", "hook two"))
                await log_count(log, "flows_reloaded", 2)
                assert await say("d", 2) == ["flow two d", "hook two"]  # no "hello": state kept

                broken = FLOW.replace("flow one", "flow three").replace(
                    "do: [answer]", "do: [answer]\n        to: nowhere"
                )
                replace_file(flows / "welcome.yaml", broken)
                text = await log_count(log, "flows_reload_failed", 1)
                assert "welcome.yaml:11" in text and "nowhere" in text
                assert await say("e", 2) == ["flow two e", "hook two"]
        assert "Traceback" not in log.read_text()


TEMPLATES = """\
templates:
  follow_up:
    category: ACCOUNT_UPDATE
    status: APPROVED
    languages:
      en_US: {body: "Hi {{1}}, we have news."}
"""


class TestReloadOnce:
    async def test_a_clean_edit_swaps_engine_and_registry_a_bad_one_swaps_nothing(
        self, tmp_path: Path
    ) -> None:
        """reload_once swaps both and tells the listeners; with errors it keeps both."""
        flows = tmp_path / "flows"
        flows.mkdir()
        (flows / "welcome.yaml").write_text(FLOW)
        (flows / "hooks.py").write_text(HOOKS)
        (flows / "templates.yaml").write_text(TEMPLATES)
        config = load_config(environ={"BOT_FLOWS_DIR": str(flows)})
        engine, registry = load_engine(config)
        assert engine is not None and registry is not None
        ref = EngineRef(engine, registry)
        told: list[TemplateRegistry | None] = []
        ref.on_swap.append(told.append)
        (flows / "templates.yaml").write_text(TEMPLATES.replace("follow_up", "follow_up_two"))
        assert await reload_once(ref, config, load_engine)
        assert ref.engine is not engine and ref.registry is not None
        assert sorted(ref.registry.templates) == ["follow_up_two"] and told == [ref.registry]
        current = ref.engine
        (flows / "templates.yaml").write_text(TEMPLATES.replace("ACCOUNT_UPDATE", "NOPE"))
        assert not await reload_once(ref, config, load_engine)
        assert ref.engine is current and sorted(ref.registry.templates) == ["follow_up_two"]
        assert len(told) == 1
