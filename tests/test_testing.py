"""The shipped test kit: webhook builders and FakeCloudAPI's Meta-like behaviour."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bot.templates import TemplateRegistry
from bot.testing import (
    FakeCloudAPI,
    button_reply,
    envelope,
    list_reply,
    location_message,
    media_message,
    message_item,
    quick_reply,
    reaction_message,
    signed_request,
    status_item,
    text_message,
)
from bot.webhook import SIGNATURE_HEADER, parse_body, verify_signature

EXAMPLE = Path(__file__).resolve().parent.parent / "flows" / "templates.yaml"
SECRET = "app-secret-for-tests"
USER = "5511999990000"
NOW = 1_764_000_000.0
HOUR = 3600.0
TEXT = {"type": "text", "text": {"body": "hi"}}

ServerFactory = Callable[..., Awaitable[TestServer]]


class Receiver:
    """A stand-in bot webhook that keeps every POST it gets and answers 200.

    ``answers`` are given, in order, to the first POSTs instead of 200.
    """

    def __init__(self, answers: tuple[int, ...] = ()) -> None:
        self.posts: list[tuple[bytes, dict[str, str]]] = []
        self.answers = list(answers)

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append((await request.read(), dict(request.headers)))
        return web.Response(status=self.answers.pop(0) if self.answers else 200, text="ok")

    def statuses(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(wamid, status, error codes) of every status received, each signature checked."""
        out = []
        for body, headers in self.posts:
            verify_signature(body, headers.get(SIGNATURE_HEADER), SECRET)
            for s in parse_body(body).statuses:
                out.append((s.id, s.status, tuple(e.code for e in s.errors)))
        return out


async def serve(aiohttp_server: ServerFactory, receiver: Receiver) -> str:
    """Start ``receiver`` on a loopback server; return the url of its /webhook route."""
    app = web.Application()
    app.router.add_post("/webhook", receiver.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/webhook"))


@pytest.fixture
async def receiver(aiohttp_server: ServerFactory) -> tuple[Receiver, str]:
    """A running receiver and the url of its /webhook route."""
    receiver = Receiver()
    return receiver, await serve(aiohttp_server, receiver)


def raw_statuses(receiver: Receiver) -> list[dict[str, Any]]:
    """Every ``statuses[]`` item the receiver got, as posted."""
    out: list[dict[str, Any]] = []
    for body, _ in receiver.posts:
        for entry in json.loads(body)["entry"]:
            for change in entry["changes"]:
                out.extend(change["value"].get("statuses", []))
    return out


async def post(fake: FakeCloudAPI, body: Any, token: str | None = None) -> tuple[int, Any]:
    """POST a raw send request to the fake; return (HTTP status, decoded JSON)."""
    url = f"{fake.url}/v23.0/{fake.phone_number_id}/messages"
    headers = {"Authorization": f"Bearer {token or fake.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(to: str = USER, message: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, **(message or TEXT)}


class TestBuilders:
    def test_text_message_parses(self) -> None:
        """text_message builds an envelope that parse_body reads back."""
        body, _ = signed_request(
            text_message(USER, "hi", wamid="wamid.A", timestamp=NOW, name="Ana"), SECRET
        )
        [message] = parse_body(body).messages
        assert (message.id, message.user, message.text) == ("wamid.A", USER, "hi")
        assert (message.timestamp, message.profile_name) == (int(NOW), "Ana")

    def test_interactive_and_button_replies_parse(self) -> None:
        """Button, list and quick replies parse into their models."""
        [b] = parse_body(json.dumps(button_reply(USER, "yes", "Yes")).encode()).messages
        assert b.interactive is not None and (b.interactive.kind, b.interactive.id) == (
            "button_reply",
            "yes",
        )
        [r] = parse_body(json.dumps(list_reply(USER, "t10", "10:00", "Dr Lee")).encode()).messages
        assert r.interactive is not None and r.interactive.description == "Dr Lee"
        [q] = parse_body(json.dumps(quick_reply(USER, "CONFIRM", "Confirm")).encode()).messages
        assert q.type == "button" and q.button is not None and q.button.payload == "CONFIRM"

    def test_media_location_reaction_parse(self) -> None:
        """Media, location and reaction builders parse into their models."""
        [m] = parse_body(
            json.dumps(media_message("audio", USER, media_id="M1", voice=True)).encode()
        ).messages
        assert m.media is not None and (m.media.id, m.media.voice) == ("M1", True)
        [loc] = parse_body(
            json.dumps(location_message(USER, -23.5, -46.6, location_name="HQ")).encode()
        ).messages
        assert loc.location is not None and loc.location.name == "HQ"
        [rx] = parse_body(json.dumps(reaction_message(USER, "wamid.X", "👍")).encode()).messages
        assert rx.reaction is not None and rx.reaction.emoji == "👍"
        with pytest.raises(ValueError, match="media kind"):
            media_message("gif", USER)

    def test_batch_envelope_keeps_order(self) -> None:
        """envelope() carries several messages and statuses in one delivery."""
        items = [message_item(USER, "text", {"body": str(i)}, wamid=f"wamid.{i}") for i in range(3)]
        status = status_item("wamid.OUT", "failed", USER, errors=[{"code": 131047}])
        delivery = parse_body(json.dumps(envelope(items, [status])).encode())
        assert [m.text for m in delivery.messages] == ["0", "1", "2"]
        [parsed] = delivery.statuses
        assert (parsed.status, parsed.recipient, parsed.errors[0].code) == ("failed", USER, 131047)

    def test_signed_request_verifies(self) -> None:
        """signed_request's header is the HMAC of exactly the bytes it returns."""
        body, headers = signed_request(b'{"object":"x"}', SECRET)
        assert headers["Content-Type"] == "application/json"
        verify_signature(body, headers[SIGNATURE_HEADER], SECRET)


class TestFakeRequests:
    async def test_its_client_sends_with_its_token_number_and_version(self) -> None:
        """fake.client() is a CloudAPI on the fake's URL, token, number and API version."""
        async with FakeCloudAPI(token="tok", phone_number_id="PN9", api_version="v99.0") as fake:
            fake.user_wrote("5511999990000")
            async with fake.client(timeout=5) as api:
                assert api.url == f"{fake.url}/v99.0/PN9/messages"
                wamid = await api.send("5511999990000", {"type": "text", "text": {"body": "hi"}})
            [sent] = fake.messages_to("5511999990000")
        assert (sent.wamid, sent.type) == (wamid, "text")

    async def test_wrong_token_is_401_oauth(self) -> None:
        """A wrong bearer token gets Meta's 401 OAuthException with code 190."""
        async with FakeCloudAPI() as fake:
            status, body = await post(fake, request(), token="nope")
        assert status == 401
        assert body["error"]["code"] == 190 and body["error"]["type"] == "OAuthException"
        assert body["error"]["fbtrace_id"]

    @pytest.mark.parametrize(
        ("message", "details"),
        [
            ({"type": "text", "text": {"body": "x" * 4097}}, "at most 4096"),
            ({"type": "text", "text": {}}, "text['body'] is required"),
            ({"type": "sticker", "sticker": {}}, "needs link or id"),
            ({"type": "fax", "fax": {}}, "type must be one of"),
            (
                {
                    "type": "interactive",
                    "interactive": {
                        "type": "button",
                        "body": {"text": "?"},
                        "action": {
                            "buttons": [{"type": "reply", "reply": {"id": "a", "title": "x" * 21}}]
                        },
                    },
                },
                "at most 20",
            ),
            (
                {
                    "type": "interactive",
                    "interactive": {
                        "type": "list",
                        "body": {"text": "?"},
                        "action": {
                            "button": "Pick",
                            "sections": [
                                {"rows": [{"id": f"r{i}", "title": "t"} for i in range(11)]}
                            ],
                        },
                    },
                },
                "max allowed count: 10",
            ),
            (
                {
                    "type": "template",
                    "template": {
                        "name": "t",
                        "language": {"code": "en_US"},
                        "components": [
                            {"type": "body", "parameters": [{"type": "text", "text": "a\nb"}]}
                        ],
                    },
                },
                "new-line",
            ),
        ],
        ids=["long-text", "no-body", "no-media", "bad-type", "long-title", "11-rows", "newline"],
    )
    async def test_malformed_requests_get_code_100(self, message: Any, details: str) -> None:
        """Shape errors are answered 400 with code 100 and Meta-like details."""
        async with FakeCloudAPI() as fake:
            fake.user_wrote(USER)
            status, body = await post(fake, request(message=message))
        assert status == 400 and body["error"]["code"] == 100
        assert details in body["error"]["error_data"]["details"]
        assert fake.messages == []

    async def test_template_checked_against_registry(self) -> None:
        """Unknown template → 132001, parameter count mismatch → 132000."""
        registry = TemplateRegistry.load(EXAMPLE)
        async with FakeCloudAPI(registry=registry) as fake:
            unknown = {"type": "template", "template": {"name": "x", "language": {"code": "en_US"}}}
            assert (await post(fake, request(message=unknown)))[1]["error"]["code"] == 132001
            wrong = {
                "type": "template",
                "template": {"name": "business_hours", "language": {"code": "pt_BR"}},
            }
            assert (await post(fake, request(message=wrong)))[1]["error"]["code"] == 132000

    async def test_accepted_answer_and_unique_wamids(self) -> None:
        """An accepted send answers Meta's success shape with a fresh wamid."""
        async with FakeCloudAPI() as fake:
            fake.user_wrote(USER)
            fake.user_wrote("5215512345678")
            answers = [await post(fake, request(to)) for to in (USER, USER, "5215512345678")]
        assert all(status == 200 for status, _ in answers)
        first = answers[0][1]
        assert first["messaging_product"] == "whatsapp"
        assert first["contacts"] == [{"input": USER, "wa_id": USER}]
        wamids = [body["messages"][0]["id"] for _, body in answers]
        assert len(set(wamids)) == 3 and all(w.startswith("wamid.FAKE") for w in wamids)
        assert [m.wamid for m in fake.messages_to(USER)] == wamids[:2]

    async def test_fail_next_then_recovers(self) -> None:
        """fail_next(2, status=500) fails exactly two requests, recording nothing for them."""
        async with FakeCloudAPI() as fake:
            fake.user_wrote(USER)
            fake.fail_next(2, status=500)
            statuses = [(await post(fake, request()))[0] for _ in range(3)]
        assert statuses == [500, 500, 200] and len(fake.messages) == 1


class TestWaitFor:
    async def test_returns_once_the_messages_arrived(self) -> None:
        """wait_for returns as soon as the user has the expected number of messages."""
        import asyncio

        async with FakeCloudAPI() as fake:
            fake.user_wrote(USER)

            async def later() -> None:
                await asyncio.sleep(0.05)
                await post(fake, request())
                await post(fake, request())

            task = asyncio.create_task(later())
            messages = await fake.wait_for(USER, 2, within=5)
            await task
        assert [m.to for m in messages] == [USER, USER]

    async def test_says_what_arrived_when_time_runs_out(self) -> None:
        """Too few messages in time raise AssertionError naming how many came."""
        async with FakeCloudAPI() as fake:
            fake.user_wrote(USER)
            await post(fake, request())
            with pytest.raises(AssertionError, match="got 1 of 2 messages"):
                await fake.wait_for(USER, 2, within=0.2)


class TestFakeWindow:
    async def test_sync_window_rule_follows_the_injected_clock(self) -> None:
        """23 h after the user wrote a text is accepted; 25 h after, it is refused with 131047."""
        now = [NOW]
        async with FakeCloudAPI(clock=lambda: now[0]) as fake:
            fake.user_wrote(USER, NOW - 23 * HOUR)
            assert (await post(fake, request()))[0] == 200
            now[0] = NOW + 2 * HOUR
            status, body = await post(fake, request())
            template = {"type": "template", "template": {"name": "t", "language": {"code": "en"}}}
            assert (await post(fake, request(message=template)))[0] == 200
        assert status == 400 and body["error"]["code"] == 131047
        assert "24 hours" in body["error"]["error_data"]["details"]
        assert [m.type for m in fake.messages] == ["text", "template"]

    async def test_a_new_inbound_message_reopens_the_window(self) -> None:
        """user_wrote at the current clock reopens a closed window."""
        async with FakeCloudAPI(clock=lambda: NOW) as fake:
            fake.user_wrote(USER, NOW - 30 * HOUR)
            assert (await post(fake, request()))[0] == 400
            fake.user_wrote(USER)
            assert (await post(fake, request()))[0] == 200

    async def test_async_window_rule_sends_a_signed_failed_status(
        self, receiver: tuple[Receiver, str]
    ) -> None:
        """In async mode the send is accepted, then a signed failed/131047 status arrives."""
        hook, url = receiver
        async with FakeCloudAPI(window_errors="async", webhook_url=url, app_secret=SECRET) as fake:
            status, body = await post(fake, request())
            await fake.settle()
        assert status == 200
        wamid = body["messages"][0]["id"]
        assert hook.statuses() == [(wamid, "failed", (131047,))]
        assert fake.messages[0].error_code == 131047
        assert fake.webhook_answers == [200]

    async def test_statuses_are_emitted_and_signed(self, receiver: tuple[Receiver, str]) -> None:
        """Each accepted message gets sent then delivered; emit_status posts read on demand."""
        hook, url = receiver
        async with FakeCloudAPI(webhook_url=url, app_secret=SECRET) as fake:
            fake.user_wrote(USER)
            _, body = await post(fake, request())
            await fake.settle()
            wamid = body["messages"][0]["id"]
            assert await fake.emit_status(wamid, "read") == 200
        expected = [(wamid, "sent", ()), (wamid, "delivered", ()), (wamid, "read", ())]
        assert hook.statuses() == expected
        [read] = parse_body(hook.posts[-1][0]).statuses
        assert read.recipient == USER

    async def test_statuses_echo_the_callback_data(self, receiver: tuple[Receiver, str]) -> None:
        """Every status of a message sent with biz_opaque_callback_data carries it back."""
        hook, url = receiver
        async with FakeCloudAPI(webhook_url=url, app_secret=SECRET) as fake:
            fake.user_wrote(USER)
            _, tagged = await post(fake, {**request(), "biz_opaque_callback_data": "wb1:2:e7"})
            _, plain = await post(fake, request())
            await fake.settle()
            assert await fake.emit_status(tagged["messages"][0]["id"], "read") == 200
        assert [m.callback for m in fake.messages] == ["wb1:2:e7", ""]
        by_wamid: dict[str, list[Any]] = {}
        for item in raw_statuses(hook):
            by_wamid.setdefault(item["id"], []).append(item.get("biz_opaque_callback_data"))
        assert by_wamid == {
            tagged["messages"][0]["id"]: ["wb1:2:e7"] * 3,
            plain["messages"][0]["id"]: [None, None],
        }
        read = parse_body(hook.posts[-1][0]).statuses[0]
        assert (read.status, read.callback_data) == ("read", "wb1:2:e7")

    async def test_retry_statuses_reposts_until_accepted(
        self, aiohttp_server: ServerFactory
    ) -> None:
        """A status the bot answers 503 is posted again, unchanged, until it gets a 200."""
        hook = Receiver(answers=(503, 500))
        url = await serve(aiohttp_server, hook)
        fake = FakeCloudAPI(webhook_url=url, app_secret=SECRET, retry_statuses=10.0)
        async with fake:
            assert await fake.emit_status("wamid.X", "delivered", recipient=USER) == 200
        assert fake.webhook_answers == [503, 500, 200]
        assert len({body for body, _ in hook.posts}) == 1 and len(hook.posts) == 3

    async def test_without_retry_statuses_a_refused_status_is_posted_once(
        self, aiohttp_server: ServerFactory
    ) -> None:
        """By default a status the bot does not accept is not posted again."""
        hook = Receiver(answers=(503,))
        url = await serve(aiohttp_server, hook)
        async with FakeCloudAPI(webhook_url=url, app_secret=SECRET) as fake:
            assert await fake.emit_status("wamid.X", "delivered", recipient=USER) == 503
        assert fake.webhook_answers == [503] and len(hook.posts) == 1

    async def test_retry_statuses_reposts_template_webhooks_too(
        self, aiohttp_server: ServerFactory
    ) -> None:
        """Meta retries every webhook: a template status update refused is posted again."""
        hook = Receiver(answers=(503,))
        url = await serve(aiohttp_server, hook)
        fake = FakeCloudAPI(webhook_url=url, app_secret=SECRET, retry_statuses=10.0)
        async with fake:
            fake.add_template("order_ready", "en_US", "Your order {{1}} is ready")
            assert await fake.set_template_status("order_ready", "en_US", "PAUSED") == 200
        assert fake.webhook_answers == [503, 200]
        assert len({body for body, _ in hook.posts}) == 1 and len(hook.posts) == 2
        [entry] = json.loads(hook.posts[0][0])["entry"]
        [change] = entry["changes"]
        assert change["field"] == "message_template_status_update"
        assert change["value"]["event"] == "PAUSED"

    async def test_retry_statuses_gives_up_after_its_seconds(
        self, aiohttp_server: ServerFactory
    ) -> None:
        """A bot that never accepts gets a few posts within retry_statuses, then the last answer."""
        hook = Receiver(answers=(500,) * 100)
        url = await serve(aiohttp_server, hook)
        loop = asyncio.get_running_loop()
        async with FakeCloudAPI(webhook_url=url, app_secret=SECRET, retry_statuses=0.3) as fake:
            began = loop.time()
            assert await fake.emit_status("wamid.X", "sent", recipient=USER) == 500
            took = loop.time() - began
        assert 2 <= len(hook.posts) <= 5 and set(fake.webhook_answers) == {500}
        assert took < 2.0

    async def test_retry_statuses_survives_a_bot_that_is_down(self) -> None:
        """With nothing listening, retries record and return 0; without them the error is raised."""
        url = f"http://127.0.0.1:{free_port()}/webhook"
        async with FakeCloudAPI(webhook_url=url, app_secret=SECRET, retry_statuses=0.2) as fake:
            assert await fake.emit_status("wamid.X", "sent", recipient=USER) == 0
        assert len(fake.webhook_answers) >= 2 and set(fake.webhook_answers) == {0}
        async with FakeCloudAPI(webhook_url=url, app_secret=SECRET) as once:
            with pytest.raises(aiohttp.ClientError):
                await once.emit_status("wamid.X", "sent", recipient=USER)

    async def test_emit_status_needs_a_webhook(self) -> None:
        """emit_status without webhook_url/app_secret explains what is missing."""
        async with FakeCloudAPI() as fake:
            with pytest.raises(RuntimeError, match="webhook_url and app_secret"):
                await fake.emit_status("wamid.X", "read")


class TestFakeDelay:
    async def test_delay_answers_every_send_late(self) -> None:
        """With delay=0.3 a send is answered no sooner than 0.3 s later, and still accepted."""
        loop = asyncio.get_running_loop()
        async with FakeCloudAPI(delay=0.3) as fake:
            fake.user_wrote(USER)
            began = loop.time()
            status, _ = await post(fake, request())
            took = loop.time() - began
        assert status == 200 and len(fake.messages) == 1
        assert took >= 0.3

    async def test_no_delay_by_default(self) -> None:
        """Without delay a send is answered well within the 0.3 s a delayed one takes."""
        loop = asyncio.get_running_loop()
        async with FakeCloudAPI() as fake:
            fake.user_wrote(USER)
            began = loop.time()
            assert (await post(fake, request()))[0] == 200
        assert loop.time() - began < 0.3


class TestFakeControlRoutes:
    async def test_count_messages_and_inbound_over_http(self) -> None:
        """The /_fake routes let another process tell the fake about users and read results."""
        fake = FakeCloudAPI(phone_number_id="*", clock=lambda: NOW)
        async with fake, aiohttp.ClientSession() as session:
            inbound = {"wa_id": USER, "timestamp": NOW - HOUR}
            async with session.post(f"{fake.url}/_fake/inbound", json=inbound) as r:
                assert r.status == 200
            url = f"{fake.url}/v23.0/ANY-NUMBER/messages"
            headers = {"Authorization": f"Bearer {fake.token}"}
            async with session.post(url, json=request(), headers=headers) as r:
                assert r.status == 200
            async with session.get(f"{fake.url}/_fake/count") as r:
                assert await r.json() == {"count": 1}
            async with session.get(f"{fake.url}/_fake/messages") as r:
                [listed] = await r.json()
        assert listed["to"] == USER and listed["body"]["text"] == {"body": "hi"}

    async def test_unknown_phone_number_id_is_refused(self) -> None:
        """With a fixed phone_number_id, another id is a code 100 error."""
        async with FakeCloudAPI() as fake, aiohttp.ClientSession() as session:
            url = f"{fake.url}/v23.0/999/messages"
            headers = {"Authorization": f"Bearer {fake.token}"}
            async with session.post(url, json=request(), headers=headers) as r:
                body = await r.json()
        assert r.status == 400 and body["error"]["code"] == 100
        assert "999" in body["error"]["error_data"]["details"]


def test_command_line_help_is_plain_text() -> None:
    """python -m bot.testing --help prints no reStructuredText markup (':class:', '``')."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "bot.testing", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "fake WhatsApp Cloud API" in out and ":class:" not in out and "``" not in out
