"""The webhook server over real loopback HTTP, on a real SQLite store (bot.app)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from bot.app import DISPATCHER, Components, create_app
from bot.config import Config
from bot.errors import ConfigError, StoreUnavailable
from bot.store.sqlite import SQLiteStore
from tests.conftest import SECRET, MakeClient, make_config, recorded, signed
from tests.store_access import pending_statuses


async def settle(client: object) -> None:
    """Wait until the dispatcher has worked through everything it was told about."""
    await client.app[DISPATCHER].idle()  # type: ignore[attr-defined]


class TestVerification:
    async def test_handshake_echoes_challenge(self, make_client: MakeClient) -> None:
        """GET /webhook with the right token answers the challenge as plain text."""
        client = await make_client()
        resp = await client.get(
            "/webhook",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": "verify-me",
                "hub.challenge": "1158201444",
            },
        )
        assert resp.status == 200 and await resp.text() == "1158201444"

    async def test_wrong_token_is_403(self, make_client: MakeClient) -> None:
        """A wrong verify token is refused with 403."""
        client = await make_client()
        resp = await client.get(
            "/webhook",
            params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"},
        )
        assert resp.status == 403

    async def test_handshake_without_verify_token_logs_why(
        self, make_client: MakeClient, tmp_path: Path
    ) -> None:
        """With no WHATSAPP_VERIFY_TOKEN (sandbox) the 403 is logged with the reason to fix."""
        from structlog.testing import capture_logs

        client = await make_client(make_config(tmp_path, WHATSAPP_VERIFY_TOKEN=""))
        with capture_logs() as logs:
            resp = await client.get(
                "/webhook",
                params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "1"},
            )
        assert resp.status == 403
        [refused] = [e for e in logs if e["event"] == "webhook_verification_refused"]
        assert "WHATSAPP_VERIFY_TOKEN is not set" in refused["reason"]

    async def test_no_verify_token_outside_sandbox_refuses_to_start(self, tmp_path: Path) -> None:
        """With a token and app secret but no verify token the app is not built, saying why."""
        cfg = make_config(
            tmp_path, WHATSAPP_VERIFY_TOKEN="", WHATSAPP_TOKEN="t", WHATSAPP_PHONE_NUMBER_ID="1"
        )
        with pytest.raises(ConfigError, match="WHATSAPP_VERIFY_TOKEN"):
            create_app(cfg, Components(store=SQLiteStore(tmp_path / "x.db")))


class TestBadInput:
    async def test_missing_signature_is_401_and_stores_nothing(
        self, make_client: MakeClient, store: SQLiteStore
    ) -> None:
        """An unsigned delivery is refused and nothing reaches the inbox."""
        client = await make_client()
        resp = await client.post("/webhook", data=recorded("text.json"))
        assert resp.status == 401 and "missing" in await resp.text()
        assert await store.inbox_counts() == {"pending": 0, "done": 0, "failed": 0}

    async def test_wrong_signature_is_401(self, make_client: MakeClient) -> None:
        """A delivery signed with another secret is refused."""
        client = await make_client()
        body, headers = signed(recorded("text.json"), secret="not-the-secret")
        resp = await client.post("/webhook", data=body, headers=headers)
        assert resp.status == 401

    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b'{"object": "whatsapp_business_account", "entry": [', "not JSON"),
            (b"hello", "not JSON"),
            (b'{"object": "whatsapp_business_account", "entry": {}}', "entry must be a list"),
            (b'{"object": "instagram", "entry": []}', "whatsapp_business_account"),
        ],
    )
    async def test_malformed_body_is_400_with_reason(
        self, make_client: MakeClient, body: bytes, reason: str
    ) -> None:
        """Truncated, non-JSON and wrongly shaped bodies get 400 and a short reason."""
        client = await make_client()
        raw, headers = signed(body)
        resp = await client.post("/webhook", data=raw, headers=headers)
        assert resp.status == 400 and reason in await resp.text()

    async def test_body_over_3mb_is_413(self, make_client: MakeClient) -> None:
        """3 MB + 1 byte is refused with 413; exactly 3 MB is read."""
        client = await make_client()
        limit = 3 * 1024 * 1024
        raw, headers = signed(b" " * (limit + 1))
        resp = await client.post("/webhook", data=io.BytesIO(raw), headers=headers)
        assert resp.status == 413
        raw, headers = signed(b" " * limit)
        resp = await client.post("/webhook", data=io.BytesIO(raw), headers=headers)
        assert resp.status == 400  # read in full, then found not to be JSON

    async def test_no_app_secret_outside_sandbox_refuses_to_start(self, tmp_path: Path) -> None:
        """With a token but no app secret the app is not built, and the error says why."""
        cfg = make_config(
            tmp_path, WHATSAPP_APP_SECRET="", WHATSAPP_TOKEN="t", WHATSAPP_PHONE_NUMBER_ID="1"
        )
        with pytest.raises(ConfigError, match="WHATSAPP_APP_SECRET"):
            create_app(cfg, Components(store=SQLiteStore(tmp_path / "x.db")))

    async def test_sandbox_without_secret_accepts_unsigned(
        self, make_client: MakeClient, tmp_path: Path, store: SQLiteStore
    ) -> None:
        """In sandbox mode (no token) with no secret, unsigned deliveries are accepted."""
        cfg = make_config(tmp_path, WHATSAPP_APP_SECRET="")
        client = await make_client(cfg)
        resp = await client.post("/webhook", data=recorded("text.json"))
        assert resp.status == 200
        await settle(client)
        assert (await store.inbox_counts())["done"] == 1


class TestDurableInbox:
    async def test_batch_yields_inbox_records_and_users(
        self, make_client: MakeClient, store: SQLiteStore
    ) -> None:
        """A batch with 4 messages for 3 users yields 4 inbox records and 3 user records."""
        client = await make_client()
        raw, headers = signed(recorded("batch.json"))
        resp = await client.post("/webhook", data=raw, headers=headers)
        assert resp.status == 200
        await settle(client)
        assert await store.inbox_counts() == {"pending": 0, "done": 4, "failed": 0}
        ana = await store.get_user("5511999990000")
        bob = await store.get_user("15550100")
        cy = await store.get_user("525512345678")
        assert ana is not None and bob is not None and cy is not None
        assert (ana.message_count, ana.last_inbound_at, ana.profile_name) == (2, 1764000011, "Ana")
        assert (bob.message_count, bob.last_inbound_at) == (1, 1764000012)
        assert cy.last_inbound_at == 1764000013
        assert [s.id for s in await pending_statuses(store, "525512345678")] == []

    async def test_repeated_delivery_adds_nothing(
        self, make_client: MakeClient, store: SQLiteStore
    ) -> None:
        """The same delivery twice is acknowledged twice and processed once."""
        client = await make_client()
        raw, headers = signed(recorded("batch.json"))
        for _ in range(2):
            assert (await client.post("/webhook", data=raw, headers=headers)).status == 200
        await settle(client)
        assert await store.inbox_counts() == {"pending": 0, "done": 4, "failed": 0}
        ana = await store.get_user("5511999990000")
        assert ana is not None and ana.message_count == 2
        metrics = await (await client.get("/metrics")).text()
        assert "windowbot_messages_duplicate_total 4" in metrics

    async def test_concurrent_duplicates_are_processed_once(
        self, make_client: MakeClient, store: SQLiteStore
    ) -> None:
        """Twenty concurrent copies of one delivery store and process it once."""
        client = await make_client()
        raw, headers = signed(recorded("text.json"))
        responses = await asyncio.gather(
            *(client.post("/webhook", data=raw, headers=headers) for _ in range(20))
        )
        assert [r.status for r in responses] == [200] * 20
        await settle(client)
        user = await store.get_user("5511999990000")
        assert user is not None and user.message_count == 1
        assert await store.inbox_counts() == {"pending": 0, "done": 1, "failed": 0}

    async def test_unknown_type_is_accepted_and_stored(
        self, make_client: MakeClient, store: SQLiteStore
    ) -> None:
        """A message of a type this version does not know is stored, not refused."""
        client = await make_client()
        raw, headers = signed(recorded("unknown_type.json"))
        assert (await client.post("/webhook", data=raw, headers=headers)).status == 200
        await settle(client)
        assert (await store.inbox_counts())["done"] == 1

    async def test_late_message_does_not_move_window_back(
        self, make_client: MakeClient, store: SQLiteStore
    ) -> None:
        """A message whose timestamp is older than the last one keeps the newer window start."""
        client = await make_client()
        for wamid, ts in (("wamid.new", 1764000500), ("wamid.old", 1764000100)):
            body = json.loads(recorded("text.json"))
            msg = body["entry"][0]["changes"][0]["value"]["messages"][0]
            msg.update(id=wamid, timestamp=str(ts))
            raw, headers = signed(body)
            assert (await client.post("/webhook", data=raw, headers=headers)).status == 200
            await settle(client)
        user = await store.get_user("5511999990000")
        assert user is not None and user.last_inbound_at == 1764000500

    async def test_statuses_are_stored_and_applied(
        self, make_client: MakeClient, store: SQLiteStore
    ) -> None:
        """Status items are kept (deduplicated) and marked applied by the user's worker."""
        client = await make_client()
        raw, headers = signed(recorded("statuses.json"))
        for _ in range(2):
            assert (await client.post("/webhook", data=raw, headers=headers)).status == 200
        await settle(client)
        metrics = await (await client.get("/metrics")).text()
        assert "windowbot_statuses_received_total 3" in metrics
        assert await pending_statuses(store, "5511999990000") == []


class TestStoreFaults:
    async def test_store_down_at_startup_is_a_clear_error(self, tmp_path: Path) -> None:
        """A store that cannot be opened stops start-up with a message naming it."""
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        cfg = make_config(tmp_path, BOT_STORE_URL=f"sqlite:///{blocker}/bot.db")
        app = create_app(cfg, Components(store=SQLiteStore(blocker / "bot.db")))
        from aiohttp.test_utils import TestServer

        with pytest.raises(StoreUnavailable, match=str(blocker)):
            await TestServer(app).start_server()

    async def test_store_down_mid_run_answers_503_and_keeps_nothing_half_written(
        self, make_client: MakeClient, config: Config, store: SQLiteStore
    ) -> None:
        """With the store gone the delivery gets 503 (Meta retries); the retry succeeds."""
        app_store = SQLiteStore(config.store.url[len("sqlite:///") :])
        client = await make_client(components=Components(store=app_store))
        await app_store.close()  # the database goes away under the running server
        raw, headers = signed(recorded("batch.json"))
        resp = await client.post("/webhook", data=raw, headers=headers)
        assert resp.status == 503
        assert (await client.get("/healthz")).status == 503
        assert await store.inbox_counts() == {"pending": 0, "done": 0, "failed": 0}
        await app_store.open()  # back again: Meta's retry of the same delivery goes through
        resp = await client.post("/webhook", data=raw, headers=headers)
        assert resp.status == 200
        await settle(client)
        assert (await store.inbox_counts())["done"] == 4


class TestObservability:
    async def test_healthz_and_metrics(self, make_client: MakeClient) -> None:
        """/healthz says ok with the store; /metrics counts received and processed."""
        client = await make_client()
        health = await client.get("/healthz")
        assert health.status == 200 and (await health.json())["status"] == "ok"
        raw, headers = signed(recorded("batch.json"))
        await client.post("/webhook", data=raw, headers=headers)
        await settle(client)
        text = await (await client.get("/metrics")).text()
        assert "windowbot_messages_received_total 4" in text
        assert "windowbot_messages_processed_total 4" in text
        assert 'windowbot_processing_latency_seconds_bucket{le="+Inf"} 4' in text
        _ = SECRET
