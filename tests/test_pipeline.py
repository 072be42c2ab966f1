"""The per-user pipeline under faults, in one process on a real SQLite store and real HTTP.

Arrival order without waiting, leases that hold through slow sends, sends reconciled from
status webhooks after a crash, poison messages isolated with an error reply, and a locked
store answered 503 and recovered. The same promises across real processes and kill -9 are
in ``tests/test_delivery.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from bot.app import DISPATCHER, Components
from bot.dispatcher import Dispatcher
from bot.engine import Reminder
from bot.errors import OutcomeUnknown
from bot.models import JSON, InboundMessage, Outgoing, UserRecord, parse_callback_data
from bot.retry import RetryPolicy
from bot.sender import Sender
from bot.store.sqlite import SQLiteStore
from bot.testing import FakeCloudAPI, status_item, text_message
from bot.webhook import parse_body, parse_message, parse_status
from bot.whatsapp import CloudAPI
from bot.window import WindowPolicy
from tests.conftest import MakeClient, make_config, signed
from tests.store_access import pending_outbox

USER = "15550009999"


def text(body: str) -> Outgoing:
    """A plain text reply."""
    return Outgoing(message={"type": "text", "text": {"body": body, "preview_url": False}})


@dataclass(frozen=True)
class Turn:
    record: UserRecord
    outgoing: tuple[Outgoing, ...] = ()
    reminders: tuple[Reminder, ...] = ()


@dataclass
class Echo:
    """A handler that answers every text with itself and remembers the order it saw."""

    seen: list[str] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)

    async def __call__(self, record: UserRecord, message: InboundMessage, now: float) -> Turn:
        self.calls[message.text] += 1
        if message.text.startswith("boom"):
            raise RuntimeError("the hook fell over")
        self.seen.append(message.text)
        return Turn(record, (text(message.text),))


def sorry(
    record: UserRecord, message: InboundMessage | None, now: float, reason: str
) -> list[Outgoing]:
    """The project's error reply."""
    return [replace(text("Sorry, something went wrong."), note="on_error")]


def opaque_wamid(rng: random.Random) -> str:
    """A wamid as opaque as Meta's: nothing in it sorts by time."""
    return "wamid." + base64.b64encode(rng.randbytes(24)).decode()


def entry_ids(fake: FakeCloudAPI) -> Counter[str]:
    """How often each outbox entry was sent (by the callback data each request carried)."""
    ids = [parse_callback_data(m.callback) for m in fake.messages]
    assert all(named is not None for named in ids), "a send without callback data"
    return Counter(named[0] for named in ids if named is not None)


class TestArrivalOrder:
    async def test_same_second_messages_are_handled_in_the_order_they_arrived(
        self, make_client: MakeClient, tmp_path: Path
    ) -> None:
        """Thirty messages stamped with one second and opaque wamids keep their arrival order."""
        echo = Echo()
        cfg = make_config(tmp_path)
        store = SQLiteStore(tmp_path / "bot.db")
        client = await make_client(cfg, Components(store=store, handler=echo))
        rng = random.Random(7)
        texts = [f"m{n}" for n in range(30)]
        for body in texts:
            item = text_message(USER, body, wamid=opaque_wamid(rng), timestamp=1764000000)
            raw, headers = signed(item)
            assert (await client.post("/webhook", data=raw, headers=headers)).status == 200
        await client.app[DISPATCHER].idle()
        while sum(echo.calls.values()) < len(texts):  # the last worker may start after idle
            await asyncio.sleep(0.01)
            await client.app[DISPATCHER].idle()
        assert echo.seen == texts

    async def test_a_late_older_message_still_pending_goes_first(self, tmp_path: Path) -> None:
        """A message Meta stamped earlier but delivered later is handled first if both wait."""
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        newer = text_message(USER, "second", wamid="wamid.b", timestamp=1764000005)
        older = text_message(USER, "first", wamid="wamid.a", timestamp=1764000001)
        for body in (newer, older):
            await store.add_inbound(parse_body(json.dumps(body).encode()).messages, 0.0)
        echo = Echo()
        dispatcher = Dispatcher(store, handler=echo)
        dispatcher.notify(USER)
        await dispatcher.idle()
        assert echo.seen == ["first", "second"]
        await store.close()


@dataclass
class Pair:
    """Two dispatchers (two 'processes') on one store, sending to one slow fake Cloud API."""

    store: SQLiteStore
    fake: FakeCloudAPI
    dispatchers: list[Dispatcher]


@pytest.fixture
async def slow_pair(tmp_path: Path) -> AsyncIterator[Pair]:
    store = SQLiteStore(tmp_path / "bot.db")
    await store.open()
    async with FakeCloudAPI(
        token="t", phone_number_id="PN", enforce_window=False, delay=3.0
    ) as fake:
        apis = [fake.client(timeout=30) for _ in range(2)]
        dispatchers = []
        for api in apis:
            await api.start()
            sender = Sender(store, api, registry=None, policy=WindowPolicy(), grace=60.0)
            dispatcher = Dispatcher(
                store, handler=Echo(), drainer=sender, lease_seconds=2.0, sweep_seconds=0.2
            )
            await dispatcher.start()
            dispatchers.append(dispatcher)
        yield Pair(store, fake, dispatchers)
        for dispatcher in dispatchers:
            await dispatcher.stop(grace=30)
        for api in apis:
            await api.close()
    await store.close()


class TestLeaseHoldsThroughSlowSends:
    async def test_two_dispatchers_with_a_2s_lease_and_3s_sends_send_nothing_twice(
        self, slow_pair: Pair
    ) -> None:
        """Sends three times longer than the lease: the holder renews, nobody takes over."""
        users = [f"1555001000{u}" for u in range(3)]
        for n in range(3):
            for user in users:
                item = {
                    "from": user,
                    "id": f"wamid.{user}.{n}",
                    "timestamp": str(int(time.time()) + n),
                    "type": "text",
                    "text": {"body": f"{user}-{n}"},
                }
                await slow_pair.store.add_inbound([parse_message(item)], 0.0)
        for dispatcher in slow_pair.dispatchers:  # both try every user
            for user in users:
                dispatcher.notify(user)
        for _ in range(600):
            if len(slow_pair.fake.messages) >= 9 and not any(
                [await pending_outbox(slow_pair.store, u) for u in users]
            ):
                break
            await asyncio.sleep(0.1)
        sent = entry_ids(slow_pair.fake)
        assert sorted(sent) == sorted(f"{u}:{n}" for u in users for n in range(3))
        assert max(sent.values()) == 1
        for user in users:
            bodies = [m.body["text"]["body"] for m in slow_pair.fake.messages_to(user)]
            assert bodies == [f"{user}-{n}" for n in range(3)]


@dataclass
class Rig:
    store: SQLiteStore
    fake: FakeCloudAPI
    api: CloudAPI
    clock: list[float]

    def sender(self, grace: float = 30.0) -> Sender:
        return Sender(self.store, self.api, registry=None, policy=WindowPolicy(), grace=grace)

    async def crashed_send(self) -> str:
        """A turn whose reply was accepted by Meta, then the process died before recording it."""
        now = self.clock[0]
        work = await self.store.claim(USER, "dead", now + 15, now)
        assert work is not None
        record = UserRecord(
            key=USER, wa_id=USER, last_inbound_at=int(now), version=work.record.version
        )
        committed = await self.store.commit_turn(
            work.lease, None, record, [text("only once")], now, start_sending=True
        )
        [entry] = committed.entries
        return await self.api.send(USER, entry.outgoing.message or {}, callback=entry.callback_data)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SQLiteStore(tmp_path / "bot.db")
    await store.open()
    clock = [1764000000.0]
    async with (
        FakeCloudAPI(token="t", phone_number_id="PN", enforce_window=False) as fake,
        fake.client() as api,
    ):
        yield Rig(store, fake, api, clock)
    await store.close()


class TestReconciliation:
    async def test_status_with_callback_data_settles_a_send_the_crash_never_recorded(
        self, rig: Rig
    ) -> None:
        """After a crash, the 'sent' status naming the entry marks it sent: never resent."""
        wamid = await rig.crashed_send()
        [sent] = rig.fake.messages
        status = parse_status(status_item(wamid, "sent", USER, callback=sent.callback))
        assert await rig.store.add_statuses([status], rig.clock[0]) == [True]
        rig.clock[0] += 120  # the dead lease ran out long ago
        dispatcher = Dispatcher(rig.store, drainer=rig.sender(), clock=lambda: rig.clock[0])
        dispatcher.notify(USER)
        await dispatcher.idle()
        assert len(rig.fake.messages) == 1
        [entry] = await rig.store.outbox_of(USER)
        assert (entry.status, entry.wamid) == ("sent", wamid)

    async def test_without_a_status_the_send_waits_the_grace_then_goes_once(self, rig: Rig) -> None:
        """No status within the grace: the entry waits, then is sent again, exactly once."""
        await rig.crashed_send()
        rig.fake.messages.clear()  # Meta lost it: no status will ever come
        rig.clock[0] += 16  # the dead lease ran out, the grace (30 s) did not
        dispatcher = Dispatcher(rig.store, drainer=rig.sender(grace=30), clock=lambda: rig.clock[0])
        dispatcher.notify(USER)
        await dispatcher.idle()
        assert rig.fake.messages == []
        rig.clock[0] += 30
        for _ in range(2):
            dispatcher.notify(USER)
            await dispatcher.idle()
        assert len(rig.fake.messages) == 1
        [entry] = await rig.store.outbox_of(USER)
        assert entry.status == "sent" and entry.attempts == 2

    async def test_a_timeout_is_not_retried_blindly(self, rig: Rig) -> None:
        """A send that timed out waits for its status instead of being resent at once."""
        rig.fake.fail_next(1, timeout=True)
        async with rig.fake.client(timeout=0.5) as api:
            sender = Sender(rig.store, api, registry=None, policy=WindowPolicy(), grace=30.0)
            now = rig.clock[0]
            work = await rig.store.claim(USER, "me", now + 15, now)
            assert work is not None
            record = UserRecord(key=USER, wa_id=USER, last_inbound_at=int(now))
            committed = await rig.store.commit_turn(
                work.lease, None, record, [text("hi")], now, start_sending=True
            )
            drained = await sender.drain(work.lease, committed.record, committed.entries, now)
        assert drained.blocked and drained.wake_at == now + 30.0
        [entry] = await rig.store.outbox_of(USER)
        assert entry.status == "pending" and entry.inflight_at == now and entry.attempts == 1

    async def test_a_status_that_beats_the_timeout_settles_the_send(self, rig: Rig) -> None:
        """Meta took the send and its status came while the answer was still awaited; then
        the request timed out. The status stands: the reply is not sent again after the
        grace."""
        now = rig.clock[0]

        class AnswerLost:
            async def send(self, to: str, message: JSON, *, callback: str = "") -> str:
                wamid = await rig.api.send(to, message, callback=callback)
                item = status_item(wamid, "sent", to, callback=callback)
                assert await rig.store.add_statuses([parse_status(item)], now) == [True]
                raise OutcomeUnknown("no answer within 10s")

        sender = Sender(rig.store, AnswerLost(), registry=None, policy=WindowPolicy(), grace=30)
        work = await rig.store.claim(USER, "me", now + 15, now)
        assert work is not None
        record = UserRecord(key=USER, wa_id=USER, last_inbound_at=int(now))
        committed = await rig.store.commit_turn(
            work.lease, None, record, [text("only once")], now, start_sending=True
        )
        await sender.drain(work.lease, committed.record, committed.entries, now)
        await rig.store.release([work.lease])
        rig.clock[0] += 60  # past the grace
        dispatcher = Dispatcher(rig.store, drainer=rig.sender(), clock=lambda: rig.clock[0])
        assert await dispatcher.sweep() == 0  # nothing is left to send
        dispatcher.notify(USER)
        await dispatcher.idle()
        assert len(rig.fake.messages) == 1
        [entry] = await rig.store.outbox_of(USER)
        assert (entry.status, entry.wamid) == ("sent", rig.fake.messages[0].wamid)


class TestPoisonIsolation:
    async def test_failing_turn_is_retried_then_failed_with_an_error_reply_and_the_user_goes_on(
        self, rig: Rig
    ) -> None:
        """A hook that always raises: three tries, message failed, error reply, next answered."""
        echo = Echo()
        for n, body in enumerate(["boom", "after"]):
            item = {
                "from": USER,
                "id": f"wamid.p{n}",
                "timestamp": str(int(rig.clock[0])),
                "type": "text",
                "text": {"body": body},
            }
            await rig.store.add_inbound([parse_message(item)], rig.clock[0])
        dispatcher = Dispatcher(
            rig.store,
            handler=echo,
            drainer=rig.sender(),
            error_replies=sorry,
            handling=RetryPolicy(max_attempts=3, base=0.01, cap=0.01),
            clock=lambda: rig.clock[0],
        )
        dispatcher.notify(USER)
        await dispatcher.idle()
        assert echo.calls["boom"] == 3
        assert [m.body["text"]["body"] for m in rig.fake.messages_to(USER)] == [
            "Sorry, something went wrong.",
            "after",
        ]
        assert await rig.store.inbox_counts() == {"pending": 0, "done": 1, "failed": 1}
        assert dispatcher.metrics.failed == 1 and dispatcher.metrics.processed == 1


class TestLockedStore:
    async def test_locked_store_answers_503_in_bound_then_recovers(
        self, make_client: MakeClient, tmp_path: Path
    ) -> None:
        """Another process's lock: webhooks get 503 and /healthz says so; after it, all is well."""
        cfg = make_config(tmp_path)
        cfg = replace(cfg, server=replace(cfg.server, store_timeout_seconds=0.5))
        path = tmp_path / "bot.db"
        client = await make_client(cfg, Components(store=SQLiteStore(path, busy_timeout=0.2)))
        locked, release = threading.Event(), threading.Event()

        def hold_lock() -> None:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait()
            other.execute("ROLLBACK")
            other.close()

        holder = threading.Thread(target=hold_lock)
        holder.start()
        try:
            await asyncio.to_thread(locked.wait)
            raw, headers = signed(text_message(USER, "hello", wamid="wamid.locked"))
            assert (await client.post("/webhook", data=raw, headers=headers)).status == 503
            health = await client.get("/healthz")
            assert health.status == 503 and (await health.json())["status"] == "unavailable"
        finally:
            release.set()
            await asyncio.to_thread(holder.join)
        assert (await client.post("/webhook", data=raw, headers=headers)).status == 200
        assert (await client.get("/healthz")).status == 200
        store = SQLiteStore(path)
        await store.open()
        await client.app[DISPATCHER].idle()
        counts = await store.inbox_counts()
        await store.close()
        assert counts["pending"] + counts["done"] == 1
