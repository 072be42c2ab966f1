"""Hostile input over real loopback HTTP: malformed signed bodies, odd headers, long URLs.

No signed body may get a 5xx or leave a half-stored message, and no request may make the
server print the verify token (bot.app's receive, bot.webhook, the server bot.cli starts).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bot.app import DISPATCHER, Components, create_app
from bot.cli import make_runner
from bot.errors import PayloadError
from bot.store.base import Store
from bot.store.mongo import MongoStore
from bot.store.sqlite import SQLiteStore
from bot.webhook import SIGNATURE_HEADER, parse_body, sign
from tests.conftest import SECRET, AppClient, MakeClient, make_config, recorded, signed
from tests.test_webhook import envelope, hostile_bodies, nested, status_item, text_item

EMPTY = {"pending": 0, "done": 0, "failed": 0}
TOKEN = "verify-me-9f3a61c2"  # the configured verify token: never to be printed


async def raw_request(host: str, port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send exactly these bytes (headers as given, not re-encoded); the status and the body."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def address(client: AppClient) -> tuple[str, int]:
    """Where the test server listens."""
    assert client.port is not None
    return client.host, client.port


def post_head(body: bytes, *extra: bytes) -> bytes:
    """A POST /webhook request head for ``body`` with the extra header lines given."""
    lines = [
        b"POST /webhook HTTP/1.1",
        b"Host: localhost",
        b"Content-Type: application/json",
        b"Connection: close",
        *extra,
    ]
    if not any(line.lower().startswith(b"transfer-encoding") for line in extra):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n"


class TestMalformedSignedBodies:
    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (envelope(text_item(wamid='"wamid.\\ud800"')), "lone surrogate"),
            (envelope(text_item('"\ud800"')), "not UTF-8"),  # the surrogate as raw UTF-8
            (envelope(text_item('{"k\\u0000": 1}')), "key with NUL"),
            (envelope(text_item(str(2**64))), "beyond signed 64 bits"),
            (envelope(text_item("9" * 5000)), "beyond signed 64 bits"),
            (envelope(text_item("1e400")), "too large for a float"),
            (envelope(text_item("Infinity")), "Infinity is not a JSON number"),
            (envelope(text_item("NaN")), "NaN is not a JSON number"),
            (envelope(text_item("[" * 1000 + "]" * 1000)), "deeper than 64 levels"),
            (envelope(text_item(nested(65))), "deeper than 64 levels"),
            (envelope(text_item(ts='"253402300800"')), "from 1000000000 to 4102444800"),
            (envelope(text_item(ts='"1000000000000"')), "messages[0].timestamp"),
            (envelope(text_item(ts=str(2**64))), "beyond signed 64 bits"),
            (envelope(status=status_item('"253402300800"')), "statuses[0].timestamp"),
        ],
        ids=[
            "lone-surrogate-escape",
            "surrogate-as-utf8",
            "nul-in-key",
            "int-2**64",
            "int-5000-digits",
            "1e400",
            "Infinity",
            "NaN",
            "1000-levels",
            "65-levels",
            "year-9999",
            "milliseconds",
            "timestamp-2**64",
            "status-year-9999",
        ],
    )
    async def test_is_400_with_the_reason_and_stores_nothing(
        self, make_client: MakeClient, store: SQLiteStore, body: bytes, reason: str
    ) -> None:
        """Each body the stores could not keep is refused whole, with the reason, before storing."""
        client = await make_client()
        raw, headers = signed(body)
        resp = await client.post("/webhook", data=raw, headers=headers)
        assert resp.status == 400
        assert reason in await resp.text()
        assert await store.inbox_counts() == EMPTY

    async def test_a_good_message_next_to_a_bad_one_is_not_stored_either(
        self, make_client: MakeClient, store: SQLiteStore
    ) -> None:
        """A batch is all or nothing: one bad item refuses the whole body, so Meta retries it."""
        client = await make_client()
        good = text_item(wamid='"wamid.GOOD"')
        bad = text_item(wamid='"wamid.BAD"', ts='"253402300800"')
        raw, headers = signed(envelope(f"{good}, {bad}"))
        resp = await client.post("/webhook", data=raw, headers=headers)
        assert resp.status == 400 and "messages[1].timestamp" in await resp.text()
        assert await store.inbox_counts() == EMPTY


class TestUnreadableBodies:
    @pytest.mark.parametrize(
        ("encoding", "body"),
        [
            (b"gzip", b'{"object": "whatsapp_business_account", "entry": []}'),
            (b"deflate", b"not deflate data at all"),
            (b"gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 40),  # bad blocks
        ],
        ids=["json-as-gzip", "text-as-deflate", "gzip-header-bad-blocks"],
    )
    async def test_bad_content_encoding_is_400_with_a_reason(
        self, make_client: MakeClient, store: SQLiteStore, encoding: bytes, body: bytes
    ) -> None:
        """A body that is not what its Content-Encoding says is 400 naming it, not a 500."""
        client = await make_client()
        header = f"{SIGNATURE_HEADER}: {sign(body, SECRET)}".encode()
        head = post_head(body, b"Content-Encoding: " + encoding, header)
        status, text = await raw_request(*address(client), head, body)
        assert status == 400
        assert b"could not be read" in text and encoding in text
        assert await store.inbox_counts() == EMPTY

    async def test_gzip_bomb_is_413(self, make_client: MakeClient, store: SQLiteStore) -> None:
        """A small gzip body that inflates past the 3 MB limit is refused as too large."""
        client = await make_client()
        body = gzip.compress(b"[" * (40 * 1024 * 1024))
        raw, headers = signed(body)
        resp = await client.post(
            "/webhook", data=raw, headers={**headers, "Content-Encoding": "gzip"}
        )
        assert resp.status == 413
        assert await store.inbox_counts() == EMPTY

    async def test_broken_chunked_body_is_400(
        self, make_client: MakeClient, store: SQLiteStore
    ) -> None:
        """A chunked body with a chunk size that is not hex is refused, not a 500."""
        client = await make_client()
        head = post_head(b"", b"Transfer-Encoding: chunked", f"{SIGNATURE_HEADER}: x".encode())
        status, _ = await raw_request(*address(client), head, b"zz\r\n{}\r\n0\r\n\r\n")
        assert status == 400
        assert await store.inbox_counts() == EMPTY


class TestHostileHeaders:
    @pytest.mark.parametrize(
        "value",
        [
            b"sha256=\xff\xfe",  # not UTF-8: aiohttp hands it over with lone surrogates
            b"sha256=\xc3\xa9" + b"0" * 63,  # UTF-8, but not ASCII
            b"\xf0\x9f\x98\x80",
        ],
    )
    async def test_non_ascii_signature_is_401_with_a_reason(
        self, make_client: MakeClient, store: SQLiteStore, value: bytes
    ) -> None:
        """A signature header that is not ASCII is refused as a bad signature, not a 500."""
        client = await make_client()
        body = recorded("text.json")
        head = post_head(body, SIGNATURE_HEADER.encode() + b": " + value)
        status, text = await raw_request(*address(client), head, body)
        assert status == 401 and b"must be ASCII" in text
        assert await store.inbox_counts() == EMPTY


@pytest.fixture
async def cli_server(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    """The app served the way ``bot run`` serves it (bot.cli.make_runner), on a free port."""
    config = make_config(tmp_path, WHATSAPP_VERIFY_TOKEN=TOKEN)
    app = create_app(config, Components(store=SQLiteStore(tmp_path / "bot.db")))
    runner = make_runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield host, port
    finally:
        await runner.cleanup()


def handshake(token: str, challenge_length: int) -> bytes:
    """Meta's GET handshake with this token and a challenge this long."""
    query = f"hub.mode=subscribe&hub.verify_token={token}&hub.challenge={'7' * challenge_length}"
    return f"GET /webhook?{query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()


class TestLongHandshakeUrl:
    @pytest.mark.parametrize(
        ("token", "length", "status"),
        [
            (TOKEN, 9000, 200),  # over aiohttp's 8190 default, within the server's 16 KiB
            ("SECRET-guess-1", 9000, 403),
            (TOKEN, 40_000, 400),  # past any line limit: aiohttp's own parser refuses it
            ("SECRET-guess-2", 400_000, 400),
        ],
    )
    async def test_token_never_in_answer_or_logs(
        self,
        cli_server: tuple[str, int],
        caplog: pytest.LogCaptureFixture,
        token: str,
        length: int,
        status: int,
    ) -> None:
        """However long the URL, neither the answer nor any log line repeats the token."""
        caplog.set_level(logging.DEBUG)
        with structlog.testing.capture_logs() as events:
            answer, text = await raw_request(*cli_server, handshake(token, length))
        assert answer == status
        assert token.encode() not in text
        assert token not in caplog.text
        assert token not in repr(events)
        if status == 400:
            assert text.startswith(b"400 Bad Request: the request line") and len(text) < 200
            assert [e["event"] for e in events] == ["http_request_refused"]

    async def test_aiohttp_log_records_have_the_token_scrubbed(
        self, cli_server: tuple[str, int], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Defence in depth: a token in an aiohttp log message or traceback is masked."""
        logger = logging.getLogger("aiohttp.server")
        try:
            raise ValueError(f"bad line b'GET /webhook?hub.verify_token={TOKEN}&x=1'")
        except ValueError:
            logger.exception("Error handling GET /webhook?hub.verify_token=%s&a=b", TOKEN)
        assert TOKEN not in caplog.text
        assert caplog.text.count("hub.verify_token=***") >= 2  # message and traceback


class TestAnySignedBody:
    @pytest.fixture
    async def client(self, make_client: MakeClient) -> AppClient:
        """One app for every example of the property (Hypothesis reuses it)."""
        return await make_client()

    @pytest.fixture
    async def on_mongo(
        self, make_client: MakeClient, mongo_url: str
    ) -> AsyncIterator[tuple[AppClient, MongoStore]]:
        """The same on a Mongo store: the app, and the store it writes to."""
        store = MongoStore.from_url(mongo_url)
        client = await make_client(components=Components(store=store))
        yield client, store
        await client.close()  # before the server goes

    @pytest.fixture
    def stored(self) -> set[str]:
        """The wamids earlier examples got stored, to tell new messages from duplicates."""
        return set()

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    async def test_never_5xx_and_never_half_stored(
        self,
        client: AppClient,
        store: SQLiteStore,
        stored: set[str],
        caplog: pytest.LogCaptureFixture,
        data: st.DataObject,
    ) -> None:
        """Random JSON at any level of a signed envelope: 200 with all stored, or 4xx with none."""
        await one_hostile_body(client, store, stored, caplog, data)

    @settings(
        max_examples=50,  # secantusdb takes ~40 writes/s
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    async def test_never_5xx_and_never_half_stored_on_mongo(
        self,
        on_mongo: tuple[AppClient, MongoStore],
        stored: set[str],
        caplog: pytest.LogCaptureFixture,
        data: st.DataObject,
    ) -> None:
        """The same property with the messages stored in MongoDB."""
        await one_hostile_body(*on_mongo, stored, caplog, data)


async def one_hostile_body(
    client: AppClient,
    store: Store,
    stored: set[str],
    caplog: pytest.LogCaptureFixture,
    data: st.DataObject,
) -> None:
    """Post one drawn body: 200 with all its messages stored, or 4xx with none of them."""
    body = data.draw(hostile_bodies(f"wamid.P{len(stored)}"))  # new unless refused
    before = sum((await store.inbox_counts()).values())
    raw, headers = signed(body)
    with structlog.testing.capture_logs() as events:
        resp = await client.post("/webhook", data=raw, headers=headers)
        text = await resp.text()
        await client.app[DISPATCHER].idle()
    after = sum((await store.inbox_counts()).values())
    event(f"answered {resp.status}")
    try:
        expected: Any = parse_body(body)
    except PayloadError:
        expected = None
    if expected is None:
        assert 400 <= resp.status < 500 and text, text
        assert after == before  # none of this body's messages stored
    else:
        assert resp.status == 200, text
        new = {m.id for m in expected.messages} - stored
        assert after - before == len(new)  # every message stored (duplicates once)
        stored.update(new)
    assert not [e for e in events if e["log_level"] in ("error", "critical")], events
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    counts = await store.inbox_counts()
    assert counts["pending"] == counts["failed"] == 0  # each stored message read back
