"""``FakeCloudAPI``: a loopback HTTP server that answers like Meta's ``/messages`` endpoint.

Re-exported by :mod:`bot.testing`; see there for the builders it shares. The request checks
live in :mod:`bot._fake_checks`, Meta's error payloads in :mod:`bot._fake_errors`, the
template account in :mod:`bot._fake_templates`, the status webhooks in
:mod:`bot._fake_webhooks` and the waits in :mod:`bot._fake_waits`; every name they took is
re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiohttp import web

from bot._fake_checks import (
    _BAD_SPACING,
    _TYPES,
    _check_interactive,
    _check_message,
    _check_template,
    _check_template_shape,
    _need,
    _text,
)
from bot._fake_errors import _DEFAULT_STATUS, _TITLES, RE_ENGAGEMENT, _error, _Problem
from bot._fake_templates import TemplateAccount
from bot._fake_waits import Waits
from bot.models import JSON
from bot.templates import TemplateRegistry
from bot.whatsapp import CloudAPI

# Private names too: code written before the split imports them from this module.
__all__ = [
    "RE_ENGAGEMENT",
    "WINDOW_SECONDS",
    "_BAD_SPACING",
    "_DEFAULT_STATUS",
    "_TITLES",
    "_TYPES",
    "FakeCloudAPI",
    "SentMessage",
    "_Failure",
    "_Problem",
    "_check_interactive",
    "_check_message",
    "_check_template",
    "_check_template_shape",
    "_error",
    "_need",
    "_text",
    "_wait",
]

WINDOW_SECONDS = 24 * 60 * 60


@dataclass(frozen=True, slots=True)
class SentMessage:
    """A message the fake accepted: ``body`` is the request JSON exactly as posted.

    ``to`` is the address it went to: the ``to`` phone number, or the ``recipient``
    business-scoped id when the request had no ``to`` (a user known by no phone number).

    ``error_code`` is 131047 for a message accepted and then failed by the asynchronous
    window rule (``window_errors="async"``), else 0.
    """

    to: str
    type: str
    body: JSON
    wamid: str
    time: float
    error_code: int = 0

    @property
    def callback(self) -> str:
        """The ``biz_opaque_callback_data`` it was sent with (echoed in its statuses)."""
        value = self.body.get("biz_opaque_callback_data", "")
        return value if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    code: int
    timeout: bool
    message: str


class FakeCloudAPI(TemplateAccount, Waits):
    """Meta's send endpoint on ``127.0.0.1``: ``async with FakeCloudAPI() as fake:``.

    Point the bot at ``fake.url`` (``WHATSAPP_API_URL``) with ``fake.token`` and
    ``fake.phone_number_id``. Accepted messages land in ``fake.messages``. Session messages
    to a user who has not written within 24 hours of ``clock()`` (tell the fake with
    :meth:`user_wrote`) fail with 131047: in the send answer (``window_errors="sync"``) or,
    like Meta often does, as a ``failed`` status webhook after a normal answer (``"async"``).
    With ``webhook_url`` and ``app_secret`` set, every accepted message is followed by signed
    status webhooks (``emit_statuses``) that echo the message's ``biz_opaque_callback_data``
    as Meta does; one the bot does not accept (no answer, not 200) is posted again for up to
    ``retry_statuses`` seconds, as Meta retries (template webhooks too). ``delay`` answers
    every send that many seconds late (a slow Cloud API): the message is taken at once, so a
    caller that gives up or dies while waiting has still sent it, as with Meta. With a
    ``registry``, templates are checked like Meta does (unknown → 132001, wrong parameter
    count → 132000, paused → 132015...).
    ``phone_number_id="*"`` accepts any number id. For a fake in another process (the
    sandbox, benchmarks: ``python -m bot.testing``) three control routes mirror the methods:
    ``GET /_fake/count``, ``GET /_fake/messages`` and ``POST /_fake/inbound``
    (``{"wa_id": ..., "timestamp": ...}``, like :meth:`user_wrote`).
    """

    def __init__(
        self,
        *,
        token: str = "test-token",
        phone_number_id: str = "123456789012345",
        api_version: str | None = None,
        registry: TemplateRegistry | None = None,
        clock: Callable[[], float] = time.time,
        window_errors: Literal["sync", "async"] = "sync",
        enforce_window: bool = True,
        webhook_url: str | None = None,
        app_secret: str | None = None,
        emit_statuses: Sequence[str] = ("sent", "delivered"),
        retry_statuses: float = 0.0,
        delay: float = 0.0,
        port: int = 0,
        waba_id: str = "102290129340398",
        throughput: float = 0.0,
    ) -> None:
        self.waba_id = waba_id
        #: The account's templates as Meta lists them (see :meth:`add_template`).
        self.templates: list[JSON] = []
        self._prices: dict[str, JSON] = {}
        self.page_size = 2  # small pages, so that clients must follow ``paging.next``
        self.token = token
        self.phone_number_id = phone_number_id
        self.api_version = api_version
        self.registry = registry
        self.clock = clock
        self.window_errors = window_errors
        self.enforce_window = enforce_window
        self.webhook_url = webhook_url
        self.app_secret = app_secret
        self.emit_statuses = tuple(emit_statuses)
        self.retry_statuses = retry_statuses
        self.delay = delay
        #: Most messages accepted in any 1 s (0: no limit); beyond, 130429 as Meta answers.
        self.throughput = throughput
        self.throttled = 0  # requests answered 130429 by the throughput limit
        self._recent: deque[float] = deque()
        self._user_failures: dict[str, deque[int]] = {}
        self.messages: list[SentMessage] = []
        self._arrived = asyncio.Event()
        self.requests: list[Any] = []  # every decoded request body, refused ones included
        self.read_receipts: list[str] = []
        self.typing_indicators: list[str] = []  # message ids shown "typing…" for
        self._read_event = asyncio.Event()
        self.webhook_answers: list[int] = []  # HTTP status of each webhook posted
        self._inbound: dict[str, float] = {}
        self._user_ids: dict[str, str] = {}  # phone number -> business-scoped id
        self._failures: deque[_Failure] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._seq = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._port = port

    @property
    def url(self) -> str:
        """The base url to use instead of ``https://graph.facebook.com``."""
        if not self._port:
            raise RuntimeError("FakeCloudAPI is not started: use 'async with FakeCloudAPI()'")
        return f"http://127.0.0.1:{self._port}"

    def client(self, **options: Any) -> CloudAPI:
        """A :class:`~bot.whatsapp.CloudAPI` pointed at this fake, with its token, number and
        (if set) API version, to open with ``async with``.

        ``options`` go to ``CloudAPI`` (``timeout``, ``sleep``...). The client's own rate
        limit is off unless ``rate_limit`` is given: the fake enforces Meta's.
        """
        settings: dict[str, Any] = {"rate_limit": 0.0, **options}
        if self.api_version:
            settings.setdefault("api_version", self.api_version)
        return CloudAPI(
            phone_number_id=self.phone_number_id, token=self.token, base_url=self.url, **settings
        )

    def messages_to(self, wa_id: str) -> list[SentMessage]:
        """The accepted messages addressed to ``wa_id``, in order."""
        return [m for m in self.messages if m.to == wa_id]

    def user_wrote(self, wa_id: str, timestamp: float | None = None) -> None:
        """Record an inbound message from ``wa_id`` at ``timestamp`` (default: ``clock()``).

        ``wa_id`` may be a business-scoped id; for a user :meth:`link_user` linked, both
        addresses open the window.
        """
        when = self.clock() if timestamp is None else float(timestamp)
        linked = self._user_ids.get(wa_id)
        for address in (wa_id, linked) if linked else (wa_id,):
            self._inbound[address] = max(when, self._inbound.get(address, when))

    def link_user(self, wa_id: str, user_id: str) -> None:
        """Tell the fake that phone number ``wa_id`` has business-scoped id ``user_id``.

        Status webhooks of messages sent to ``wa_id`` then carry ``recipient_user_id`` too,
        as Meta's do since 2026.
        """
        self._user_ids[wa_id] = user_id

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = None,
        code: int | None = None,
        timeout: bool = False,
        message: str = "",
    ) -> None:
        """Answer the next ``n`` send requests with an error instead of accepting them.

        ``status=500`` alone gives a 500 with code 131000; ``code=130429`` alone gives a 400
        (401 for 190); ``timeout=True`` holds the request without answering until the client
        gives up. Nothing is recorded for a failed request.
        """
        if status is None and code is None and not timeout:
            raise ValueError("give status, code or timeout=True")
        code = code if code is not None else (131000 if (status or 500) >= 500 else 100)
        status = status if status is not None else _DEFAULT_STATUS.get(code, 400)
        for _ in range(n):
            self._failures.append(_Failure(status, code, timeout, message))

    def fail_user(self, wa_id: str, code: int = 131056, n: int = 1) -> None:
        """Answer the next ``n`` sends to ``wa_id`` (only) with ``code`` (pair rate limit)."""
        self._user_failures.setdefault(wa_id, deque()).extend([code] * n)

    def _throttle(self, to: str) -> None:
        """Meta's limits: the number's throughput (130429) and per-user injected errors."""
        queued = self._user_failures.get(to)
        if queued:
            raise _Problem(queued.popleft(), f"Too many messages sent to {to}")
        if not self.throughput:
            return
        now = time.monotonic()
        while self._recent and self._recent[0] <= now - 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.throughput:
            self.throttled += 1
            raise _Problem(130429, "Cloud API message throughput has been reached")
        self._recent.append(now)

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/{version}/{phone_number_id}/messages", self._handle)
        app.router.add_get("/{version}/{waba_id}/message_templates", self._list_templates)
        app.router.add_post("/{version}/{waba_id}/message_templates", self._create_template)
        app.router.add_get("/_fake/count", self._count)
        app.router.add_get("/_fake/messages", self._list)
        app.router.add_post("/_fake/inbound", self._inbound_route)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        self._client = aiohttp.ClientSession()

    async def close(self) -> None:
        """Post pending status webhooks, then stop the server."""
        self._closing.set()
        await self.settle()
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._client, self._runner = None, None

    async def __aenter__(self) -> FakeCloudAPI:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the endpoint -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.requests.append(body)
        try:
            version = request.match_info["version"]
            if not re.fullmatch(r"v\d+\.\d+", version) or (
                self.api_version and version != self.api_version
            ):
                raise _Problem(100, f"Unknown or unsupported API version {version}")
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise _Problem(190, "Invalid or missing access token", 401)
            if self.phone_number_id not in ("*", request.match_info["phone_number_id"]):
                pnid = request.match_info["phone_number_id"]
                raise _Problem(100, f"Object with ID '{pnid}' does not exist")
            if self._failures:
                failure = self._failures.popleft()
                if failure.timeout:
                    await _wait(self._closing, 120.0)
                    return web.Response(status=504)
                raise _Problem(failure.code, failure.message, failure.status)
            if not isinstance(body, dict):
                raise _Problem(100, "The request body must be a JSON object")
            if body.get("status") == "read":
                return self._read(body)
            _check_message(body)
            self._throttle(str(body.get("to", "")))
            if body.get("type") == "template" and self.registry is not None:
                _check_template(body["template"], self.registry, by_phone="to" in body)
            if body.get("type") == "template":
                self._check_account_template(body["template"])
            answer = self._accept(body)
        except _Problem as problem:
            answer = _error(problem)
        if self.delay:  # like Meta, the message is taken even if the caller stops waiting
            await _wait(self._closing, self.delay)
        return answer

    async def _count(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.messages)})

    async def _list(self, request: web.Request) -> web.Response:
        fields = ("to", "type", "body", "wamid", "time", "error_code")
        return web.json_response([{k: getattr(m, k) for k in fields} for m in self.messages])

    async def _inbound_route(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.user_wrote(str(data["wa_id"]), data.get("timestamp"))
        return web.json_response({"ok": True})

    def _read(self, body: JSON) -> web.Response:
        if body.get("messaging_product") != "whatsapp" or not body.get("message_id"):
            raise _Problem(100, "messaging_product and message_id are required")
        self.read_receipts.append(str(body["message_id"]))
        typing = body.get("typing_indicator")
        if typing is not None:
            if typing != {"type": "text"}:
                raise _Problem(100, "typing_indicator must be {'type': 'text'}")
            self.typing_indicators.append(str(body["message_id"]))
        self._read_event.set()
        return web.json_response({"success": True})

    def _accept(self, body: JSON) -> web.Response:
        to, kind = str(body.get("to") or body["recipient"]), str(body.get("type", "text"))
        error_code = 0
        if kind != "template" and self.enforce_window:
            last = self._inbound.get(to)
            if last is None or self.clock() - last > WINDOW_SECONDS:
                if self.window_errors == "sync":
                    raise _Problem(131047, RE_ENGAGEMENT)
                error_code = 131047
        wamid = f"wamid.FAKE{next(self._seq):06d}{uuid.uuid4().hex[:20].upper()}"
        self.messages.append(SentMessage(to, kind, body, wamid, self.clock(), error_code))
        self._prices[wamid] = self._pricing(self.messages[-1])  # the category when sent
        self._arrived.set()
        if self.webhook_url and self.app_secret:
            self._schedule(self._report(wamid, to, error_code))
        answer: JSON = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "user_id" if "to" not in body else "wa_id": to}],
            "messages": [{"id": wamid}],
        }
        if kind == "template":
            answer["messages"][0]["message_status"] = "accepted"
        return web.json_response(answer)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)
