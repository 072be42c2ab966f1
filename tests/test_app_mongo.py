"""The webhook server on the Mongo store, through PyMongo against an nx-27017 server.

Set BOT_TEST_MONGODB_URI to run the tests taking ``mongo_url`` against that MongoDB as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from bot.app import DISPATCHER, Components, create_app
from bot.errors import StoreUnavailable
from bot.store.mongo import MongoStore
from tests.conftest import MakeClient, make_config, recorded, signed
from tests.mongo_server import collecting_leaked_sockets, running_nx_27017

pytestmark = pytest.mark.mongo


@pytest.fixture(autouse=True, scope="module")
def _collect_driver_leaks() -> Iterator[None]:
    """After this module, collect sockets PyMongo leaked on failed connects (PYTHON-5867)."""
    yield
    with collecting_leaked_sockets():
        pass


async def test_batch_lands_in_mongo_once(make_client: MakeClient, mongo_url: str) -> None:
    """A batch delivered twice yields one inbox record per message and the user records."""
    store = MongoStore.from_url(mongo_url)
    client = await make_client(components=Components(store=store))
    raw, headers = signed(recorded("batch.json"))
    for _ in range(2):
        assert (await client.post("/webhook", data=raw, headers=headers)).status == 200
    await client.app[DISPATCHER].idle()
    assert await store.inbox_counts() == {"pending": 0, "done": 4, "failed": 0}
    ana = await store.get_user("5511999990000")
    assert ana is not None and (ana.message_count, ana.last_inbound_at) == (2, 1764000011)
    await client.close()


async def test_mongo_down_mid_run_is_503_then_retry_succeeds(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """With the server gone the delivery gets 503; after it is back Meta's retry lands."""
    data = tmp_path / "nx"
    with running_nx_27017(data) as server:
        url = server.url
        store = MongoStore.from_url(f"{url}/bot", timeout_ms=500)
        client = await make_client(components=Components(store=store))
        server.stop()
        raw, headers = signed(recorded("text.json"))
        with collecting_leaked_sockets():
            resp = await client.post("/webhook", data=raw, headers=headers)
            assert resp.status == 503
            assert (await client.get("/healthz")).status == 503
            await client.close()


async def test_mongo_down_at_startup_is_a_clear_error(tmp_path: Path) -> None:
    """A server that does not answer stops start-up with the (masked) URL in the message."""
    from tests.mongo_server import free_port

    url = f"mongodb://bot:secret@127.0.0.1:{free_port()}/bot"
    cfg = make_config(tmp_path)
    app = create_app(cfg, Components(store=MongoStore.from_url(url, timeout_ms=300)))
    with collecting_leaked_sockets(), pytest.raises(StoreUnavailable) as info:
        await TestServer(app).start_server()
    assert "127.0.0.1" in str(info.value) and "secret" not in str(info.value)
