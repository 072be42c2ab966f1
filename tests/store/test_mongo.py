"""What only the Mongo store does: crash roll-forward, URLs, errors when the server is down."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient, WriteConcern

from bot.errors import ConfigError, StoreError, StoreUnavailable
from bot.store.base import outbox_to_json
from bot.store.mongo import MongoStore, mask_url
from tests.mongo_server import collecting_leaked_sockets, free_port, running_nx_27017
from tests.store.conftest import Backend
from tests.store.test_contract import ANA, NOW, inbound, reply, status, user

pytestmark = pytest.mark.mongo


async def reopen(backend: Backend) -> MongoStore:
    """A new store on the same database, as a restarted process would open it."""
    store = backend.make()
    assert isinstance(store, MongoStore)
    await store.open()
    return store


class TestCrashRecovery:
    @pytest.mark.parametrize(
        "first_reader", ["get_user", "pending_inbound", "pending_outbox", "commit_turn"]
    )
    async def test_turn_left_by_a_crash_is_rolled_forward_once(
        self, mongo_store: MongoStore, mongo_backend: Backend, first_reader: str
    ) -> None:
        """A crash right after the user write loses nothing: the next reader finishes the turn."""
        await mongo_store.add_inbound(
            [inbound("wamid.1"), inbound("wamid.2", ts=1_764_000_009)], NOW
        )
        await mongo_store._write_turn("wamid.1", user(state="asked"), [reply("a"), reply("b")], NOW)
        # The process dies here: the user document holds the turn, nothing else was written.
        assert await mongo_store.database["outbox"].count_documents({}) == 0

        restarted = await reopen(mongo_backend)
        try:
            expected = [reply("a"), reply("b")]
            if first_reader == "get_user":
                got = await restarted.get_user(ANA)
                assert got is not None
                assert (got.version, got.state) == (1, "asked")
            elif first_reader == "pending_inbound":
                assert [m.id for m in await restarted.pending_inbound(ANA, 10)] == ["wamid.2"]
            elif first_reader == "pending_outbox":
                assert [e.outgoing for e in await restarted.pending_outbox(ANA, 10)] == expected
            else:
                await restarted.commit_turn(None, user(version=1), [reply("c")], NOW + 1)
                expected.append(reply("c"))
            # The first reader alone finished the turn: replies queued, message done.
            assert await restarted.database["outbox"].count_documents({}) == len(expected)
            inbox = await restarted.database["inbox"].find_one({"_id": "wamid.1"})
            assert inbox is not None
            assert inbox["status"] == "done"
            for _ in range(2):  # reading again finds nothing left to repeat
                entries = await restarted.pending_outbox(ANA, 10)
                assert [e.outgoing for e in entries] == expected
                assert [e.seq for e in entries] == list(range(len(expected)))
                assert [m.id for m in await restarted.pending_inbound(ANA, 10)] == ["wamid.2"]
                assert await restarted.inbox_counts() == {"pending": 1, "done": 1, "failed": 0}
            assert await restarted.database["outbox"].count_documents({}) == len(expected)
            assert (
                await restarted.database["users"].count_documents({"_turn": {"$exists": True}}) == 0
            )
        finally:
            await restarted.close()

    async def test_roll_forward_never_overwrites_an_outbox_entry(
        self, mongo_store: MongoStore
    ) -> None:
        """Finishing a turn again leaves alone an entry the sender already updated."""
        await mongo_store._write_turn(None, user(), [reply("a"), reply("b")], NOW)
        [first, _] = await mongo_store.pending_outbox(ANA, 10)
        await mongo_store.save_outbox(dataclasses.replace(first, status="sent", wamid="wamid.o"))
        doc = await mongo_store.database["users"].find_one({"_id": ANA})
        assert doc is not None
        entries = [{"_id": first.id, **outbox_to_json(first)}]
        doc["_turn"] = {"at": NOW, "message_id": None, "entries": entries}
        await mongo_store._finish_turn(doc)  # a late, second finisher of the same turn
        sent = await mongo_store.outbox_by_wamid("wamid.o")
        assert sent is not None
        assert sent.status == "sent"
        assert [e.outgoing for e in await mongo_store.pending_outbox(ANA, 10)] == [reply("b")]

    async def test_late_finisher_does_not_touch_the_next_turn(
        self, mongo_store: MongoStore
    ) -> None:
        """A slow finisher of turn 1 neither duplicates replies nor clears turn 2's record."""
        written = await mongo_store._write_turn(None, user(), [reply("a")], NOW)
        stale = dict(written)
        await mongo_store.commit_turn(None, user(version=1), [reply("b")], NOW + 1)
        await mongo_store._write_turn(None, user(version=2), [reply("c")], NOW + 2)
        await mongo_store._finish_turn(stale)
        doc = await mongo_store.database["users"].find_one({"_id": ANA})
        assert doc is not None
        assert doc["version"] == 3
        assert [e["outgoing"]["message"] for e in doc["_turn"]["entries"]] == [reply("c").message]
        entries = await mongo_store.pending_outbox(ANA, 10)
        assert [e.outgoing for e in entries] == [reply("a"), reply("b"), reply("c")]

    async def test_crashed_turn_without_message_is_work(self, mongo_store: MongoStore) -> None:
        """A turn with replies but no inbound message, left by a crash, is found by the sweep."""
        await mongo_store._write_turn(None, user(), [reply("later")], NOW)
        assert await mongo_store.users_with_work(NOW, 10) == [ANA]
        await mongo_store.acquire_user(ANA, "w1", NOW + 30, NOW)
        assert await mongo_store.users_with_work(NOW, 10) == []
        assert [e.outgoing for e in await mongo_store.pending_outbox(ANA, 10)] == [reply("later")]


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
            record = (await store.commit_turn("wamid.1", user(), [reply("a")], NOW)).record
            [entry] = await store.pending_outbox(ANA, 10)
            server.stop()
            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "ping": store.ping,
                "open": store.open,
                "add_inbound": lambda: store.add_inbound([inbound("wamid.2")], NOW),
                "add_statuses": lambda: store.add_statuses([status("wamid.o", "read")], NOW),
                "acquire_user": lambda: store.acquire_user(ANA, "w", NOW + 1, NOW),
                "release_user": lambda: store.release_user(ANA, "w"),
                "users_with_work": lambda: store.users_with_work(NOW, 10),
                "get_user": lambda: store.get_user(ANA),
                "pending_inbound": lambda: store.pending_inbound(ANA, 10),
                "commit_turn": lambda: store.commit_turn(None, record, [reply("b")], NOW),
                "fail_inbound": lambda: store.fail_inbound("wamid.1", "x", NOW),
                "pending_statuses": lambda: store.pending_statuses(ANA, 10),
                "finish_statuses": lambda: store.finish_statuses([("wamid.o", "read")]),
                "pending_outbox": lambda: store.pending_outbox(ANA, 10),
                "outbox_by_wamid": lambda: store.outbox_by_wamid("wamid.o"),
                "save_outbox": lambda: store.save_outbox(entry),
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
            ("", WriteConcern(w="majority", j=True)),
            ("?w=1&journal=false", WriteConcern(w=1, j=False)),
        ],
    )
    async def test_write_concern(self, query: str, concern: WriteConcern) -> None:
        """Writes are journaled and majority-acknowledged unless the URL says otherwise."""
        store = MongoStore.from_url(f"mongodb://db.example.com/bot{query}")
        try:
            assert store.database.write_concern == concern
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
