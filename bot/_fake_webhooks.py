"""The fake Cloud API's status webhooks: what it posts back to the bot about its messages.

``StatusWebhooks`` is the part of :class:`~bot.testing.FakeCloudAPI` that posts signed
``statuses`` webhooks (``sent``, ``delivered``, ``read``, ``failed``, with Meta's pricing) and
``user_id_update`` webhooks, retried per ``retry_statuses``, and schedules and settles the ones
that follow each accepted message; the fake inherits it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import aiohttp

from bot._fake_errors import _TITLES, RE_ENGAGEMENT
from bot.models import JSON
from bot.templates import TemplateRegistry

if TYPE_CHECKING:
    from bot._fake_cloud import SentMessage


class StatusWebhooks:
    """The status webhooks :class:`~bot.testing.FakeCloudAPI` posts to the bot.

    The attributes below are set by ``FakeCloudAPI.__init__``.
    """

    templates: list[JSON]
    phone_number_id: str
    registry: TemplateRegistry | None
    clock: Callable[[], float]
    webhook_url: str | None
    app_secret: str | None
    emit_statuses: tuple[str, ...]
    retry_statuses: float
    messages: list[SentMessage]
    webhook_answers: list[int]
    _prices: dict[str, JSON]
    _inbound: dict[str, float]
    _user_ids: dict[str, str]
    _tasks: set[asyncio.Task[None]]
    _closing: asyncio.Event
    _client: aiohttp.ClientSession | None

    async def settle(self) -> None:
        """Wait until every status webhook scheduled so far has been posted."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def emit_status(
        self,
        wamid: str,
        status: str,
        *,
        recipient: str | None = None,
        errors: Iterable[Mapping[str, Any]] | None = None,
    ) -> int:
        """Post one signed status webhook about ``wamid``; return the bot's HTTP status.

        With ``retry_statuses``, a webhook the bot does not accept is posted again (backing
        off up to 2 s) until it is or that many seconds have passed; the last status (0 for no
        answer) is returned.
        """
        from bot.testing import envelope, status_item

        if not self.webhook_url or not self.app_secret or self._client is None:
            raise RuntimeError("set webhook_url and app_secret (and start the fake) first")
        sent = next((m for m in self.messages if m.wamid == wamid), None)
        if recipient is None:
            recipient = sent.to if sent is not None else ""
        item = status_item(
            wamid,
            status,
            recipient,
            timestamp=self.clock(),
            errors=errors,
            callback=sent.callback if sent is not None else "",
            user_id=self._user_ids.get(recipient),
        )
        if sent is not None and status in ("sent", "delivered", "read"):
            item["pricing"] = self._prices.get(wamid) or self._pricing(sent)
        body = envelope(statuses=[item], phone_number_id=self.phone_number_id)
        return await self._post_webhook(body)

    async def change_user_id(self, previous: str, current: str, *, wa_id: str | None = None) -> int:
        """Post a signed ``user_id_update`` webhook: ``previous`` is ``current`` from now on.

        Later sends to ``current`` are accepted like those to ``previous``; returns the bot's
        HTTP status (retried like :meth:`emit_status`).
        """
        from bot.testing import user_id_update

        if wa_id:
            self._user_ids[wa_id] = current
        if previous in self._inbound:
            self._inbound[current] = self._inbound[previous]
        body = user_id_update(
            previous,
            current,
            wa_id=wa_id,
            timestamp=self.clock(),
            phone_number_id=self.phone_number_id,
        )
        return await self._post_webhook(body)

    async def _post_webhook(self, body: JSON) -> int:
        """Post one signed webhook to the bot, retried per ``retry_statuses``."""
        from bot.testing import signed_request

        if not self.webhook_url or not self.app_secret or self._client is None:
            raise RuntimeError("set webhook_url and app_secret (and start the fake) first")
        raw, headers = signed_request(body, self.app_secret)
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.retry_statuses, 0.05
        while True:
            answer = 0
            try:
                async with self._client.post(
                    self.webhook_url, data=raw, headers=headers
                ) as response:
                    answer = response.status
            except aiohttp.ClientError:
                if not self.retry_statuses:
                    raise
            self.webhook_answers.append(answer)
            if answer == 200 or loop.time() + pause > deadline or self._closing.is_set():
                return answer  # closing: nobody is left to wait for the bot
            await asyncio.sleep(pause)
            pause = min(2.0, pause * 2)

    def _pricing(self, sent: SentMessage) -> JSON:
        """What Meta bills (per-message pricing): templates by category, service free."""
        if sent.type != "template":
            return {
                "billable": False,
                "pricing_model": "PMP",
                "category": "service",
                "type": "free_customer_service",
            }
        name = str(sent.body["template"]["name"])
        code = sent.body["template"].get("language", {}).get("code")
        found = next(
            (t for t in self.templates if (t["name"], t["language"]) == (name, code)), None
        )
        template = self.registry.get(name) if self.registry is not None else None
        category = found["category"] if found else template.category if template else "UTILITY"
        return {
            "billable": True,
            "pricing_model": "PMP",
            "category": str(category).lower(),
            "type": "regular",
        }

    async def _report(self, wamid: str, to: str, error_code: int) -> None:
        if error_code:
            error = {
                "code": error_code,
                "title": _TITLES[error_code],
                "message": _TITLES[error_code],
                "error_data": {"details": RE_ENGAGEMENT},
            }
            await self.emit_status(wamid, "failed", recipient=to, errors=[error])
            return
        for status in self.emit_statuses:
            await self.emit_status(wamid, status, recipient=to)

    def _schedule(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
