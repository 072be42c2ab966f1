"""Human takeover: a paused user's turn says nothing, ``ctx.handoff``, and the console's
operator path through the outbox, the window decision and a fake Cloud API."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from bot.app import DISPATCHER, Components
from bot.chat import ChatSession
from bot.engine import Engine
from bot.runtime import load_engine, window_policy
from bot.store.base import Store
from bot.store.mongo import MongoStore
from bot.store.sqlite import SQLiteStore
from bot.testing import FakeCloudAPI, signed_request, text_message
from bot.whatsapp import CloudAPI
from tests.conftest import SECRET, AppClient, MakeClient, make_config
from tests.engine.helpers import FLOWS, NOW, Chat, bodies, text, user, write
from tests.mongo_server import MONGO_SERVER_NAMES, mongo_database
from tests.server import ROOT

TOKEN = "takeover-console-token"
META = "meta-token"
PNID = "1066"
USER = "5511999990000"


class TestPausedTurn:
    async def test_a_paused_user_gets_no_reply_and_keeps_their_state(self) -> None:
        """The engine answers nothing for a paused user and leaves flow, state and vars alone."""
        chat = Chat(Engine.load(FLOWS))
        await chat.send(text("hi"))
        chat.record = replace(chat.record, paused=True, paused_reason="with Carla")
        turn = await chat.send(text("book"))
        assert turn.outgoing == () and turn.reminders == () and turn.trigger == "paused"
        assert chat.at == "welcome.menu" and turn.record.paused_reason == "with Carla"
        chat.record = replace(chat.record, paused=False)
        assert "What name" in bodies(await chat.send(text("book")))[0]

    async def test_a_hook_hands_the_user_to_a_human(self, tmp_path: Path) -> None:
        """``ctx.handoff(reason)`` pauses the user after its turn's replies go out."""
        folder = write(
            tmp_path / "flows",
            {
                "main.yaml": """
                    flow: main
                    initial: start
                    states:
                      start:
                        say: "Hi! Type agent to talk to a person."
                        on:
                          - text: agent
                            do: [to_human]
                            to: human
                      human:
                        on:
                          - else:
                            to: start
                """,
                "hooks.py": """
                    def to_human(ctx):
                        ctx.handoff("asked for an agent")
                        return "A person will answer you here soon."
                """,
            },
        )
        chat = Chat(Engine.load(folder), user())
        await chat.send(text("hi"))
        turn = await chat.send(text("agent"), now=NOW + 5)
        assert bodies(turn) == ["A person will answer you here soon."]
        assert (turn.record.paused, turn.record.paused_reason) == (True, "asked for an agent")
        assert turn.record.paused_at == NOW + 5
        assert (await chat.send(text("hello?"))).outgoing == ()

    async def test_a_record_stored_before_pausing_existed_loads_unpaused(
        self, tmp_path: Path
    ) -> None:
        """A stored record without the pause fields (an older version wrote it) loads unpaused."""
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        work = await store.claim(USER, "w", NOW + 30, NOW)
        assert work is not None
        await store.commit_turn(work.lease, None, user(flow="welcome", state="menu"), [], NOW)
        await store.close()
        with sqlite3.connect(tmp_path / "bot.db") as db:
            db.execute(
                "UPDATE users SET data = json_remove(data, '$.paused', '$.paused_reason', "
                "'$.paused_at')"
            )
            assert "paused" not in db.execute("SELECT data FROM users").fetchone()[0]
        await store.open()
        record = await store.get_user(USER)
        await store.close()
        assert record is not None and record.state == "menu"
        assert (record.paused, record.paused_reason, record.paused_at) == (False, "", 0.0)


@dataclass
class Live:
    """The bot outside sandbox mode on the example flows, its console, the fake Cloud API."""

    client: AppClient
    fake: FakeCloudAPI

    async def api(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        """Call the console API with the bearer token; status and JSON."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if body is None:
            resp = await self.client.get(f"/console/api{path}", headers=headers)
        else:
            resp = await self.client.post(f"/console/api{path}", json=body, headers=headers)
        return resp.status, await resp.json()

    async def user_writes(self, body: str, *, written: float) -> None:
        """A signed webhook from the user; waits until the bot has handled it."""
        self.fake.user_wrote(USER, written)
        raw, headers = signed_request(
            text_message(USER, body, name="Ana", timestamp=written), SECRET
        )
        assert (await self.client.post("/webhook", data=raw, headers=headers)).status == 200
        await self.client.app[DISPATCHER].idle()


@pytest.fixture(
    params=[
        "sqlite",
        *(pytest.param(name, marks=pytest.mark.mongo, id=name) for name in MONGO_SERVER_NAMES),
    ]
)
async def live(
    make_client: MakeClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> AsyncIterator[Live]:
    """The bot on SQLite, on nx-27017, and on BOT_TEST_MONGODB_URI's server when it is set."""
    monkeypatch.setenv("BOT_CONSOLE_TOKEN", TOKEN)
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            store: Store = SQLiteStore(tmp_path / "bot.db")
        else:
            url = stack.enter_context(mongo_database(request.param, tmp_path / "nx"))
            store = MongoStore.from_url(url)
        async with _live(make_client, tmp_path, store) as live:
            yield live


@contextlib.asynccontextmanager
async def _live(make_client: MakeClient, tmp_path: Path, store: Store) -> AsyncIterator[Live]:
    config = make_config(
        tmp_path,
        WHATSAPP_TOKEN=META,
        WHATSAPP_PHONE_NUMBER_ID=PNID,
        BOT_FLOWS_DIR=str(ROOT / "flows"),
    )
    engine, registry = load_engine(config)
    assert engine is not None
    async with FakeCloudAPI(token=META, phone_number_id=PNID, registry=registry) as fake:
        components = Components(
            store=store,
            handler=engine.handle,
            error_replies=engine.error_replies,
            transport=lambda: CloudAPI(
                phone_number_id=PNID, token=META, base_url=fake.url, rate_limit=0
            ),
            registry=registry,
            policy=window_policy(config),
        )
        client = await make_client(config, components)
        fake.webhook_url, fake.app_secret = str(client.make_url("/webhook")), SECRET
        yield Live(client, fake)
        await client.close()


async def test_operator_takes_over_and_hands_back(live: Live) -> None:
    """Pause, a stored message with no reply, text refused when closed, a template sent
    through the outbox, hand back, then free text while the window is open."""
    written = time.time() - 25 * 3600
    await live.user_writes("hi", written=written)
    [greeting] = await live.fake.wait_for(USER, 1)
    assert greeting.body["template"]["name"] == "business_hours"

    status, paused = await live.api(f"/users/{USER}/pause", {"reason": "complaint"})
    assert status == 200 and paused["paused"] and paused["paused_reason"] == "complaint"
    await live.user_writes("this is the third time I write", written=written + 60)
    assert len(live.fake.messages_to(USER)) == 1  # stored, not answered
    status, listed = await live.api("/users")
    assert [(u["key"], u["paused"], u["window"]["open"]) for u in listed] == [(USER, True, False)]
    assert listed[0]["last_message"] == "this is the third time I write"

    status, refused = await live.api(f"/users/{USER}/reply", {"text": "Sorry, Ana!"})
    assert status == 409 and "window is closed" in refused["error"]
    offered = {t["name"]: t for t in refused["templates"]}
    assert "spring_sale" not in offered  # PENDING: never offered
    assert offered["appointment_update"]["language"] == "pt_BR"
    assert offered["appointment_update"]["parameters"] == ["1", "2"]
    status, queued = await live.api(
        f"/users/{USER}/reply",
        {"template": "appointment_update", "parameters": ["Ana", "we call you at 10:00"]},
    )
    assert status == 200, queued
    sent = (await live.fake.wait_for(USER, 2))[-1]
    await live.client.app[DISPATCHER].idle()  # the fake has it; the bot records its wamid next
    assert sent.body["template"]["name"] == "appointment_update"
    assert sent.body["template"]["language"]["code"] == "pt_BR"
    status, page = await live.api(f"/users/{USER}")
    last = page["timeline"][-1]
    assert (last["sent_as"], last["template"]["name"]) == ("template", "appointment_update")
    assert last["reason"].startswith("business-initiated") and last["note"] == "operator api"
    assert [i["text"] for i in page["timeline"] if i["kind"] == "in"][-1].startswith("this is")

    status, bad = await live.api(f"/users/{USER}/reply", {"template": "spring_sale"})
    assert status == 400 and "not offered" in bad["error"]
    status, back = await live.api(f"/users/{USER}/handback", {"state": "welcome.menu"})
    assert status == 200 and not back["paused"] and back["state"] == "menu"
    await live.user_writes("hours", written=time.time())
    hours = (await live.fake.wait_for(USER, 3))[-1]
    assert hours.type == "interactive" and "open" in hours.body["interactive"]["body"]["text"]

    await live.api(f"/users/{USER}/pause", {})
    status, queued = await live.api(f"/users/{USER}/reply", {"text": "Carla here, hi Ana!"})
    assert status == 200
    free = (await live.fake.wait_for(USER, 4))[-1]
    assert free.type == "text" and free.body["text"]["body"] == "Carla here, hi Ana!"


async def test_bot_chat_shows_a_paused_user(tmp_path: Path) -> None:
    """``bot chat`` says when a human has the user: after a message and in ``/state``."""
    config = make_config(tmp_path, BOT_FLOWS_DIR=str(ROOT / "flows"))
    out = io.StringIO()
    async with ChatSession(config, USER, "Ana", out) as session:
        await session.handle_line("hi")
        assert "paused" not in out.getvalue()
        work = await session.store.claim(USER, "console", time.time() + 30, time.time())
        assert work is not None
        paused = replace(work.record, paused=True, paused_reason="with Carla")
        await session.store.commit_turn(work.lease, None, paused, [], time.time())
        await session.store.release([work.lease])
        out.truncate(0)
        await session.handle_line("book")
        await session.handle_line("/state")
    shown = out.getvalue()
    assert "(the bot is paused for you: with Carla;" in shown
    assert "  paused: with Carla; hand back in the console" in shown
    assert "What name" not in shown
