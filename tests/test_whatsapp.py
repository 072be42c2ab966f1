"""The Cloud API client against FakeCloudAPI over loopback: shapes, errors, one request, limits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.errors import (
    CloudAPIError,
    InvalidRequest,
    OutcomeUnknown,
    RateLimited,
    SendingHalted,
    TemplateRejected,
    TransientError,
    Undeliverable,
    WindowClosed,
)
from bot.models import JSON, TemplateCall
from bot.templates import TemplateRegistry, build_template_message
from bot.testing import FakeCloudAPI
from bot.whatsapp import CloudAPI, RateLimiter, error_from_response
from tests.example_templates import EXAMPLE, registry_with_pending

USER = "5511999990000"
TOKEN = "EAAG-secret-token-value-1234567890"
TEXT: JSON = {"type": "text", "text": {"body": "hi", "preview_url": False}}
SECRET = "app-secret-for-tests"

ServerFactory = Callable[..., Awaitable[TestServer]]


class Sleeps:
    """An injected ``sleep`` that records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeCloudAPI]:
    async with FakeCloudAPI(token=TOKEN, registry=registry_with_pending(tmp_path)) as server:
        server.user_wrote(USER)
        yield server


def client(fake: FakeCloudAPI, sleeps: Sleeps | None = None, **options: Any) -> CloudAPI:
    """A client on the fake, no rate limit, sleeps recorded instead of taken."""
    settings: dict[str, Any] = {
        "phone_number_id": fake.phone_number_id,
        "token": TOKEN,
        "base_url": fake.url,
        "rate_limit": 0,
        "sleep": sleeps or Sleeps(),
    }
    settings.update(options)
    return CloudAPI(**settings)


def meta_error(code: int, message: str = "oops", details: str = "") -> JSON:
    return {"error": {"message": message, "code": code, "error_data": {"details": details}}}


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def answering(aiohttp_server: ServerFactory, status: int, text: str) -> str:
    """The base url of a stand-in Cloud API answering every send with ``status`` and ``text``."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{version}/{phone_number_id}/messages", handle)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


class TestErrorMapping:
    @pytest.mark.parametrize(
        ("code", "status", "cls"),
        [
            (131047, 400, WindowClosed),
            (132000, 400, TemplateRejected),
            (132001, 404, TemplateRejected),
            (132005, 400, TemplateRejected),
            (132012, 400, TemplateRejected),
            (132015, 400, TemplateRejected),
            (132016, 400, TemplateRejected),
            (130429, 400, RateLimited),
            (131056, 400, RateLimited),
            (131026, 400, Undeliverable),
            (100, 400, InvalidRequest),
            (131009, 400, InvalidRequest),
            (190, 401, SendingHalted),
            (131048, 400, SendingHalted),
            (131000, 500, TransientError),
        ],
    )
    def test_codes_map_onto_the_error_tree(
        self, code: int, status: int, cls: type[CloudAPIError]
    ) -> None:
        """Each Meta code becomes the leaf class the sender acts on, keeping code and status."""
        error = error_from_response(status, meta_error(code, details="why"))
        assert type(error) is cls
        assert (error.code, error.http_status, error.details) == (code, status, "why")

    def test_non_json_bodies_go_by_status(self) -> None:
        """A proxy's HTML 502 is transient; a bare 429 is a rate limit; a bare 403 is invalid."""
        assert isinstance(error_from_response(502, None), TransientError)
        assert isinstance(error_from_response(429, "<html>"), RateLimited)
        assert isinstance(error_from_response(403, None), InvalidRequest)

    def test_only_transient_and_rate_limits_are_retryable(self) -> None:
        """retryable is set exactly on TransientError and RateLimited."""
        retryable = {
            code: error_from_response(400, meta_error(code)).retryable
            for code in (100, 130429, 131047, 132000, 190)
        }
        assert retryable == {100: False, 130429: True, 131047: False, 132000: False, 190: False}
        assert error_from_response(503, None).retryable


class TestRateLimiter:
    async def test_spaces_calls_by_one_over_rate(self) -> None:
        """With a frozen clock, successive callers wait 0, 1/r, 2/r... seconds."""
        sleeps = Sleeps()
        limiter = RateLimiter(4, clock=lambda: 100.0, sleep=sleeps)
        waits = [await limiter.acquire() for _ in range(4)]
        assert waits == [0.0, 0.25, 0.5, 0.75]
        assert sleeps.delays == [0.25, 0.5, 0.75]

    async def test_no_wait_once_time_has_passed(self) -> None:
        """A caller arriving after its slot does not sleep."""
        now = [0.0]
        sleeps = Sleeps()
        limiter = RateLimiter(10, clock=lambda: now[0], sleep=sleeps)
        await limiter.acquire()
        now[0] = 5.0
        assert await limiter.acquire() == 0.0
        assert sleeps.delays == []

    async def test_zero_means_unlimited(self) -> None:
        """rate 0 never sleeps."""
        sleeps = Sleeps()
        limiter = RateLimiter(0, clock=lambda: 0.0, sleep=sleeps)
        for _ in range(100):
            await limiter.acquire()
        assert sleeps.delays == []


class TestSend:
    @pytest.mark.parametrize(
        "message",
        [
            TEXT,
            {
                "type": "interactive",
                "interactive": {
                    "type": "button",
                    "body": {"text": "Pick one"},
                    "action": {
                        "buttons": [
                            {"type": "reply", "reply": {"id": "yes", "title": "Yes"}},
                            {"type": "reply", "reply": {"id": "no", "title": "No"}},
                        ]
                    },
                },
            },
            {
                "type": "interactive",
                "interactive": {
                    "type": "list",
                    "body": {"text": "Choose a slot"},
                    "action": {
                        "button": "Slots",
                        "sections": [
                            {
                                "title": "Tuesday",
                                "rows": [{"id": "t10", "title": "10:00", "description": "Dr Lee"}],
                            }
                        ],
                    },
                },
            },
            {"type": "image", "image": {"link": "https://example.com/a.jpg", "caption": "map"}},
            {"type": "document", "document": {"id": "1234", "filename": "a.pdf"}},
            {"type": "location", "location": {"latitude": -23.5, "longitude": -46.6, "name": "HQ"}},
            {"type": "reaction", "reaction": {"message_id": "wamid.X", "emoji": "👍"}},
        ],
        ids=["text", "buttons", "list", "image", "document", "location", "reaction"],
    )
    async def test_each_message_type_is_accepted(self, fake: FakeCloudAPI, message: JSON) -> None:
        """The fake accepts each well-formed type and records the exact request body."""
        async with client(fake) as api:
            wamid = await api.send(USER, message)
        [sent] = fake.messages
        assert sent.wamid == wamid and wamid.startswith("wamid.FAKE")
        assert sent.body == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": USER,
            **message,
        }

    async def test_template_is_accepted_outside_the_window(self, fake: FakeCloudAPI) -> None:
        """A built template goes to a user who never wrote; the registry check passes."""
        registry = TemplateRegistry.load(EXAMPLE)
        call = TemplateCall("appointment_reminder", {"name": "Ana", "slot": "Tue"}, buttons=("OK",))
        async with client(fake) as api:
            await api.send("4915112345678", build_template_message(registry, call, "en_US"))
        assert [m.type for m in fake.messages_to("4915112345678")] == ["template"]

    @pytest.mark.parametrize("status", [500, 503])
    async def test_5xx_is_transient_after_one_request(
        self, fake: FakeCloudAPI, status: int
    ) -> None:
        """A 5xx is raised as a plain TransientError (Meta answered) after one request, no sleep."""
        sleeps = Sleeps()
        fake.fail_next(1, status=status)
        async with client(fake, sleeps) as api:
            with pytest.raises(TransientError) as info:
                await api.send(USER, TEXT)
        assert not isinstance(info.value, OutcomeUnknown)
        assert info.value.http_status == status and info.value.retryable
        assert len(fake.requests) == 1 and fake.messages == [] and sleeps.delays == []

    @pytest.mark.parametrize("code", [130429, 131056])
    async def test_rate_limits_raise_after_one_request(self, fake: FakeCloudAPI, code: int) -> None:
        """Throughput and pair rate limits raise RateLimited at once: backoff is the outbox's."""
        sleeps = Sleeps()
        fake.fail_next(1, code=code)
        async with client(fake, sleeps) as api:
            with pytest.raises(RateLimited) as info:
                await api.send(USER, TEXT)
        assert info.value.code == code
        assert len(fake.requests) == 1 and fake.messages == [] and sleeps.delays == []

    @pytest.mark.parametrize(
        ("code", "cls"),
        [(100, InvalidRequest), (132000, TemplateRejected), (131026, Undeliverable)],
    )
    async def test_request_errors_are_raised_after_one_request(
        self, fake: FakeCloudAPI, code: int, cls: type[CloudAPIError]
    ) -> None:
        """100, 132000 and 131026 are raised after one request and no sleep."""
        sleeps = Sleeps()
        fake.fail_next(3, code=code)
        async with client(fake, sleeps) as api:
            with pytest.raises(cls):
                await api.send(USER, TEXT)
        assert len(fake.requests) == 1 and sleeps.delays == []

    async def test_malformed_message_is_invalid_request(self, fake: FakeCloudAPI) -> None:
        """Four reply buttons are refused by the fake with code 100, like Meta."""
        buttons = [{"type": "reply", "reply": {"id": f"b{i}", "title": f"B{i}"}} for i in range(4)]
        message = {
            "type": "interactive",
            "interactive": {
                "type": "button",
                "body": {"text": "?"},
                "action": {"buttons": buttons},
            },
        }
        async with client(fake) as api:
            with pytest.raises(InvalidRequest) as info:
                await api.send(USER, message)
        assert info.value.code == 100 and "1 to 3" in info.value.details

    async def test_template_parameter_mismatch_is_132000(self, fake: FakeCloudAPI) -> None:
        """A template body with the wrong parameter count is TemplateRejected, not retried."""
        message = {
            "type": "template",
            "template": {"name": "business_hours", "language": {"code": "en_US"}},
        }
        sleeps = Sleeps()
        async with client(fake, sleeps) as api:
            with pytest.raises(TemplateRejected) as info:
                await api.send(USER, message)
        assert info.value.code == 132000 and sleeps.delays == []

    async def test_pending_template_is_132001(self, fake: FakeCloudAPI) -> None:
        """The fake refuses an unapproved template like Meta does."""
        message = {
            "type": "template",
            "template": {"name": "spring_sale", "language": {"code": "en_US"}},
        }
        async with client(fake) as api:
            with pytest.raises(TemplateRejected) as info:
                await api.send(USER, message)
        assert info.value.code == 132001

    async def test_window_closed_sync_is_window_closed(self, fake: FakeCloudAPI) -> None:
        """A session message to a user who never wrote raises WindowClosed (131047)."""
        async with client(fake) as api:
            with pytest.raises(WindowClosed) as info:
                await api.send("4915112345678", TEXT)
        assert info.value.code == 131047 and fake.messages == []

    @pytest.mark.parametrize("code", [190, 131048])
    async def test_halt_codes_raise_but_keep_no_halt_state(
        self, fake: FakeCloudAPI, code: int
    ) -> None:
        """190 and 131048 raise SendingHalted, yet the next send still makes its request."""
        fake.fail_next(1, code=code)
        async with client(fake) as api:
            with pytest.raises(SendingHalted) as info:
                await api.send(USER, TEXT)
            wamid = await api.send(USER, TEXT)
        assert info.value.code == code
        assert len(fake.requests) == 2 and [m.wamid for m in fake.messages] == [wamid]

    async def test_wrong_token_is_190(self, fake: FakeCloudAPI) -> None:
        """The fake answers a wrong bearer token with 401/190, raised as SendingHalted each time."""
        async with client(fake, token="wrong") as api:
            for _ in range(2):
                with pytest.raises(SendingHalted, match="renew WHATSAPP_TOKEN") as info:
                    await api.send(USER, TEXT)
                assert (info.value.code, info.value.http_status) == (190, 401)
        assert len(fake.requests) == 2 and fake.messages == []

    async def test_timeout_is_outcome_unknown(self, fake: FakeCloudAPI) -> None:
        """A request with no answer raises OutcomeUnknown after that one request."""
        sleeps = Sleeps()
        fake.fail_next(1, timeout=True)
        async with client(fake, sleeps, timeout=0.2) as api:
            with pytest.raises(OutcomeUnknown, match=r"within 0\.2s") as info:
                await api.send(USER, TEXT)
        assert isinstance(info.value, TransientError) and info.value.retryable
        assert len(fake.requests) == 1 and fake.messages == [] and sleeps.delays == []

    async def test_a_slow_answer_may_still_have_been_accepted(self) -> None:
        """A send the fake answers after the timeout is OutcomeUnknown, yet the message went out."""
        async with FakeCloudAPI(token=TOKEN, delay=0.5) as slow:
            slow.user_wrote(USER)
            async with client(slow, timeout=0.2) as api:
                with pytest.raises(OutcomeUnknown):
                    await api.send(USER, TEXT)
            [sent] = await slow.wait_for(USER, 1, within=5)
        assert sent.body["to"] == USER and len(slow.requests) == 1

    async def test_connection_refused_is_transient_not_unknown(self) -> None:
        """Nothing listening is a plain TransientError (surely not sent) after one attempt."""
        sleeps = Sleeps()
        api = CloudAPI(
            phone_number_id="1",
            token=TOKEN,
            base_url=f"http://127.0.0.1:{free_port()}",
            sleep=sleeps,
            rate_limit=0,
        )
        async with api:
            with pytest.raises(TransientError, match="cannot reach") as info:
                await api.send(USER, TEXT)
        assert not isinstance(info.value, OutcomeUnknown)
        assert sleeps.delays == []

    async def test_connection_dropped_after_connecting_is_outcome_unknown(self) -> None:
        """A server that reads the request and hangs up without answering gives OutcomeUnknown."""
        requests: list[bytes] = []

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            requests.append(await reader.read(65536))
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            api = CloudAPI(
                phone_number_id="1", token=TOKEN, base_url=f"http://127.0.0.1:{port}", rate_limit=0
            )
            async with api:
                with pytest.raises(OutcomeUnknown, match="broke before its answer"):
                    await api.send(USER, TEXT)
        finally:
            server.close()
            await server.wait_closed()
        assert len(requests) == 1 and requests[0].startswith(b"POST /v23.0/1/messages")

    @pytest.mark.parametrize(
        "text",
        ['{"messaging_product": "whatsapp"}', '{"messages": []}', '{"messages": [{}]}', "ok"],
        ids=["no-messages", "empty-messages", "no-id", "not-json"],
    )
    async def test_200_without_a_message_id_is_outcome_unknown(
        self, aiohttp_server: ServerFactory, text: str
    ) -> None:
        """A 200 that names no wamid (or is not JSON) raises OutcomeUnknown with HTTP 200."""
        url = await answering(aiohttp_server, 200, text)
        async with CloudAPI(phone_number_id="1", token=TOKEN, base_url=url, rate_limit=0) as api:
            with pytest.raises(OutcomeUnknown) as info:
                await api.send(USER, TEXT)
        assert info.value.http_status == 200

    async def test_callback_is_sent_and_echoed_in_statuses(
        self, aiohttp_server: ServerFactory
    ) -> None:
        """callback goes out as biz_opaque_callback_data and comes back in every status webhook."""
        posted: list[JSON] = []

        async def webhook(request: web.Request) -> web.Response:
            posted.append(await request.json())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/webhook", webhook)
        hook = await aiohttp_server(app)
        fake = FakeCloudAPI(
            token=TOKEN, webhook_url=str(hook.make_url("/webhook")), app_secret=SECRET
        )
        async with fake:
            fake.user_wrote(USER)
            async with client(fake) as api:
                wamid = await api.send(USER, TEXT, callback="wb1:1:entry-42")
                await api.send(USER, TEXT)
            await fake.settle()
        assert [r["biz_opaque_callback_data"] for r in fake.requests[:1]] == ["wb1:1:entry-42"]
        assert "biz_opaque_callback_data" not in fake.requests[1]
        assert [m.callback for m in fake.messages] == ["wb1:1:entry-42", ""]
        statuses = [
            s for body in posted for s in body["entry"][0]["changes"][0]["value"]["statuses"]
        ]
        ours = [s for s in statuses if s["id"] == wamid]
        assert [s["status"] for s in ours] == ["sent", "delivered"]
        assert {s.get("biz_opaque_callback_data") for s in ours} == {"wb1:1:entry-42"}
        assert all("biz_opaque_callback_data" not in s for s in statuses if s["id"] != wamid)

    async def test_callback_is_cut_to_512_characters(self, fake: FakeCloudAPI) -> None:
        """Callback data longer than Meta's 512-character limit is truncated, not refused."""
        async with client(fake) as api:
            await api.send(USER, TEXT, callback="x" * 600)
        assert fake.requests[0]["biz_opaque_callback_data"] == "x" * 512

    async def test_rate_limit_spaces_sends(self, fake: FakeCloudAPI) -> None:
        """At 5 messages/s with a frozen clock, sends wait 0.2 s more each."""
        sleeps = Sleeps()
        async with client(fake, sleeps, rate_limit=5, clock=lambda: 50.0) as api:
            for _ in range(4):
                await api.send(USER, TEXT)
        assert sleeps.delays == pytest.approx([0.2, 0.4, 0.6])
        assert len(fake.messages) == 4

    async def test_token_is_never_logged_nor_shown(self, fake: FakeCloudAPI) -> None:
        """repr masks the token; no log event nor error message of a failed send contains it."""
        fake.fail_next(1, status=500)
        fake.fail_next(1, code=100)
        fake.fail_next(1, code=190)
        errors: list[CloudAPIError] = []
        with structlog.testing.capture_logs() as logs:
            async with client(fake) as api:
                for _ in range(3):
                    with pytest.raises(CloudAPIError) as info:
                        await api.send(USER, TEXT)
                    errors.append(info.value)
                await api.send(USER, TEXT)
        assert TOKEN not in repr(api) and "***" in repr(api)
        assert [type(e) for e in errors] == [TransientError, InvalidRequest, SendingHalted]
        assert TOKEN not in repr(logs)
        assert all(TOKEN not in f"{e} {e.details} {e!r}" for e in errors)

    async def test_mark_read(self, fake: FakeCloudAPI) -> None:
        """mark_read posts a read receipt for an inbound wamid."""
        async with client(fake) as api:
            await api.mark_read("wamid.IN1")
        assert fake.read_receipts == ["wamid.IN1"] and fake.messages == []

    async def test_mark_read_posts_once(self, fake: FakeCloudAPI) -> None:
        """A failing read receipt raises after its one request and is not sent again."""
        fake.fail_next(1, status=500)
        async with client(fake) as api:
            with pytest.raises(TransientError):
                await api.mark_read("wamid.IN1")
        assert len(fake.requests) == 1 and fake.read_receipts == []

    async def test_send_before_start_explains(self) -> None:
        """Using the client outside 'async with' says how to start it."""
        api = CloudAPI(phone_number_id="1", token=TOKEN, rate_limit=0)
        with pytest.raises(RuntimeError, match="not started"):
            await api.send(USER, TEXT)

    async def test_a_passed_session_is_left_open(self, fake: FakeCloudAPI) -> None:
        """The application's own session is used and not closed by the client."""
        async with aiohttp.ClientSession() as session:
            async with client(fake, session=session) as api:
                await api.send(USER, TEXT)
            assert not session.closed
        assert api.url == f"{fake.url}/v23.0/{fake.phone_number_id}/messages"
