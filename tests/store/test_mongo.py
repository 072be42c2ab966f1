"""What only the Mongo store does: crash roll-forward, fencing in the same write, old data,
indexes, URLs, motor, and errors when the server is down."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, WriteConcern

import bot.store._mongo_turns as turns_module
from bot.errors import ConfigError, LeaseLost, StoreError, StoreUnavailable
from bot.models import OutboxEntry
from bot.store.base import Lease, inbound_to_json, new_outbox_entries, outbox_to_json, user_to_json
from bot.store.mongo import MongoStore, mask_url
from tests.mongo_server import collecting_leaked_sockets, free_port, running_nx_27017
from tests.store.conftest import Backend
from tests.store.test_contract import (
    ANA,
    NOW,
    TS,
    claim,
    inbound,
    one_sent,
    reply,
    status,
    user,
)

pytestmark = pytest.mark.mongo


async def reopen(backend: Backend) -> MongoStore:
    """A new store on the same database, as a restarted process would open it."""
    store = backend.make()
    assert isinstance(store, MongoStore)
    await store.open()
    return store


async def fences(store: MongoStore) -> dict[str, str]:
    """The ``fence`` of each outbox document, by id."""
    docs = await store.database["outbox"].find({}, {"fence": 1}).to_list(None)
    return {d["_id"]: d.get("fence", "") for d in docs}


class TestCrashRecovery:
    @pytest.mark.parametrize("first_reader", ["get_user", "claim", "read_work", "commit_turn"])
    async def test_turn_left_by_a_crash_is_rolled_forward_once(
        self, mongo_store: MongoStore, mongo_backend: Backend, first_reader: str
    ) -> None:
        """A crash right after the user write loses nothing: the next reader finishes the turn."""
        await mongo_store.add_inbound([inbound("wamid.1"), inbound("wamid.2", ts=TS + 9)], NOW)
        lease = (await claim(mongo_store)).lease
        await mongo_store._write_turn(
            lease, "wamid.1", user(state="asked"), [reply("a"), reply("b")], NOW
        )
        # The process dies here: the user document holds the turn, nothing else was written.
        assert await mongo_store.database["outbox"].count_documents({}) == 0

        restarted = await reopen(mongo_backend)
        try:
            expected = [reply("a"), reply("b")]
            if first_reader == "get_user":
                got = await restarted.get_user(ANA)
                assert got is not None
                assert (got.version, got.state) == (1, "asked")
            elif first_reader == "claim":
                work = await claim(restarted, owner="w2", now=NOW + 31)
                assert (work.record.version, work.record.state) == (1, "asked")
                assert [m.id for m in work.inbound] == ["wamid.2"]
                assert [e.outgoing for e in work.outbox] == expected
            elif first_reader == "read_work":
                work = await restarted.read_work(lease)
                assert [m.id for m in work.inbound] == ["wamid.2"]
                assert [e.outgoing for e in work.outbox] == expected
            else:
                await restarted.commit_turn(lease, None, user(version=1), [reply("c")], NOW + 1)
                expected.append(reply("c"))
            # The first reader alone finished the turn: replies queued, message done.
            assert await restarted.database["outbox"].count_documents({}) == len(expected)
            inbox = await restarted.database["inbox"].find_one({"_id": "wamid.1"})
            assert inbox is not None
            assert inbox["status"] == "done"
            for _ in range(2):  # reading again finds nothing left to repeat
                work = await restarted.read_work(lease)
                assert [e.outgoing for e in work.outbox] == expected
                assert [e.seq for e in work.outbox] == list(range(len(expected)))
                assert [m.id for m in work.inbound] == ["wamid.2"]
                assert await restarted.inbox_counts() == {"pending": 1, "done": 1, "failed": 0}
            assert await restarted.database["outbox"].count_documents({}) == len(expected)
            assert (
                await restarted.database["users"].count_documents({"_turn": {"$exists": True}}) == 0
            )
        finally:
            await restarted.close()

    async def test_failed_turn_is_rolled_forward_as_failed(self, mongo_store: MongoStore) -> None:
        """A failed turn left by a crash marks its message failed with the reason once finished."""
        await mongo_store.add_inbound([inbound("wamid.1")], NOW)
        lease = (await claim(mongo_store)).lease
        await mongo_store._write_turn(
            lease, "wamid.1", user(), [reply("sorry")], NOW, failed="boom"
        )
        assert [e.outgoing for e in await mongo_store.outbox_of(ANA)] == [reply("sorry")]
        doc = await mongo_store.database["inbox"].find_one({"_id": "wamid.1"})
        assert doc is not None
        assert (doc["status"], doc["reason"], doc["finished_at"]) == ("failed", "boom", NOW)

    async def test_enqueue_left_by_a_crash_is_rolled_forward(self, mongo_store: MongoStore) -> None:
        """An enqueue that died after its user write is finished by the next claim."""
        await mongo_store._write_enqueued(ANA, None, [reply("promo")], NOW)
        assert await mongo_store.database["outbox"].count_documents({}) == 0
        assert await mongo_store.users_with_work(NOW, 10) == [ANA]
        work = await claim(mongo_store)
        assert work.record.version == 1
        assert [e.outgoing for e in work.outbox] == [reply("promo")]
        assert await mongo_store.begin_send(work.lease, work.outbox[0], NOW) is not None

    async def test_replies_of_a_crashed_turn_are_a_backlog(self, mongo_store: MongoStore) -> None:
        """The next turn counts a crashed turn's replies as older pending ones: none in flight."""
        lease = (await claim(mongo_store)).lease
        await mongo_store._write_turn(lease, None, user(), [reply("a")], NOW)
        committed = await mongo_store.commit_turn(
            lease, None, user(version=1), [reply("b")], NOW + 1, start_sending=True
        )
        assert committed.backlog
        assert [(e.seq, e.attempts, e.inflight_token) for e in committed.entries] == [(1, 0, "")]

    async def test_roll_forward_never_overwrites_an_outbox_entry(
        self, mongo_store: MongoStore
    ) -> None:
        """Finishing a turn again leaves alone an entry the sender already updated."""
        lease = (await claim(mongo_store)).lease
        await mongo_store._write_turn(lease, None, user(), [reply("a"), reply("b")], NOW)
        [first, _] = (await mongo_store.read_work(lease)).outbox
        sent = dataclasses.replace(first, status="sent", wamid="wamid.o")
        await mongo_store.save_outbox(lease, sent)
        doc = await mongo_store.database["users"].find_one({"_id": ANA})
        assert doc is not None
        entries = [{"_id": first.id, **outbox_to_json(first), "fence": lease.token}]
        doc["_turn"] = {"at": NOW, "message_id": None, "failed": "", "entries": entries}
        await mongo_store._finish_turn(doc)  # a late, second finisher of the same turn
        assert await mongo_store.outbox_for_status(status("wamid.o", "read")) == sent
        assert [e.outgoing for e in (await mongo_store.read_work(lease)).outbox] == [reply("b")]

    async def test_late_finisher_does_not_touch_the_next_turn(
        self, mongo_store: MongoStore
    ) -> None:
        """A slow finisher of turn 1 neither duplicates replies nor clears turn 2's record."""
        lease = (await claim(mongo_store)).lease
        written, _ = await mongo_store._write_turn(lease, None, user(), [reply("a")], NOW)
        stale = dict(written)
        await mongo_store.commit_turn(lease, None, user(version=1), [reply("b")], NOW + 1)
        await mongo_store._write_turn(lease, None, user(version=2), [reply("c")], NOW + 2)
        await mongo_store._finish_turn(stale)
        doc = await mongo_store.database["users"].find_one({"_id": ANA})
        assert doc is not None
        assert doc["version"] == 3
        assert [e["outgoing"]["message"] for e in doc["_turn"]["entries"]] == [reply("c").message]
        entries = (await mongo_store.read_work(lease)).outbox
        assert [e.outgoing for e in entries] == [reply("a"), reply("b"), reply("c")]

    async def test_crashed_turn_without_message_is_work(self, mongo_store: MongoStore) -> None:
        """A turn with replies but no message, left by a crash, is found once the lease expires."""
        lease = (await claim(mongo_store, until=NOW + 30)).lease
        await mongo_store._write_turn(lease, None, user(), [reply("later")], NOW)
        assert await mongo_store.users_with_work(NOW, 10) == []
        assert await mongo_store.users_with_work(NOW + 31, 10) == [ANA]
        work = await claim(mongo_store, owner="w2", until=NOW + 90, now=NOW + 31)
        assert await mongo_store.users_with_work(NOW + 31, 10) == []
        assert [e.outgoing for e in work.outbox] == [reply("later")]


class TestFencing:
    async def test_commit_refuses_a_stale_lease_even_when_the_version_matches(
        self, mongo_store: MongoStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A takeover between the turn's read and its write is caught by the write itself."""
        stale = (await claim(mongo_store, until=NOW + 30)).lease
        await claim(mongo_store, owner="w2", until=NOW + 90, now=NOW + 31)
        checks: list[int] = []
        real = turns_module._checked

        def read_before_the_takeover(doc: Any, lease: Lease, read: int) -> Any:
            checks.append(read)
            return doc if len(checks) == 1 else real(doc, lease, read)

        monkeypatch.setattr(turns_module, "_checked", read_before_the_takeover)
        with pytest.raises(LeaseLost):
            await mongo_store.commit_turn(stale, None, user(), [reply("stale")], NOW + 32)
        assert len(checks) == 2  # the write missed, and the second look named the reason
        doc = await mongo_store.database["users"].find_one({"_id": ANA})
        assert doc is not None
        assert "key" not in doc and "version" not in doc and "_turn" not in doc
        assert await mongo_store.database["outbox"].count_documents({}) == 0

    async def test_takeover_kills_the_old_tokens_fences(self, mongo_store: MongoStore) -> None:
        """A takeover re-fences the old token's entries: pending ones to the new token."""
        old = (await claim(mongo_store, until=NOW + 30)).lease
        sent = await one_sent(mongo_store, old)
        [queued] = (
            await mongo_store.commit_turn(old, None, user(version=1), [reply("b")], NOW)
        ).entries
        assert set((await fences(mongo_store)).values()) == {old.token}
        new = (await claim(mongo_store, owner="w2", until=NOW + 90, now=NOW + 31)).lease
        assert await fences(mongo_store) == {sent.id: f"-{new.token}", queued.id: new.token}

    async def test_adoption_under_a_replaced_lease_cannot_complete(
        self, mongo_store: MongoStore
    ) -> None:
        """An adoption begun just before a takeover cannot land after it."""
        first = (await claim(mongo_store)).lease
        sent = await one_sent(mongo_store, first)
        await mongo_store.release([first])
        stale = (await claim(mongo_store, owner="w1", until=NOW + 30)).lease
        observed = (await fences(mongo_store))[sent.id]
        # ``stale`` adopts the entry sent under ``first``: its first step lands...
        users = mongo_store.database["users"]
        await users.update_one({"_id": ANA}, {"$addToSet": {"adopted": sent.id}})
        # ...then it pauses, and its lease is taken over before the second step.
        await claim(mongo_store, owner="w2", until=NOW + 90, now=NOW + 31)
        swapped = await mongo_store.database["outbox"].update_one(
            {"_id": sent.id, "user": ANA, "fence": observed}, {"$set": {"fence": stale.token}}
        )
        assert swapped.matched_count == 0
        with pytest.raises(LeaseLost):
            await mongo_store.save_outbox(stale, dataclasses.replace(sent, status="failed"))
        assert (await mongo_store.outbox_for_status(status(sent.wamid, "read"))) == sent


class TestOlderData:
    async def test_documents_without_lease_fence_or_arrival_are_used(
        self, mongo_store: MongoStore
    ) -> None:
        """Users, replies and messages stored by the previous version are claimed and sent."""
        db = mongo_store.database
        record = user(version=1, state="asked")
        await db["users"].insert_one({"_id": ANA, **user_to_json(record), "next_seq": 1})
        [entry] = new_outbox_entries(ANA, 0, [reply("a")], NOW)
        await db["outbox"].insert_one({"_id": entry.id, **outbox_to_json(entry)})
        message = inbound("wamid.1")
        await db["inbox"].insert_one(
            {
                "_id": message.id,
                "user": ANA,
                "ts": TS,
                "status": "pending",
                "data": inbound_to_json(message),
                "received_at": NOW,
            }
        )
        await mongo_store.add_inbound([inbound("wamid.2")], NOW)
        work = await claim(mongo_store)
        assert work.record == record
        assert [m.id for m in work.inbound] == ["wamid.1", "wamid.2"]
        assert work.outbox == (entry,)
        started = await mongo_store.begin_send(work.lease, entry, NOW)
        assert started is not None and started.attempts == 1
        committed = await mongo_store.commit_turn(work.lease, "wamid.1", record, [reply("b")], NOW)
        assert [e.seq for e in committed.entries] == [1]


class TestClockSkew:
    async def test_a_lease_is_taken_over_only_after_the_skew(self, mongo_backend: Backend) -> None:
        """With ``clock_skew`` a lease is kept, and not swept, until that long after ``until``."""
        store = MongoStore.from_url(
            mongo_backend.url, database=mongo_backend.database, clock_skew=5.0
        )
        await store.open()
        try:
            await store.add_inbound([inbound("wamid.1")], NOW)
            await claim(store, owner="w1", until=NOW + 30)
            assert await store.claim(ANA, "w2", NOW + 90, NOW + 34) is None
            assert await store.users_with_work(NOW + 34, 10) == []
            assert await store.users_with_work(NOW + 36, 10) == [ANA]
            assert await store.claim(ANA, "w2", NOW + 90, NOW + 36) is not None
        finally:
            await store.close()


class TestIndexes:
    async def test_hot_and_purge_queries_have_indexes(self, mongo_store: MongoStore) -> None:
        """Each per-user query, the sweep and every purge query has an index leading with its
        filter fields (nx-27017 names indexes its own way: compared by keys)."""
        wanted: dict[str, list[tuple[str, ...]]] = {
            "inbox": [("user", "status", "ts", "arrival"), ("status", "finished_at")],
            "statuses": [("user", "applied", "ts"), ("applied", "received_at")],
            "outbox": [
                ("user", "status", "seq"),
                ("user", "wamid"),
                ("user", "fence"),
                ("status", "next_attempt_at"),
                ("status", "created_at"),
            ],
            "users": [("lease.until",)],
            "jobs": [("state", "wake_at"), ("state", "send_at")],
            "template_events": [("received_at",)],
            "pricing": [("ts",)],
        }
        for name, prefixes in wanted.items():
            info: Any = await mongo_store.database[name].index_information()
            keys = [tuple(field for field, _ in index["key"]) for index in info.values()]
            for prefix in prefixes:
                assert any(k[: len(prefix)] == prefix for k in keys), (name, prefix, keys)

    async def test_superseded_indexes_are_dropped(
        self, mongo_backend: Backend, mongo_store: MongoStore
    ) -> None:
        """Indexes of the previous version that a longer one now serves are dropped on open."""
        if mongo_backend.is_nx:
            pytest.skip(
                "nx-27017 names indexes idx_<collection>_<fields> and answers ok to "
                "drop_index by MongoDB's default name (user_1_status_1_ts_1) without dropping"
            )
        await mongo_store.database["inbox"].create_index([("user", 1), ("status", 1), ("ts", 1)])
        await mongo_store.database["statuses"].create_index([("applied", 1)])
        again = await reopen(mongo_backend)
        await again.close()
        assert "user_1_status_1_ts_1" not in await mongo_store.database["inbox"].index_information()
        assert "applied_1" not in await mongo_store.database["statuses"].index_information()


class TestPing:
    async def test_write_ping_writes(self, mongo_store: MongoStore) -> None:
        """Each write ping is a real write: the health document counts them."""
        await mongo_store.ping(write=True)
        await mongo_store.ping(write=True)
        doc = await mongo_store.database["health"].find_one({"_id": "ping"})
        assert doc is not None and doc["writes"] == 2


class TestMotor:
    async def test_store_on_a_motor_database(self, mongo_backend: Backend) -> None:
        """A motor database works, aggregations included, and an owned motor client closes."""
        from motor.motor_asyncio import AsyncIOMotorClient

        client: Any = AsyncIOMotorClient(mongo_backend.url, serverSelectionTimeoutMS=5000)
        store = MongoStore(client[mongo_backend.database], client=client)
        await store.open()
        try:
            await store.add_inbound([inbound("wamid.1")], NOW)
            assert await store.users_with_work(NOW, 10) == [ANA]
            work = await claim(store)
            committed = await store.commit_turn(work.lease, "wamid.1", user(), [reply("a")], NOW)
            assert await store.inbox_counts() == {"pending": 0, "done": 1, "failed": 0}
            assert await store.begin_send(work.lease, committed.entries[0], NOW) is not None
        finally:
            await store.close()
            await store.close()


class TestCancellation:
    # PyMongo drops the connection of a cancelled operation without closing its socket
    # (collected later, a ResourceWarning): the driver's, not what this test is about.
    @pytest.mark.filterwarnings("ignore::ResourceWarning")
    @pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    async def test_a_cancelled_task_stops_even_when_the_driver_swallows_it(
        self, mongo_store: MongoStore
    ) -> None:
        """A task looping over store reads stops when cancelled, every time.

        PyMongo's async API sometimes swallows a cancellation mid-operation (the read then
        returns normally); the dispatcher's sweep loop then never stopped and ``bot run``
        hung at shutdown. Two hundred cancels at varied moments: each task ends cancelled.
        """
        await mongo_store.add_inbound([inbound(f"wamid.{i}", ts=TS + i) for i in range(20)], NOW)

        async def keep_reading() -> None:
            while True:
                await mongo_store.users_with_work(NOW, 100)

        stuck = 0
        for i in range(200):
            task = asyncio.create_task(keep_reading())
            for _ in range(i % 7):  # cancel at different points of the operation
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=5)
            if not done:
                stuck += 1
                task.cancel()
                await asyncio.wait([task], timeout=5)
            else:
                assert task.cancelled(), task
        assert stuck == 0


class TestUnavailable:
    async def test_open_against_a_closed_port(self) -> None:
        """Without a server ``open`` raises ``StoreUnavailable`` naming the URL and what to do."""
        url = f"mongodb://bob:hunter2@127.0.0.1:{free_port()}/bot"
        store = MongoStore.from_url(url, timeout_ms=300)
        with collecting_leaked_sockets():
            try:
                with pytest.raises(StoreUnavailable) as info:
                    await store.open()
            finally:
                await store.close()
        message = str(info.value)
        assert mask_url(url) in message
        assert "check that the server is running" in message
        assert "hunter2" not in message
        assert "\n" not in message
        assert "Topology" not in message
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__

    @pytest.mark.slow
    async def test_every_method_raises_store_unavailable_when_the_server_dies(
        self, tmp_path: Path
    ) -> None:
        """With the server gone mid-run every method raises ``StoreUnavailable``."""
        with collecting_leaked_sockets(), running_nx_27017(tmp_path / "nx") as server:
            store = MongoStore.from_url(f"{server.url}/dying", timeout_ms=300)
            await store.open()
            await store.add_inbound([inbound("wamid.1")], NOW)
            lease = (await claim(store)).lease
            committed = await store.commit_turn(lease, "wamid.1", user(), [reply("a")], NOW)
            entry: OutboxEntry = committed.entries[0]
            server.stop()
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "ping": store.ping,
                "ping_write": lambda: store.ping(write=True),
                "open": store.open,
                "add_inbound": lambda: store.add_inbound([inbound("wamid.2")], NOW),
                "add_statuses": lambda: store.add_statuses([status("wamid.o", "read")], NOW),
                "claim": lambda: store.claim(ANA, "w", NOW + 1, NOW),
                "read_work": lambda: store.read_work(lease),
                "renew": lambda: store.renew([lease], NOW + 60),
                "release": lambda: store.release([lease]),
                "users_with_work": lambda: store.users_with_work(NOW, 10),
                "get_user": lambda: store.get_user(ANA),
                "commit_turn": lambda: store.commit_turn(
                    lease, None, committed.record, [reply("b")], NOW
                ),
                "enqueue": lambda: store.enqueue(ANA, [reply("c")], NOW),
                "begin_send": lambda: store.begin_send(lease, entry, NOW),
                "save_outbox": lambda: store.save_outbox(lease, entry),
                "outbox_for_status": lambda: store.outbox_for_status(status("wamid.o", "read")),
                "finish_statuses": lambda: store.finish_statuses(ANA, [("wamid.o", "read")]),
                "outbox_of": lambda: store.outbox_of(ANA),
                "purge": lambda: store.purge(NOW, 10),
                "inbox_counts": store.inbox_counts,
            }
            try:
                results = await asyncio.gather(
                    *(c() for c in calls.values()), return_exceptions=True
                )
            finally:
                await store.close()
        wrong = {
            name: repr(result)
            for name, result in zip(calls, results, strict=True)
            if not isinstance(result, StoreUnavailable)
        }
        assert wrong == {}


class TestConstruction:
    @pytest.mark.parametrize(
        ("url", "masked"),
        [
            (
                "mongodb://bob:s3cr%40t@db.example.com:27017/bot?authSource=admin",
                "mongodb://bob:***@db.example.com:27017/bot?authSource=admin",
            ),
            (
                "mongodb+srv://bob:pw@cluster0.example.net/bot",
                "mongodb+srv://bob:***@cluster0.example.net/bot",
            ),
            ("mongodb://db1:27017,db2:27017/bot", "mongodb://db1:27017,db2:27017/bot"),
            (
                "mongodb://h/bot?tls=true&tlsCertificateKeyFilePassword=k3y&w=1",
                "mongodb://h/bot?tls=true&tlsCertificateKeyFilePassword=***&w=1",
            ),
        ],
    )
    def test_mask_url(self, url: str, masked: str) -> None:
        """Passwords and secret-looking options are replaced by ``***``; the rest is kept."""
        assert mask_url(url) == masked

    async def test_description_never_shows_the_password(self) -> None:
        """The description is the URL with the password masked."""
        store = MongoStore.from_url("mongodb://bob:s3cret@db.example.com:27017/bot")
        try:
            assert store.description == "mongodb://bob:***@db.example.com:27017/bot"
        finally:
            await store.close()

    @pytest.mark.parametrize(
        ("url", "database", "name"),
        [
            ("mongodb://db.example.com/bot", None, "bot"),
            ("mongodb://db.example.com", None, "windowbot"),
            ("mongodb://db.example.com/bot", "other", "other"),
        ],
    )
    async def test_database_name(self, url: str, database: str | None, name: str) -> None:
        """The database is the argument, else the URL's path, else ``windowbot``."""
        store = MongoStore.from_url(url, database=database)
        try:
            assert store.database.name == name
        finally:
            await store.close()

    @pytest.mark.parametrize(
        ("query", "concern"),
        [
            ("", WriteConcern(w="majority", j=True, wtimeout=30_000)),
            ("?w=1&journal=false&wTimeoutMS=200", WriteConcern(w=1, j=False, wtimeout=200)),
        ],
    )
    async def test_write_concern(self, query: str, concern: WriteConcern) -> None:
        """Writes are journaled, majority-acknowledged and time-limited unless the URL says
        otherwise."""
        store = MongoStore.from_url(f"mongodb://db.example.com/bot{query}")
        try:
            assert store.database.write_concern == concern
        finally:
            await store.close()

    @pytest.mark.parametrize(("query", "seconds"), [("", 30.0), ("?socketTimeoutMS=1500", 1.5)])
    async def test_socket_timeout(self, query: str, seconds: float) -> None:
        """An answer is awaited ``operation_timeout_ms`` unless the URL says otherwise."""
        store = MongoStore.from_url(f"mongodb://db.example.com/bot{query}")
        try:
            assert store.database.client.options.pool_options.socket_timeout == seconds
        finally:
            await store.close()

    def test_invalid_url(self) -> None:
        """A URL the driver cannot parse is a ``ConfigError`` that shows no password."""
        with pytest.raises(ConfigError) as info:
            MongoStore.from_url("mongodb://bob:hunter2@db.example.com:port/bot")
        assert "bob:***@" in str(info.value)
        assert "hunter2" not in str(info.value)

    async def test_close_leaves_a_callers_client_open(self, mongo_backend: Backend) -> None:
        """A store built on the caller's database does not close the caller's client."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_backend.url)
        try:
            store = MongoStore(client[mongo_backend.database])
            assert mongo_backend.database in store.description
            await store.open()
            await store.close()
            await client[mongo_backend.database].command("ping")
        finally:
            await client.close()

    async def test_close_closes_its_own_client(self, mongo_backend: Backend) -> None:
        """A store built by ``from_url`` closes its client: using it afterwards fails."""
        store = await reopen(mongo_backend)
        await store.close()
        with pytest.raises(StoreError):
            await store.ping()
