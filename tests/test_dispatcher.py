"""Per-user workers over a real SQLite store (bot.dispatcher): order, exactly once, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from bot.dispatcher import Dispatcher
from bot.engine import Engine, Reminder
from bot.models import InboundMessage, Outgoing, UserRecord
from bot.sender import Sender
from bot.store.sqlite import SQLiteStore
from bot.testing import FakeCloudAPI
from bot.webhook import parse_message
from bot.window import WindowPolicy
from tests.engine.helpers import write
from tests.store_access import pending_outbox

T0 = 1764000000


def message(user: str, n: int, ts: int | None = None) -> InboundMessage:
    """Text message number ``n`` from ``user`` (timestamp T0 + n unless given)."""
    item = {
        "from": user,
        "id": f"wamid.{user}.{n}",
        "timestamp": str(T0 + n if ts is None else ts),
        "type": "text",
        "text": {"body": str(n)},
    }
    return parse_message(item, profile_name="Tester")


@dataclass(frozen=True)
class Turn:
    record: UserRecord
    outgoing: tuple[Outgoing, ...] = ()
    reminders: tuple[Reminder, ...] = ()


async def recording_handler(record: UserRecord, msg: InboundMessage, now: float) -> Turn:
    """Append the message text to vars['seen'] (a read-modify-write that must not be lost)."""
    await asyncio.sleep(0)  # let other users' workers interleave
    seen = [*record.variables.get("seen", []), msg.text]
    return Turn(replace(record, variables={**record.variables, "seen": seen}))


async def opened(path: Path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


class TestOrder:
    async def test_fifty_messages_from_one_user_in_timestamp_order(self, tmp_path: Path) -> None:
        """50 messages stored in random order are handled oldest first, none lost."""
        store = await opened(tmp_path / "bot.db")
        msgs = [message("5511", n) for n in range(50)]
        random.Random(7).shuffle(msgs)
        await asyncio.gather(*(store.add_inbound([m], 0.0) for m in msgs))
        dispatcher = Dispatcher(store, handler=recording_handler)
        for m in msgs:
            dispatcher.notify(m.user)
        await dispatcher.idle()
        user = await store.get_user("5511")
        assert user is not None
        assert user.variables["seen"] == [str(n) for n in range(50)]
        assert user.message_count == 50 and user.last_inbound_at == T0 + 49
        await store.close()

    async def test_two_workers_sharing_a_store_keep_order_and_process_once(
        self, tmp_path: Path
    ) -> None:
        """Two dispatchers on separate connections to one file split users, never a message."""
        path = tmp_path / "bot.db"
        a, b = await opened(path), await opened(path)
        users = [f"55{u}" for u in range(5)]
        msgs = [message(u, n) for u in users for n in range(40)]
        random.Random(3).shuffle(msgs)
        await a.add_inbound(msgs, 0.0)
        da = Dispatcher(a, handler=recording_handler, sweep_seconds=0.05)
        db = Dispatcher(b, handler=recording_handler, sweep_seconds=0.05)
        await da.start()
        await db.start()
        rng = random.Random(5)
        for m in msgs:
            (da if rng.random() < 0.5 else db).notify(m.user)
        for _ in range(200):
            counts = await a.inbox_counts()
            if counts["pending"] == 0:
                break
            await asyncio.sleep(0.05)
        await da.idle()
        await db.idle()
        await da.stop()
        await db.stop()
        assert await a.inbox_counts() == {"pending": 0, "done": 200, "failed": 0}
        for u in users:
            record = await a.get_user(u)
            assert record is not None
            assert record.variables["seen"] == [str(n) for n in range(40)], u
            assert record.message_count == 40
        assert da.metrics.processed + db.metrics.processed == 200
        await a.close()
        await b.close()


class TestFailuresAndRecovery:
    async def test_failing_handler_marks_message_failed_and_goes_on(self, tmp_path: Path) -> None:
        """A turn that raises is recorded as failed with the reason; the next message runs."""
        store = await opened(tmp_path / "bot.db")

        async def handler(record: UserRecord, msg: InboundMessage, now: float) -> Turn:
            if msg.text == "1":
                raise RuntimeError("boom in hook")
            return await recording_handler(record, msg, now)

        await store.add_inbound([message("5511", n) for n in range(3)], 0.0)
        dispatcher = Dispatcher(store, handler=handler)
        dispatcher.notify("5511")
        await dispatcher.idle()
        assert await store.inbox_counts() == {"pending": 0, "done": 2, "failed": 1}
        user = await store.get_user("5511")
        assert user is not None and user.variables["seen"] == ["0", "2"]
        assert dispatcher.metrics.failed == 1
        await store.close()

    async def test_start_recovers_messages_left_pending(self, tmp_path: Path) -> None:
        """Messages acknowledged but never processed (a crash) are handled at start-up."""
        path = tmp_path / "bot.db"
        first = await opened(path)
        await first.add_inbound([message("5511", n) for n in range(5)], 0.0)
        await first.close()  # the process died right after the 200s
        store = await opened(path)
        dispatcher = Dispatcher(store, handler=recording_handler, sweep_seconds=0.05)
        await dispatcher.start()
        for _ in range(100):
            if (await store.inbox_counts())["done"] == 5:
                break
            await asyncio.sleep(0.05)
        await dispatcher.idle()
        await dispatcher.stop()
        user = await store.get_user("5511")
        assert user is not None and user.variables["seen"] == ["0", "1", "2", "3", "4"]
        await store.close()

    async def test_leased_user_is_left_to_its_owner(self, tmp_path: Path) -> None:
        """A user leased by another live process is not touched until the lease ends."""
        store = await opened(tmp_path / "bot.db")
        await store.add_inbound([message("5511", 0)], 0.0)
        clock = [1000.0]
        assert await store.claim("5511", "other-process", 1030.0, clock[0]) is not None
        dispatcher = Dispatcher(store, handler=recording_handler, clock=lambda: clock[0])
        dispatcher.notify("5511")
        await dispatcher.idle()
        assert (await store.inbox_counts())["pending"] == 1
        clock[0] = 1031.0  # the other process died; its lease ran out
        assert await dispatcher.sweep() == 1
        await dispatcher.idle()
        assert (await store.inbox_counts())["done"] == 1
        await store.close()

    async def test_work_stored_by_another_process_while_held_is_taken_at_release(
        self, tmp_path: Path
    ) -> None:
        """A message another process stored while this one held its user is handled when
        this one finishes, without waiting for a sweep (none runs here)."""
        path = tmp_path / "bot.db"
        a, b = await opened(path), await opened(path)
        entered, go_on = asyncio.Event(), asyncio.Event()

        async def slow(record: UserRecord, msg: InboundMessage, now: float) -> Turn:
            entered.set()
            await go_on.wait()
            return await recording_handler(record, msg, now)

        holder = Dispatcher(a, handler=slow, sweep_seconds=3600)
        other = Dispatcher(b, handler=recording_handler, sweep_seconds=3600)
        await holder.receive([message("5511", 0)], time.time(), 0.0)
        await entered.wait()
        fresh = await other.receive([message("5511", 1)], time.time(), 0.0)
        assert list(fresh) == [True]
        await other.idle()  # its claim failed: the user is held
        assert (await b.inbox_counts())["pending"] == 2  # the one held, and this one
        go_on.set()
        await asyncio.wait_for(holder.idle(), 10)
        user = await a.get_user("5511")
        assert user is not None and user.variables["seen"] == ["0", "1"]
        assert await a.inbox_counts() == {"pending": 0, "done": 2, "failed": 0}
        await a.close()
        await b.close()


class TestShutdown:
    async def test_stop_lets_running_turns_finish(self, tmp_path: Path) -> None:
        """stop() waits for a turn in progress instead of cancelling it half-way."""
        store = await opened(tmp_path / "bot.db")

        async def slow(record: UserRecord, msg: InboundMessage, now: float) -> Turn:
            await asyncio.sleep(0.3)
            return await recording_handler(record, msg, now)

        await store.add_inbound([message("5511", 0)], 0.0)
        dispatcher = Dispatcher(store, handler=slow)
        dispatcher.notify("5511")
        await asyncio.sleep(0.05)  # the turn has started
        await dispatcher.stop(grace=5.0)
        assert (await store.inbox_counts())["done"] == 1
        await store.close()

    async def test_stop_cancels_after_the_grace_period(self, tmp_path: Path) -> None:
        """A turn that outlasts the grace period is cancelled; its message stays pending."""
        store = await opened(tmp_path / "bot.db")

        async def stuck(record: UserRecord, msg: InboundMessage, now: float) -> Turn:
            await asyncio.sleep(30)
            return await recording_handler(record, msg, now)

        await store.add_inbound([message("5511", 0)], 0.0)
        dispatcher = Dispatcher(store, handler=stuck)
        dispatcher.notify("5511")
        await asyncio.sleep(0.05)
        await dispatcher.stop(grace=0.1)
        assert (await store.inbox_counts())["pending"] == 1
        await store.close()


class TestApplyInbound:
    def test_message_updates_profile_window_count_and_reachability(self) -> None:
        """A message refreshes the profile, moves the window forward only, counts, and clears
        a 131026 mark (the user just wrote, so they can be reached)."""
        from bot.dispatcher import apply_inbound

        record = UserRecord(
            key="5511", last_inbound_at=T0 + 100, message_count=3, undeliverable=True
        )
        late = apply_inbound(record, message("5511", 5), T0 + 1000)
        assert (late.last_inbound_at, late.message_count) == (T0 + 100, 4)
        assert late.profile_name == "Tester" and not late.undeliverable
        fresh = apply_inbound(late, message("5511", 200), T0 + 1000)
        assert fresh.last_inbound_at == T0 + 200
        ahead = apply_inbound(fresh, message("5511", 5000), T0 + 1000)
        assert ahead.last_inbound_at == T0 + 1000  # a clock ahead of ours is capped at now
        assert fresh.last_inbound_at == T0 + 200


class TestRetention:
    async def test_purge_deletes_finished_work_past_the_retention(self, tmp_path: Path) -> None:
        """Handled messages older than the retention are purged; recent ones stay."""
        store = await opened(tmp_path / "bot.db")
        clock = [T0]
        dispatcher = Dispatcher(
            store, handler=recording_handler, clock=lambda: clock[0], retention=8 * 86400
        )
        await store.add_inbound([message("5511", 0)], T0)
        dispatcher.notify("5511")
        await dispatcher.idle()
        clock[0] = T0 + 3 * 86400
        assert await dispatcher.purge() == 0
        clock[0] = T0 + 9 * 86400
        assert await dispatcher.purge() == 1
        assert await store.inbox_counts() == {"pending": 0, "done": 0, "failed": 0}
        await store.close()


ECHO_AND_HOOK = {
    "welcome.yaml": """
        flow: welcome
        initial: start
        vars: {name: ""}
        states:
          start:
            say: "{{ vars.name or 'you' }} said {{ message.text }}"
            on:
              - text: "hook"
                do: [shout]
                to: start
              - text: "bye"
                to: end
              - text: "*"
                to: start
          end: {final: true}
        """,
    "hooks.py": """
        def shout(ctx):
            return "HEY"
        """,
}


@dataclass
class Webhooks:
    """A dispatcher with the flow engine and a sender to a fake Cloud API, fed like the app."""

    store: SQLiteStore
    dispatcher: Dispatcher
    fake: FakeCloudAPI

    async def post(self, *messages: InboundMessage) -> None:
        await self.dispatcher.receive(messages, time.time(), time.perf_counter())

    def stored(self, wamid: str) -> tuple[str, list[tuple[str, int]]]:
        """The message's inbox status and the user's pending replies (their text and
        attempts), read from the file at once: no worker can run meanwhile."""
        with contextlib.closing(sqlite3.connect(self.store.path)) as db:
            [(status,)] = db.execute("SELECT status FROM inbox WHERE wamid = ?", (wamid,))
            rows = db.execute(
                "SELECT json_extract(data, '$.outgoing.message.text.body'),"
                " json_extract(data, '$.attempts') FROM outbox"
                " WHERE user = ? AND status = 'pending' ORDER BY seq",
                (USER,),
            ).fetchall()
        return status, [tuple(row) for row in rows]

    def said(self) -> list[str]:
        return [m.body["text"]["body"] for m in self.fake.messages_to(USER)]


USER = "15550001111"


def now_message(n: int, text: str) -> InboundMessage:
    """Message ``n`` of ``USER``, stamped now (the window is open)."""
    item = {
        "from": USER,
        "id": f"wamid.{USER}.{n}",
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": text},
    }
    return parse_message(item, profile_name="Tester")


@pytest.fixture
async def webhooks(tmp_path: Path) -> AsyncIterator[Webhooks]:
    engine = Engine.load(write(tmp_path / "flows", ECHO_AND_HOOK))
    store = await opened(tmp_path / "bot.db")
    async with FakeCloudAPI(token="t", phone_number_id="PN", enforce_window=False) as fake:
        api = fake.client()
        await api.start()
        sender = Sender(store, api, registry=None, policy=WindowPolicy())
        dispatcher = Dispatcher(
            store, handler=engine.handle, pure_handler=engine.handle_pure, drainer=sender
        )
        await dispatcher.start()
        yield Webhooks(store, dispatcher, fake)
        await dispatcher.stop()
        await api.close()
    await store.close()


class TestTurnsOnTheWebhooksPath:
    """An idle user's turn that calls no hook runs before the insert and commits with it."""

    async def test_an_idle_users_message_is_handled_by_the_webhooks_own_write(
        self, webhooks: Webhooks
    ) -> None:
        await webhooks.post(now_message(0, "first"))  # no record remembered yet: a worker's
        await webhooks.dispatcher.idle()
        await webhooks.post(now_message(1, "second"))
        # The webhook's answer would go now, before any worker ran: the turn is stored,
        # its reply's first attempt in flight.
        assert webhooks.stored(f"wamid.{USER}.1") == ("done", [("you said second", 1)])
        await webhooks.dispatcher.idle()
        assert webhooks.said() == ["you said first", "you said second"]
        assert webhooks.dispatcher.metrics.processed == 2
        assert await pending_outbox(webhooks.store, USER) == []

    async def test_a_turn_with_a_hook_or_two_messages_wait_for_the_worker(
        self, webhooks: Webhooks
    ) -> None:
        await webhooks.post(now_message(0, "first"))
        await webhooks.dispatcher.idle()
        await webhooks.post(now_message(1, "hook"))
        assert webhooks.stored(f"wamid.{USER}.1") == ("pending", [])
        await webhooks.dispatcher.idle()
        await webhooks.post(now_message(2, "a"), now_message(3, "b"))
        assert [webhooks.stored(f"wamid.{USER}.{n}")[0] for n in (2, 3)] == ["pending"] * 2
        await webhooks.dispatcher.idle()
        assert webhooks.said() == [
            "you said first",
            "HEY",
            "you said hook",
            "you said a",
            "you said b",
        ]

    async def test_a_record_another_process_changed_is_read_again(
        self, webhooks: Webhooks, tmp_path: Path
    ) -> None:
        """The remembered record is stale: the turn is dropped and runs on the stored one."""
        await webhooks.post(now_message(0, "first"))
        await webhooks.dispatcher.idle()
        other = await opened(tmp_path / "bot.db")  # another process on the same file
        work = await other.claim(USER, "other", time.time() + 30, time.time())
        assert work is not None
        named = replace(work.record, variables={**work.record.variables, "name": "Ana"})
        await other.commit_turn(work.lease, None, named, [], time.time())
        await other.release([work.lease])
        await other.close()
        await webhooks.post(now_message(1, "second"))
        assert webhooks.stored(f"wamid.{USER}.1") == ("pending", [])
        await webhooks.dispatcher.idle()
        assert webhooks.said() == ["you said first", "Ana said second"]
