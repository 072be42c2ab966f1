"""The sandbox through the console's API: webhooks in, the fake Cloud API out, per-user clocks,
reminder jobs, reset."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.app import DISPATCHER, Components
from bot.console import sandbox as sandbox_module
from bot.runtime import load_engine, make_transport, window_policy
from bot.store.sqlite import SQLiteStore
from bot.testing import FakeCloudAPI
from bot.whatsapp import CloudAPI
from tests.conftest import AppClient, MakeClient, make_config
from tests.server import ROOT

ANA, BIA = "5511999990000", "15551230001"


@dataclass
class Sandbox:
    """The app in sandbox mode with the console's fake Cloud API, and a logged-in browser."""

    client: AppClient
    csrf: str

    async def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = await self.client.post(
            f"/console/api{path}", json=body or {}, headers={"X-CSRF-Token": self.csrf}
        )
        assert resp.status == 200, await resp.text()
        await self.client.app[DISPATCHER].idle()
        return await resp.json()

    async def say(self, user: str, **message: Any) -> None:
        """The user sends something (text by default) and the bot handles it."""
        await self.post(f"/sandbox/{user}/message", {"name": "Ana", **message})

    async def page(self, user: str) -> Any:
        resp = await self.client.get(f"/console/api/users/{user}")
        assert resp.status == 200
        return await resp.json()


@pytest.fixture
async def sandbox(
    make_client: MakeClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Sandbox]:
    monkeypatch.delenv("BOT_CONSOLE_TOKEN", raising=False)
    config = make_config(tmp_path, BOT_FLOWS_DIR=str(ROOT / "flows"))
    assert config.sandbox
    engine, registry = load_engine(config)
    assert engine is not None
    components = Components(
        store=SQLiteStore(tmp_path / "bot.db"),
        handler=engine.handle,
        error_replies=engine.error_replies,
        transport=lambda: make_transport(config),  # bot run's; the console's sandbox replaces it
        registry=registry,
        policy=window_policy(config),
        sandbox_cloud=True,
    )
    client = await make_client(config, components)
    session = await (await client.get("/console/api/session")).json()
    assert session["sandbox"] and "welcome.menu" in session["states"]
    yield Sandbox(client, session["csrf"])


def replies(page: Any) -> list[Any]:
    return [i for i in page["timeline"] if i["kind"] == "out" and not i["job"]]


async def test_a_booking_reminder_fires_on_the_users_moved_clock(sandbox: Sandbox) -> None:
    """Book a slot, see the reminder job, move the clock three days: it goes out as its
    template, whose quick-reply button the user presses.

    The slot is the day after tomorrow's 14:00 (UTC): its reminder, an hour before, is 37
    to 61 hours away whenever the test runs, so always past the 24-hour window (tomorrow's
    11:00 would fall inside it when the test runs after 10:00 UTC).
    """
    await sandbox.say(ANA, text="hi")
    await sandbox.say(ANA, type="button_reply", id="book", title="Book")
    await sandbox.say(ANA, text="Ana Souza")
    await sandbox.say(ANA, type="list_reply", id="d2_1400", title="Day after 14:00")
    await sandbox.say(ANA, type="button_reply", id="yes", title="Confirm")
    page = await sandbox.page(ANA)
    assert all(r["sent_as"] == "session" for r in replies(page))
    assert "You're booked" in replies(page)[-1]["message"]["text"]
    [job] = page["jobs"]
    assert job["status"] == "pending" and job["due_at"] > page["user"]["window"]["now"]

    await sandbox.post(f"/sandbox/{ANA}/clock", {"hours": 72})
    page = await sandbox.page(ANA)
    [job] = page["jobs"]
    assert job["status"] in ("sent", "delivered", "read") and job["sent_as"] == "template"
    template = job["template"]
    assert (template["name"], template["category"], template["use"], template["language"]) == (
        "appointment_reminder",
        "UTILITY",
        "APPOINTMENT_UPDATE",
        "pt_BR",
    )
    assert template["parameters"] == {"name": "Ana Souza", "slot": "Day after 14:00"}
    assert template["buttons"] == [
        {"title": "Confirmar", "payload": "CONFIRM", "kind": "quick_reply"}
    ]
    assert "window closed" in job["reason"] and not page["user"]["window"]["open"]

    await sandbox.say(ANA, type="button", payload="CONFIRM", title="Confirmar")
    last = replies(await sandbox.page(ANA))[-1]
    assert last["message"]["text"] == "Thanks for confirming, see you then!"
    assert last["sent_as"] == "session"  # pressing the button opened the window again


async def test_one_users_clock_leaves_the_others_alone(sandbox: Sandbox) -> None:
    """Moving Ana's clock 25 h closes her window only; Bia's replies stay session messages."""
    await sandbox.say(ANA, text="hi")
    await sandbox.say(BIA, text="hi")
    moved = await sandbox.post(f"/sandbox/{ANA}/clock", {"hours": "25h"})
    assert moved["offset_seconds"] == 25 * 3600
    ana, bia = await sandbox.page(ANA), await sandbox.page(BIA)
    assert not ana["user"]["window"]["open"] and bia["user"]["window"]["open"]
    assert ana["clock_offset"] == 25 * 3600 and bia["clock_offset"] == 0
    await sandbox.say(BIA, text="hours")
    assert replies(await sandbox.page(BIA))[-1]["sent_as"] == "session"
    await sandbox.say(ANA, text="hours", ago_hours=25)
    late = replies(await sandbox.page(ANA))[-1]
    assert late["sent_as"] == "template" and late["template"]["name"] == "business_hours"


async def test_reset_starts_the_user_over(sandbox: Sandbox) -> None:
    """Reset blanks the record, hides the old timeline and puts the user on the wall clock."""
    await sandbox.say(ANA, text="hi")
    await sandbox.say(ANA, type="button_reply", id="book", title="Book")
    await sandbox.post(f"/sandbox/{ANA}/clock", {"hours": 3})
    await sandbox.post(f"/sandbox/{ANA}/reset")
    page = await sandbox.page(ANA)
    assert page["timeline"] == [] and page["clock_offset"] == 0
    assert (page["user"]["flow"], page["user"]["message_count"]) == ("", 0)
    await sandbox.say(ANA, text="book")  # a new user: the greeting, then "book" is taken
    greeting, booking = replies(await sandbox.page(ANA))
    assert "Welcome" in greeting["message"]["text"]
    assert "What name" in booking["message"]["text"]


async def test_a_bad_message_is_a_clear_400(sandbox: Sandbox) -> None:
    """An unknown message type, an empty text or a bad delay says what is wrong."""
    headers = {"X-CSRF-Token": sandbox.csrf}
    for body, why in (
        ({"type": "sticker"}, "type must be"),
        ({"text": "  "}, "text is empty"),
        ({"text": "hi", "ago_hours": "soon"}, "not a duration"),
        ({"type": "list_reply"}, "id is required"),
    ):
        resp = await sandbox.client.post(
            f"/console/api/sandbox/{ANA}/message", json=body, headers=headers
        )
        assert resp.status == 400 and why in (await resp.json())["error"]
    resp = await sandbox.client.post(
        f"/console/api/sandbox/{ANA}/clock", json={"hours": -1}, headers=headers
    )
    assert resp.status == 400


async def test_the_sandbox_fake_keeps_only_the_newest(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-running sandbox does not keep every reply in memory: the newest are kept."""
    monkeypatch.setattr(sandbox_module, "_KEEP", 2)
    async with (
        FakeCloudAPI(token="t", phone_number_id="*", enforce_window=False) as fake,
        CloudAPI(phone_number_id="1", token="t", base_url=fake.url, rate_limit=0) as api,
    ):
        transport = sandbox_module._LoggedTransport(api, fake)
        wamids = [
            await transport.send(ANA, {"type": "text", "text": {"body": f"n{n}"}}) for n in range(7)
        ]
        assert len(fake.messages) <= 4 and len(fake.requests) <= 4
        assert [m.wamid for m in fake.messages][-2:] == wamids[-2:]
