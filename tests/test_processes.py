"""Real ``bot run`` processes on one store: kill -9, several processes, per-user order.

Each test runs on SQLite, on nx-27017 and, when BOT_TEST_MONGODB_URI is set, on that server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.store.base import Store
from bot.store.mongo import MongoStore
from bot.store.sqlite import SQLiteStore
from bot.testing import text_message
from tests.conftest import SECRET, signed
from tests.mongo_server import MONGO_SERVER_NAMES, mongo_database
from tests.server import ROOT, BotProcess

pytestmark = pytest.mark.slow


ORDER_FLOWS = ROOT / "tests" / "data" / "flows_order"


def delivery(user: str, n: int, ts: int, text: str = "") -> dict[str, object]:
    """A one-message delivery from ``user``."""
    return text_message(
        user, text or f"m{n}", wamid=f"wamid.{user}.{n}", timestamp=ts, name=f"U{user}"
    )


async def post_all(urls: list[str], bodies: list[dict[str, object]]) -> list[int]:
    """POST each body (round-robin over ``urls``) concurrently; the HTTP statuses."""
    async with aiohttp.ClientSession() as session:

        async def one(i: int, body: dict[str, object]) -> int:
            raw, headers = signed(body)
            async with session.post(
                f"{urls[i % len(urls)]}/webhook", data=raw, headers=headers
            ) as resp:
                return resp.status

        return await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))


def env_for(tmp_path: Path, store_url: str = "") -> dict[str, str]:
    # The store timeout is raised from 5 s: these tests post hundreds of webhooks at once,
    # and secantusdb takes ~145 inserts/s, so on a busy machine the last ones can wait longer
    # than 5 s and get a 503 (right for Meta, which retries; these tests check what is
    # processed, not how fast the store answers).
    config = tmp_path / "windowbot.toml"
    config.write_text(
        "[server]\nstore_timeout_seconds = 60.0\n"
        "[workers]\nlease_seconds = 2.0\nsweep_seconds = 0.2\n"
    )
    return {
        "BOT_CONFIG": str(config),
        "WHATSAPP_APP_SECRET": SECRET,
        "BOT_STORE_URL": store_url or f"sqlite:///{tmp_path / 'bot.db'}",
        "BOT_FLOWS_DIR": str(tmp_path / "no-flows"),
        "BOT_RECORD_ONLY": "1",
    }


@pytest.fixture(
    params=[
        "sqlite",
        *(pytest.param(name, marks=pytest.mark.mongo, id=name) for name in MONGO_SERVER_NAMES),
    ]
)
async def shared_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, Store]]:
    """A store URL for the bot processes and the test's own handle on the same data.

    On SQLite, and on each Mongo server: a fresh nx-27017, and BOT_TEST_MONGODB_URI's.
    """
    if request.param == "sqlite":
        store: Store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        yield f"sqlite:///{tmp_path / 'bot.db'}", store
        await store.close()
        return
    with mongo_database(request.param, tmp_path / "nx", prefix="crash") as url:
        store = MongoStore.from_url(url)
        await store.open()
        yield url, store
        await store.close()


async def wait_done(store: Store, expected: int, within: float = 120.0) -> dict[str, int]:
    """The inbox counts once ``expected`` messages are finished, or after ``within`` seconds.

    ``within`` only guards against a hang: on a busy machine secantusdb (~40 updates/s) went
    down to about one turn a second, and 51 turns then outlasted a 30 s guard.
    """
    deadline = time.monotonic() + within
    while True:
        counts = await store.inbox_counts()
        if counts["done"] + counts["failed"] >= expected or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.05)


async def test_kill_9_after_acks_then_restart_processes_each_message_once(
    tmp_path: Path, shared_store: tuple[str, Store]
) -> None:
    """Every message acknowledged before a SIGKILL is processed exactly once after restart."""
    url, store = shared_store
    users = [f"1555000{u:04d}" for u in range(20)]
    held = users[:10]  # a lease the test holds keeps these users' messages pending
    now = time.time() - 60  # messages written in the last minute (never in the future)
    leases = []
    for user in held:
        work = await store.claim(user, "test-holds", now + 3600, now)
        assert work is not None
        leases.append(work.lease)
    ts = int(now)
    bodies = [delivery(u, n, ts + n) for n in range(15) for u in users]
    server = BotProcess(env_for(tmp_path, url), tmp_path / "bot1.log")
    await server.start()
    statuses = await post_all([server.url], bodies)
    server.kill9()
    assert statuses == [200] * len(bodies), server.errors()
    counts = await store.inbox_counts()
    assert counts["pending"] + counts["done"] == len(bodies)  # every ack is on disk
    assert counts["pending"] >= 150  # the held users' messages were not processed yet
    await store.release(leases)
    async with BotProcess(env_for(tmp_path, url), tmp_path / "bot2.log"):
        counts = await wait_done(store, len(bodies))
    assert counts == {"pending": 0, "done": len(bodies), "failed": 0}
    for user in users:
        record = await store.get_user(user)
        assert record is not None
        assert (record.message_count, record.last_inbound_at) == (15, ts + 14), user


async def test_two_processes_share_one_store(
    tmp_path: Path, shared_store: tuple[str, Store]
) -> None:
    """Deliveries spread over two processes on one store are each processed once."""
    url, store = shared_store
    users = [f"1555100{u:04d}" for u in range(10)]
    ts = int(time.time())
    bodies = [delivery(u, n, ts + n) for n in range(20) for u in users]
    async with (
        BotProcess(env_for(tmp_path, url), tmp_path / "a.log") as a,
        BotProcess(env_for(tmp_path, url), tmp_path / "b.log") as b,
    ):
        statuses = await post_all([a.url, b.url], bodies + bodies)  # each twice, both sides
        assert statuses == [200] * (2 * len(bodies)), a.errors() + b.errors()
        counts = await wait_done(store, len(bodies))
    assert counts == {"pending": 0, "done": len(bodies), "failed": 0}
    for user in users:
        record = await store.get_user(user)
        assert record is not None and record.message_count == 20, user
    logs = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    assert "Traceback" not in logs
    assert sum(1 for line in logs.splitlines() if '"message_duplicate"' in line) == len(bodies)
    _ = json


async def fifty(
    tmp_path: Path, shared_store: tuple[str, Store], processes: int, *, at_once: bool
) -> tuple[list[str], list[str]]:
    """One user's 50 messages over ``processes`` servers: what was posted, what was handled.

    ``at_once``: all posted concurrently, in shuffled order; else one after the other (each
    acknowledged before the next is posted), all stamped with the same second and opaque
    random wamids, as Meta's whole-second timestamps and wamids are.
    """
    url, store = shared_store
    env = {**env_for(tmp_path, url), "BOT_FLOWS_DIR": str(ORDER_FLOWS), "BOT_RECORD_ONLY": "0"}
    servers = [BotProcess(env, tmp_path / f"bot{i}.log") for i in range(processes)]
    user, ts = "15552000001", int(time.time())
    rng = random.Random(processes)
    try:
        for server in servers:
            await server.start()
        urls = [s.url for s in servers]
        assert await post_all(urls[:1], [delivery(user, 0, ts, "start")]) == [200]
        await wait_done(store, 1)
        texts = [f"m{n}" for n in range(1, 51)]
        if at_once:
            bodies = [delivery(user, n, ts + n) for n in range(1, 51)]
            rng.shuffle(bodies)
            assert await post_all(urls, bodies) == [200] * 50
        else:
            for n, text in enumerate(texts):
                wamid = "wamid." + base64.b64encode(rng.randbytes(18)).decode()
                body = text_message(user, text, wamid=wamid, timestamp=ts, name="U")
                assert await post_all([urls[n % len(urls)]], [body]) == [200]
        counts = await wait_done(store, 51)
    finally:
        for server in servers:
            server.stop()
    assert counts == {"pending": 0, "done": 51, "failed": 0}
    record = await store.get_user(user)
    assert record is not None
    assert record.message_count == 51
    return texts, list(record.variables["seen"])


async def test_fifty_messages_at_once_are_each_handled_once(
    tmp_path: Path, shared_store: tuple[str, Store]
) -> None:
    """50 concurrent deliveries from one user are all handled, once each, no update lost."""
    posted, handled = await fifty(tmp_path, shared_store, processes=1, at_once=True)
    assert sorted(handled) == sorted(posted)


async def test_same_second_messages_over_two_processes_in_arrival_order(
    tmp_path: Path, shared_store: tuple[str, Store]
) -> None:
    """Same-second messages with opaque wamids, over two processes: handled as they came."""
    posted, handled = await fifty(tmp_path, shared_store, processes=2, at_once=False)
    assert handled == posted
