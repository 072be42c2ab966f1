"""User identity through the whole app: phone numbers, business-scoped ids, re-keys.

Real HTTP into the app on a real store (SQLite, and every Mongo server of the suite), replies
at the shipped fake Cloud API, which posts signed status and ``user_id_update`` webhooks back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bot.app import DISPATCHER, Components
from bot.engine import Reminder
from bot.errors import InvalidRequest
from bot.models import InboundMessage, OutboxEntry, Outgoing, TemplateCall, UserRecord
from bot.store.base import Store
from bot.store.mongo import MongoStore
from bot.store.sqlite import SQLiteStore
from bot.templates import TemplateRegistry
from bot.testing import FakeCloudAPI, envelope, text_message, user_id_update
from bot.whatsapp import CloudAPI
from tests.conftest import SECRET, MakeClient, signed
from tests.mongo_server import MONGO_SERVER_NAMES, mongo_database

ANA = "5511999990000"
ANA_ID = "BR.13491208655302741918"
ANA_NEW_ID = "BR.24817305912873645029"
BOB_ID = "US.9876543210123456"
TEMPLATES = """\
templates:
  login_code:
    category: AUTHENTICATION
    status: APPROVED
    languages:
      en_US:
        body: "{{1}} is your verification code."
"""


@dataclass(frozen=True)
class Turn:
    record: UserRecord
    outgoing: tuple[Outgoing, ...] = ()
    reminders: tuple[Reminder, ...] = ()


async def count(record: UserRecord, message: InboundMessage, now: float) -> Turn:
    """Answer with how many messages this user sent (the conversation's state), or a code."""
    if message.text == "code":
        call = TemplateCall(name="login_code", parameters=("123456",), language="en_US")
        return Turn(record, (Outgoing(message=None, fallback=call),))
    n = int(record.variables.get("n", 0)) + 1
    reply = Outgoing(message={"type": "text", "text": {"body": f"#{n}", "preview_url": False}})
    return Turn(replace(record, variables={"n": n}), (reply,))


@dataclass
class Rig:
    client: TestClient[Any, Any]
    store: Store
    fake: FakeCloudAPI

    async def post(self, body: dict[str, Any]) -> None:
        raw, headers = signed(body)
        response = await self.client.post("/webhook", data=raw, headers=headers)
        assert response.status == 200, await response.text()

    async def outbox(
        self, user: str, done: Callable[[list[OutboxEntry]], bool], within: float = 30
    ) -> list[OutboxEntry]:
        """The user's outbox once ``done`` holds for it (failing after ``within`` seconds)."""
        deadline = time.monotonic() + within
        while True:
            await self.client.app[DISPATCHER].idle()
            entries = await self.store.outbox_of(user)
            if done(entries):
                return entries
            assert time.monotonic() < deadline, [(e.id, e.status, e.reason) for e in entries]
            await asyncio.sleep(0.05)


@pytest.fixture(
    params=[
        "sqlite",
        *(pytest.param(name, marks=pytest.mark.mongo, id=name) for name in MONGO_SERVER_NAMES),
    ]
)
async def rig(
    request: pytest.FixtureRequest, make_client: MakeClient, tmp_path: Path
) -> AsyncIterator[Rig]:
    async with contextlib.AsyncExitStack() as stack:
        store: Store
        if request.param == "sqlite":
            store = SQLiteStore(tmp_path / "bot.db")
        else:
            url = stack.enter_context(mongo_database(request.param, tmp_path / "nx"))
            store = MongoStore.from_url(url)
        yield await stack.enter_async_context(_rig(store, make_client, tmp_path))


@contextlib.asynccontextmanager
async def _rig(store: Store, make_client: MakeClient, tmp_path: Path) -> AsyncIterator[Rig]:
    (tmp_path / "templates.yaml").write_text(TEMPLATES)
    registry = TemplateRegistry.load(tmp_path / "templates.yaml")
    async with FakeCloudAPI(app_secret=SECRET, registry=registry, enforce_window=False) as fake:

        def transport() -> CloudAPI:
            return CloudAPI(
                phone_number_id=fake.phone_number_id,
                token=fake.token,
                base_url=fake.url,
                rate_limit=0,
            )

        components = Components(store=store, handler=count, transport=transport, registry=registry)
        client = await make_client(components=components)
        fake.webhook_url = str(client.make_url("/webhook"))
        yield Rig(client, store, fake)
        await fake.settle()
        await client.close()


def bodies(fake: FakeCloudAPI, address: str) -> list[str]:
    """The text bodies ``address`` received."""
    return [m.body["text"]["body"] for m in fake.messages_to(address)]


class TestOneUser:
    async def test_phone_then_user_id_only_then_rekeyed_is_one_conversation(self, rig: Rig) -> None:
        """Seen by phone, then by id only, then re-keyed: one record, the count goes on."""
        await rig.post(text_message(ANA, "one", user_id=ANA_ID))
        await rig.fake.wait_for(ANA, 1)
        await rig.post(text_message(ANA_ID, "two"))
        await rig.fake.wait_for(ANA, 2)
        assert await rig.fake.change_user_id(ANA_ID, ANA_NEW_ID) == 200
        await rig.post(text_message(ANA_NEW_ID, "three"))
        await rig.fake.wait_for(ANA, 3)
        assert bodies(rig.fake, ANA) == ["#1", "#2", "#3"]
        await rig.outbox(ANA, lambda es: len(es) == 3 and all(e.wamid for e in es))
        record = await rig.store.get_user(ANA)
        assert record is not None
        assert (record.variables, record.user_id, record.message_count) == ({"n": 3}, ANA_NEW_ID, 3)
        assert await rig.store.get_user(ANA_ID) is None
        assert await rig.store.get_user(ANA_NEW_ID) is None


class TestSystemRekey:
    async def test_user_changed_user_id_system_message_rekeys(self, rig: Rig) -> None:
        """Meta's ``user_changed_user_id`` system message links the new id to the same user."""
        await rig.post(text_message(ANA, "one", user_id=ANA_ID))
        await rig.fake.wait_for(ANA, 1)
        system = {
            "id": "wamid.sys",
            "timestamp": str(int(time.time())),
            "type": "system",
            "system": {
                "body": f"User changed from {ANA_ID} to {ANA_NEW_ID}",
                "type": "user_changed_user_id",
                "user_id": ANA_NEW_ID,
                "previous_user_id": ANA_ID,
            },
        }
        await rig.post(envelope(messages=[system]))
        await rig.post(text_message(ANA_NEW_ID, "three"))
        await rig.outbox(
            ANA, lambda es: len(es) == 3 and all(e.wamid for e in es)
        )  # the system message is a turn too
        record = await rig.store.get_user(ANA)
        assert record is not None and record.user_id == ANA_NEW_ID
        assert await rig.store.get_user(ANA_NEW_ID) is None


class TestSending:
    async def test_user_known_only_by_id_is_answered_with_recipient(self, rig: Rig) -> None:
        """No phone number known: the reply goes out as ``recipient``, and its statuses land."""
        rig.fake.enforce_window = True
        rig.fake.user_wrote(BOB_ID)
        await rig.post(text_message(BOB_ID, "hi"))
        [sent] = await rig.fake.wait_for(BOB_ID, 1)
        assert sent.body["recipient"] == BOB_ID and "to" not in sent.body
        [entry] = await rig.outbox(BOB_ID, lambda es: bool(es) and es[0].status == "delivered")
        assert entry.wamid == sent.wamid

    async def test_status_with_only_the_user_id_updates_the_entry(self, rig: Rig) -> None:
        """A status naming the recipient by ``recipient_user_id`` alone moves the phone user's."""
        await rig.post(text_message(ANA, "one", user_id=ANA_ID))
        [sent] = await rig.fake.wait_for(ANA, 1)
        await rig.outbox(ANA, lambda es: bool(es) and es[0].status == "delivered")
        assert await rig.fake.emit_status(sent.wamid, "read", recipient=ANA_ID) == 200
        [entry] = await rig.outbox(ANA, lambda es: es[0].status == "read")
        assert entry.wamid == sent.wamid

    async def test_authentication_template_without_a_phone_number_is_refused(
        self, rig: Rig
    ) -> None:
        """An authentication template for a user known only by id is not sent, with why."""
        await rig.post(text_message(BOB_ID, "code"))
        [entry] = await rig.outbox(BOB_ID, lambda es: bool(es) and es[0].status != "pending")
        assert entry.status == "skipped"
        assert "needs a phone number" in entry.reason and BOB_ID in entry.reason
        assert rig.fake.messages_to(BOB_ID) == []


class TestBadInput:
    async def test_malformed_user_id_update_is_400_with_the_reason(self, rig: Rig) -> None:
        """A ``user_id_update`` without its current id is refused, saying so, never a 500."""
        body = user_id_update(ANA_ID, ANA_NEW_ID)
        body["entry"][0]["changes"][0]["value"]["user_id_update"][0]["user_id"].pop("current")
        raw, headers = signed(body)
        response = await rig.client.post("/webhook", data=raw, headers=headers)
        assert response.status == 400
        assert "needs both 'previous' and 'current'" in await response.text()


class TestFakeCloudAPI:
    async def test_recipient_sends_and_the_authentication_rule(self, tmp_path: Path) -> None:
        """The fake takes ``recipient`` sends and refuses authentication templates without
        a phone number, as Meta does; a request with neither address is a 100."""
        (tmp_path / "templates.yaml").write_text(TEMPLATES)
        registry = TemplateRegistry.load(tmp_path / "templates.yaml")
        async with FakeCloudAPI(registry=registry, enforce_window=False) as fake:
            api = CloudAPI(
                phone_number_id=fake.phone_number_id, token=fake.token, base_url=fake.url
            )
            async with api:
                text = {"type": "text", "text": {"body": "hi"}}
                await api.send(BOB_ID, text)
                code = {
                    "type": "template",
                    "template": {
                        "name": "login_code",
                        "language": {"code": "en_US"},
                        "components": [
                            {"type": "body", "parameters": [{"type": "text", "text": "1"}]}
                        ],
                    },
                }
                with pytest.raises(InvalidRequest, match="needs a phone number"):
                    await api.send(BOB_ID, code)
                await api.send(ANA, code)
            assert [(m.to, m.type) for m in fake.messages] == [
                (BOB_ID, "text"),
                (ANA, "template"),
            ]
            assert fake.messages[0].body["recipient"] == BOB_ID
            assert fake.messages[1].body["to"] == ANA
