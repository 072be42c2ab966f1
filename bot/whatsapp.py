"""The WhatsApp Cloud API client: request shapes, error mapping and the rate limit.

One :class:`CloudAPI` per process, on one ``aiohttp.ClientSession``. Each send is **one**
request, bounded by the request timeout: retries belong to the outbox (one durable queue,
one policy, see :mod:`bot.sender`), so a slow or failing Cloud API never holds a user's
lease or order hostage inside a retry loop. The client turns Meta's error codes into the few
:mod:`bot.errors` classes the sender acts on, and tells a request Meta surely did not get
(:class:`~bot.errors.TransientError`) from one it may have accepted without answering
(:class:`~bot.errors.OutcomeUnknown`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import aiohttp

from bot import _json
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
from bot.models import JSON, is_user_id

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v23.0"

#: Meta codes by what the product does about them (see WHATSAPP.md).
WINDOW_CODES = frozenset({131047})
TEMPLATE_CODES = frozenset({132000, 132001, 132005, 132012, 132015, 132016})
RATE_LIMIT_CODES = frozenset({130429, 131056, 4, 80007})  # 4/80007: Graph app/account limits
HALT_CODES = frozenset({190, 131048})
UNDELIVERABLE_CODES = frozenset({131026})

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


def error_from_response(http_status: int, body: Any) -> CloudAPIError:
    """The :class:`~bot.errors.CloudAPIError` subclass for an error answer of the Cloud API.

    ``body`` is the decoded JSON (``{"error": {...}}``) or anything else for a body that was
    not JSON (a proxy's HTML page): then the HTTP status alone decides.
    """
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    try:
        code = int(error.get("code", 0))
    except (TypeError, ValueError):
        code = 0
    data = error.get("error_data")
    details = str(data.get("details", "")) if isinstance(data, dict) else ""
    said = str(error.get("message", "")) or f"HTTP {http_status}"
    if details and details not in said:
        said = f"{said}: {details}"
    said = said.rstrip(". ")
    trace = str(error.get("fbtrace_id", ""))

    def make(cls: type[CloudAPIError], what: str) -> CloudAPIError:
        message = f"Cloud API error {code} (HTTP {http_status}): {said}. {what}"
        return cls(message, code=code, http_status=http_status, details=details, fbtrace_id=trace)

    if code in WINDOW_CODES:
        return make(WindowClosed, "The 24-hour window is closed: send the template fallback.")
    if code in TEMPLATE_CODES:
        return make(TemplateRejected, "Fix the template call or the registry; not retried.")
    if code in RATE_LIMIT_CODES or (http_status == 429 and not code):
        return make(RateLimited, "Throughput limit: backing off and retrying.")
    if code == 190:
        return make(
            SendingHalted,
            "The access token is invalid or expired: renew"
            " WHATSAPP_TOKEN and resume sending; messages stay queued.",
        )
    if code in HALT_CODES:
        return make(
            SendingHalted,
            "Spam rate limit: stop sending and check the account's"
            " quality rating in WhatsApp Manager.",
        )
    if code in UNDELIVERABLE_CODES:
        return make(Undeliverable, "The recipient cannot receive messages; not retried.")
    if http_status >= 500 or http_status == 0:
        return make(TransientError, "Meta had a problem: retrying with backoff.")
    return make(InvalidRequest, "The request is wrong; not retried (see the details).")


class RateLimiter:
    """At most ``rate`` acquisitions per second across every caller (a leaky bucket).

    Each caller is given the next free slot, ``1/rate`` seconds after the previous one, and
    sleeps until it; slots are handed out synchronously, so concurrent callers never share
    one. ``rate`` 0 means unlimited.
    """

    def __init__(self, rate: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    async def acquire(self) -> float:
        """Wait for the next slot; return how long this caller waited."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        wait = slot - now
        if wait > 0:
            await self._sleep(wait)
        return wait


class CloudAPI:
    """The Cloud API client: ``await api.send(wa_id, message)`` returns the new wamid.

    Use it as ``async with CloudAPI(...) as api:`` (or ``await api.start()`` / ``close()``),
    or pass a ``session`` the application owns (it is then not closed here).

    Args:
        phone_number_id: the sending number's id.
        token: the access token; never logged, masked in ``repr``.
        base_url: ``https://graph.facebook.com``, or a fake's url in tests and the sandbox.
        api_version: the Graph API version, like ``v23.0``.
        rate_limit: messages per second for the whole process (Meta's default tier is 80);
            0 turns the limiter off.
        timeout: seconds for one request, connection included.
        session, sleep, clock: injectable for tests.
    """

    def __init__(
        self,
        *,
        phone_number_id: str,
        token: str,
        base_url: str = DEFAULT_BASE_URL,
        api_version: str = DEFAULT_API_VERSION,
        rate_limit: float = 80.0,
        timeout: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
    ) -> None:
        self.phone_number_id = phone_number_id
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.timeout = timeout
        self.limiter = RateLimiter(rate_limit, clock=clock, sleep=sleep)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = False
        self._url = f"{self.base_url}/{self.api_version}/{self.phone_number_id}/messages"

    def __repr__(self) -> str:
        return (
            f"CloudAPI(base_url={self.base_url!r}, api_version={self.api_version!r},"
            f" phone_number_id={self.phone_number_id!r}, token='***')"
        )

    @property
    def url(self) -> str:
        """The messages endpoint of the sending number."""
        return self._url

    async def start(self) -> None:
        """Create the HTTP session unless one was passed in."""
        if self._session is None:
            # Our own session carries the token and the timeout: nothing to merge per request.
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout, json_serialize=_json.dumps
            )
            self._own_session = True

    async def close(self) -> None:
        """Close the HTTP session if this client created it; safe to call twice."""
        if self._own_session and self._session is not None:
            await self._session.close()
        if self._own_session:
            self._session = None
            self._own_session = False

    async def __aenter__(self) -> CloudAPI:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def send(self, to: str, message: JSON, *, callback: str = "") -> str:
        """Send ``message`` (a Cloud API body without ``messaging_product``/``to``) to ``to``.

        ``to`` is a phone number (sent as ``to``) or a business-scoped user id such as
        ``US.13491208655302741918`` (sent as ``recipient``, for a user known by no number).

        ``callback`` goes out as ``biz_opaque_callback_data`` (at most 512 characters):
        Meta echoes it in every status webhook of the message.

        Returns:
            The wamid of the accepted message (accepted, not yet delivered).

        Raises:
            CloudAPIError: the subclass for Meta's code; :class:`OutcomeUnknown` when the
                request may have been accepted but no answer came.
        """
        # A business-scoped user id goes out as ``recipient`` (a user known by no phone number)
        address = "recipient" if is_user_id(to) else "to"
        payload = {"messaging_product": "whatsapp", "recipient_type": "individual", address: to}
        payload.update(message)
        if callback:
            payload["biz_opaque_callback_data"] = callback[:512]
        await self.limiter.acquire()
        data = await self._post(payload)
        messages = data.get("messages")
        wamid = messages[0].get("id") if isinstance(messages, list) and messages else None
        if not isinstance(wamid, str) or not wamid:
            raise OutcomeUnknown(
                "the Cloud API accepted the message but returned no message id",
                http_status=200,
            )
        return wamid

    async def mark_read(self, message_id: str, *, typing: bool = False) -> None:
        """Mark an inbound message as read (blue ticks); ``typing``: show "typing…" too
        (WhatsApp clears it with the reply, or after 25 s)."""
        payload: JSON = {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": message_id,
        }
        if typing:
            payload["typing_indicator"] = {"type": "text"}
        await self._post(payload)

    async def _post(self, payload: JSON) -> JSON:
        if self._session is None:
            raise RuntimeError("CloudAPI is not started: use 'async with CloudAPI(...)' first")
        try:
            request = (
                self._session.post(self._url, json=payload)
                if self._own_session
                else self._session.post(
                    self._url, json=payload, headers=self._headers, timeout=self._timeout
                )
            )
            async with request as response:
                status, body = response.status, await response.read()
        except TimeoutError:
            raise OutcomeUnknown(
                f"no answer from the Cloud API within {self.timeout}s (it may have accepted"
                " the message)"
            ) from None
        except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as exc:
            raise TransientError(  # never connected: the message surely did not go out
                f"cannot reach the Cloud API at {self.base_url}: {type(exc).__name__}: {exc}"
            ) from None
        except aiohttp.ClientError as exc:
            raise OutcomeUnknown(
                f"the connection to the Cloud API broke before its answer: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        try:
            data = _json.loads(body)
        except ValueError:
            data = None
        if 200 <= status < 300:
            if isinstance(data, dict):
                return data
            raise OutcomeUnknown(
                f"the Cloud API answered HTTP {status} without a JSON object", http_status=status
            )
        raise error_from_response(status, data)
