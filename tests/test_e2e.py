"""End to end: signed webhooks into a real ``bot run`` process, replies at the fake Cloud API.

The example flows in ``flows/`` run unchanged; the bot's WHATSAPP_API_URL points at a
:class:`~bot.testing.FakeCloudAPI` in the test process, which enforces the 24 h rule itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest

from bot.templates import TemplateRegistry
from bot.testing import FakeCloudAPI, button_reply, list_reply, signed_request, text_message
from tests.conftest import SECRET
from tests.server import ROOT, BotProcess, log_events

pytestmark = pytest.mark.slow

TOKEN = "e2e-token"
PNID = "123456789012345"


class Bot:
    """A running bot and the fake Cloud API it talks to."""

    def __init__(self, process: BotProcess, fake: FakeCloudAPI) -> None:
        self.process, self.fake = process, fake

    async def post(self, body: dict[str, Any]) -> None:
        raw, headers = signed_request(body, SECRET)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.process.url}/webhook", data=raw, headers=headers) as resp,
        ):
            assert resp.status == 200, await resp.text()

    async def replies(self, wa_id: str, count: int) -> list[dict[str, Any]]:
        """Wait until ``wa_id`` has received ``count`` messages; their request bodies."""
        await self.fake.wait_for(wa_id, count, within=15)
        await asyncio.sleep(0.3)  # nothing more should arrive
        return [m.body for m in self.fake.messages_to(wa_id)]


@pytest.fixture
async def bot(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Bot]:
    window_errors: Literal["sync", "async"] = getattr(request, "param", "sync")
    process = BotProcess(
        {
            "WHATSAPP_APP_SECRET": SECRET,
            "WHATSAPP_TOKEN": TOKEN,
            "WHATSAPP_VERIFY_TOKEN": "verify-me",
            "WHATSAPP_PHONE_NUMBER_ID": PNID,
            "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
            "BOT_FLOWS_DIR": str(ROOT / "flows"),
        },
        tmp_path / "bot.log",
    )
    registry = TemplateRegistry.load(ROOT / "flows" / "templates.yaml")
    async with FakeCloudAPI(
        token=TOKEN,
        phone_number_id=PNID,
        registry=registry,
        window_errors=window_errors,
        webhook_url=f"{process.url}/webhook",
        app_secret=SECRET,
    ) as fake:
        process.env["WHATSAPP_API_URL"] = fake.url
        async with process:
            yield Bot(process, fake)
        log = (tmp_path / "bot.log").read_text()
        assert "Traceback" not in log, log[-3000:]
        assert TOKEN not in log and SECRET not in log  # secrets never reach the logs
        assert any(e["event"] == "reply_sent" and e.get("wa_id") for e in log_events(log))


def text_of(body: dict[str, Any]) -> str:
    kind = body["type"]
    if kind == "text":
        return str(body["text"]["body"])
    if kind == "interactive":
        return str(body["interactive"]["body"]["text"])
    return str(body[kind])


async def test_booking_flow_as_session_messages(bot: Bot) -> None:
    """Greeting, menu button, name, list pick and confirmation all go out as session messages."""
    user, now = "15551230001", time.time()
    bot.fake.user_wrote(user, now)
    await bot.post(text_message(user, "hi", name="Ana", timestamp=now))
    (greeting,) = await bot.replies(user, 1)
    assert greeting["type"] == "interactive" and "Welcome" in text_of(greeting)
    titles = [b["reply"]["title"] for b in greeting["interactive"]["action"]["buttons"]]
    assert titles == ["Book", "Hours", "Help"]
    await bot.post(button_reply(user, "book", "Book", name="Ana", timestamp=now + 1))
    await bot.post(text_message(user, "Ana Souza", name="Ana", timestamp=now + 2))
    replies = await bot.replies(user, 3)
    assert "What name" in text_of(replies[1])
    assert replies[2]["interactive"]["type"] == "list" and "Ana Souza" in text_of(replies[2])
    await bot.post(list_reply(user, "d1_1100", "Tomorrow 11:00", name="Ana", timestamp=now + 3))
    await bot.post(button_reply(user, "yes", "Confirm", name="Ana", timestamp=now + 4))
    replies = await bot.replies(user, 5)
    assert "Tomorrow 11:00" in text_of(replies[3])
    assert "booked" in text_of(replies[4])
    assert all(r["type"] != "template" for r in replies)


async def test_late_message_gets_template_fallback_in_users_language(bot: Bot) -> None:
    """A message that arrives 25 h after it was written is answered by its template fallback."""
    user, written = "5511999990000", time.time() - 25 * 3600
    bot.fake.user_wrote(user, written)
    await bot.post(text_message(user, "hi", name="Bia", timestamp=written))
    (reply,) = await bot.replies(user, 1)
    assert reply["type"] == "template"
    template = reply["template"]
    assert (template["name"], template["language"]["code"]) == ("business_hours", "pt_BR")
    params = [p["text"] for p in template["components"][0]["parameters"]]
    assert params[0] == "Bia" and "9:00" in params[1]


async def test_131047_from_the_api_sends_the_fallback_once(bot: Bot) -> None:
    """The fake refuses the session message with 131047; the bot sends the fallback once."""
    user, now = "15551230002", time.time()
    bot.fake.user_wrote(user, now - 30 * 3600)  # Meta's view: the window closed long ago
    await bot.post(text_message(user, "hi", name="Cy", timestamp=now))
    replies = await bot.replies(user, 1)
    assert [r["type"] for r in replies] == ["template"]
    assert replies[0]["template"]["name"] == "business_hours"


@pytest.mark.parametrize("bot", ["async"], indirect=True)
async def test_131047_as_failed_status_sends_the_fallback_once(bot: Bot) -> None:
    """Accepted, then a signed 'failed' status with 131047: the fallback goes out once."""
    user, now = "15551230003", time.time()
    bot.fake.user_wrote(user, now - 30 * 3600)
    await bot.post(text_message(user, "hi", name="Di", timestamp=now))
    replies = await bot.replies(user, 2)
    assert [r["type"] for r in replies] == ["interactive", "template"]
    assert bot.fake.messages_to(user)[0].error_code == 131047


async def test_booking_replayed_after_downtime_goes_out_as_templates(bot: Bot) -> None:
    """A whole booking written 30 h ago and delivered late is answered by its fallbacks."""
    user, t = "5215512340000", time.time() - 30 * 3600
    bot.fake.user_wrote(user, t + 5)
    conversation = [
        text_message(user, "hi", name="Eva", timestamp=t),
        button_reply(user, "book", "Book", name="Eva", timestamp=t + 1),
        text_message(user, "Eva Lima", name="Eva", timestamp=t + 2),
        list_reply(user, "d1_1100", "Tomorrow 11:00", name="Eva", timestamp=t + 3),
        button_reply(user, "yes", "Confirm", name="Eva", timestamp=t + 4),
    ]
    for body in conversation:
        await bot.post(body)
    replies = await bot.replies(user, 5)
    assert [r["type"] for r in replies] == ["template"] * 5
    names = [r["template"]["name"] for r in replies]
    assert names == [
        "business_hours",
        "appointment_update",
        "appointment_update",
        "appointment_update",
        "appointment_confirmation",
    ]
    assert {r["template"]["language"]["code"] for r in replies} == {"es_MX"}
    confirmation = replies[4]["template"]["components"][0]["parameters"]
    assert {p["parameter_name"]: p["text"] for p in confirmation} == {
        "name": "Eva Lima",
        "slot": "Tomorrow 11:00",
    }


@pytest.mark.parametrize(("choice", "loop"), [("auto", "uvloop"), ("asyncio", "asyncio")])
async def test_bot_run_serves_on_the_configured_event_loop(
    tmp_path: Path, choice: str, loop: str
) -> None:
    """``bot run`` serves on uvloop by default (it is installed here), on asyncio's loop when
    BOT_EVENT_LOOP says so, and says which in its ``listening`` line."""
    env = {
        "WHATSAPP_APP_SECRET": SECRET,
        "BOT_STORE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
        "BOT_RECORD_ONLY": "1",
        "BOT_EVENT_LOOP": choice,
    }
    async with BotProcess(env, tmp_path / "bot.log") as process:
        raw, headers = signed_request(text_message("15550001111", "hi"), SECRET)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{process.url}/webhook", data=raw, headers=headers) as resp,
        ):
            assert resp.status == 200, await resp.text()
    lines = [json.loads(line) for line in (tmp_path / "bot.log").read_text().splitlines()]
    listening = [line for line in lines if line.get("event") == "listening"]
    assert [line["event_loop"] for line in listening] == [loop]
