"""The sandbox behind the console: a fake Cloud API in the process and a clock per user.

In sandbox mode (no Meta credentials) ``bot run`` sends its replies to a
:class:`~bot.testing.FakeCloudAPI` on a loopback port, through the same
:class:`~bot.whatsapp.CloudAPI` client it uses in production, and the fake posts signed
status webhooks back to ``/webhook``. The console's phone delivers the user's messages as
signed webhooks too: what it shows is what the pipeline did, with no shortcut.

The clock moves per user, the way ``bot chat`` moves its own: the dispatcher's clock is a
:class:`UserClock`, which reads the user a worker is handling from the log context every
worker binds (``wa_id``), so moving one user's clock never moves another's. The offsets live
in this process only and exist only in sandbox mode; a restart puts every user back on the
wall clock.
"""

from __future__ import annotations

import bisect
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import structlog

from bot._fake_cloud import FakeCloudAPI, SentMessage
from bot.config import Config
from bot.errors import BotError
from bot.models import JSON
from bot.sender import Transport
from bot.templates import TemplateRegistry
from bot.testing import contact, envelope, message_item, signed_request
from bot.whatsapp import CloudAPI

log = structlog.get_logger("windowbot.console")


class UserClock:
    """Wall time, moved forward per user by the sandbox console.

    Called with no argument (as the dispatcher does) it answers for the user the current
    worker handles (the ``wa_id`` every worker binds to its log context); outside a worker,
    the wall clock.
    """

    def __init__(self) -> None:
        #: user -> [(wall time it was set, offset)], oldest first
        self._history: dict[str, list[tuple[float, float]]] = {}

    def __call__(self) -> float:
        user = structlog.contextvars.get_contextvars().get("wa_id")
        return self.at(user) if isinstance(user, str) else time.time()

    def at(self, user: str) -> float:
        """The time as ``user``'s phone sees it now."""
        return time.time() + self.offset(user)

    def offset(self, user: str) -> float:
        """Seconds ``user``'s clock is ahead of the wall clock."""
        history = self._history.get(user)
        return history[-1][1] if history else 0.0

    def user_time(self, user: str, wall: float) -> float:
        """A wall-clock time (when the webhook stored a message) on ``user``'s clock."""
        history = self._history.get(user) or []
        index = bisect.bisect_right([since for since, _ in history], wall)
        return wall + (history[index - 1][1] if index else 0.0)

    def advance(self, user: str, seconds: float) -> float:
        """Move ``user``'s clock forward; the new offset."""
        offset = self.offset(user) + seconds
        self._history.setdefault(user, []).append((time.time(), offset))
        return offset

    def reset(self, user: str) -> None:
        """Put ``user`` back on the wall clock."""
        self._history.pop(user, None)


#: The fake keeps what it received in memory; a long-running sandbox keeps the newest only.
_KEEP = 10_000


class _LoggedTransport:
    """Sends through the Cloud API client and logs each reply as sandbox mode always has."""

    def __init__(self, api: CloudAPI, fake: FakeCloudAPI) -> None:
        self._api, self._fake = api, fake

    async def send(self, to: str, message: JSON, *, callback: str = "") -> str:
        """Log ``message`` (``reply_logged``), then send it to the fake Cloud API."""
        log.info("reply_logged", to=to, type=message.get("type"), message=message)
        wamid = await self._api.send(to, message, callback=callback)
        for kept in (self._fake.messages, self._fake.requests, self._fake.webhook_answers):
            if len(kept) > 2 * _KEEP:
                del kept[:-_KEEP]
        return wamid


class Sandbox:
    """The fake Cloud API, the user clocks and the webhook poster of one running bot."""

    def __init__(self, config: Config, registry: TemplateRegistry | None) -> None:
        self.config = config
        self.registry = registry
        self.clock = UserClock()
        self.fake: FakeCloudAPI | None = None
        # Status webhooks from the fake are signed like Meta's; without an app secret the
        # bot does not check them, and any key will do.
        self._secret = config.whatsapp.app_secret or secrets.token_hex(16)
        self._webhook = ""
        #: user -> (first outbox seq shown, wamids hidden): what a reset put out of view
        self.hidden: dict[str, tuple[int, frozenset[str]]] = {}

    @contextlib.asynccontextmanager
    async def transport(self) -> AsyncIterator[Transport]:
        """The fake Cloud API and a real client pointed at it, for the app's lifetime."""
        token = secrets.token_hex(16)
        async with FakeCloudAPI(
            token=token,
            phone_number_id="*",
            registry=self.registry,
            enforce_window=False,  # the bot's own window decision is what the console shows
            app_secret=self._secret,
            emit_statuses=("sent", "delivered", "read"),
        ) as fake:
            fake.webhook_url = self._webhook or None
            self.fake = fake
            log.info("sandbox_cloud_api", url=fake.url, effect="replies go to a fake Cloud API")
            try:
                async with CloudAPI(
                    phone_number_id="sandbox", token=token, base_url=fake.url, rate_limit=0
                ) as api:
                    yield _LoggedTransport(api, fake)
            finally:
                self.fake = None

    def bind(self, base_url: str) -> None:
        """Where the bot listens (known at the first console request)."""
        if not self._webhook:
            self._webhook = base_url.rstrip("/") + self.config.server.path
            if self.fake is not None:
                self.fake.webhook_url = self._webhook

    def sent(self) -> Mapping[str, SentMessage]:
        """What the fake Cloud API accepted, by wamid."""
        return {m.wamid: m for m in self.fake.messages} if self.fake is not None else {}

    async def deliver(
        self, user: str, name: str, kind: str, content: Any, *, ago: float = 0.0
    ) -> str:
        """Post the user's message to ``/webhook`` as Meta would; its wamid.

        ``ago``: the message was written that many seconds before it arrives.
        """
        if not self._webhook:
            raise BotError("the sandbox does not know the bot's address yet")
        item = message_item(user, kind, content, timestamp=self.clock.at(user) - ago)
        body = envelope([item], contacts=[contact(user, name)])
        raw, headers = signed_request(body, self._secret)
        async with (
            aiohttp.ClientSession() as session,
            session.post(self._webhook, data=raw, headers=headers) as response,
        ):
            if response.status != 200:
                raise BotError(f"the webhook answered {response.status}: {await response.text()}")
        return str(item["id"])
