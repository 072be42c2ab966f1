"""The fake Cloud API's waits: until messages have arrived, or a message was marked read.

``Waits`` is the part of :class:`~bot.testing.FakeCloudAPI` that a test awaits while the bot
answers asynchronously (``wait_for``, ``wait_for_total``, ``wait_for_read``); the fake
inherits it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot._fake_cloud import SentMessage


class Waits:
    """Waits on what :class:`~bot.testing.FakeCloudAPI` receives.

    The attributes below are set by ``FakeCloudAPI.__init__``.
    """

    messages: list[SentMessage]
    read_receipts: list[str]
    _arrived: asyncio.Event
    _read_event: asyncio.Event

    if TYPE_CHECKING:  # FakeCloudAPI's

        def messages_to(self, wa_id: str) -> list[SentMessage]: ...

    async def wait_for(
        self, wa_id: str, count: int = 1, *, within: float = 10.0
    ) -> list[SentMessage]:
        """Wait until ``wa_id`` has received ``count`` messages; return them all.

        Raises ``AssertionError`` naming what arrived if they do not come ``within`` seconds
        (the bot answers asynchronously, after acknowledging the webhook).
        """

        def short() -> str:
            got = [m.type for m in self.messages_to(wa_id)]
            return f"{wa_id} got {len(got)} of {count} messages: {got}"

        await self._wait_until(lambda: len(self.messages_to(wa_id)) >= count, within, short)
        return self.messages_to(wa_id)

    async def wait_for_total(self, count: int, *, within: float = 10.0) -> list[SentMessage]:
        """Wait until ``count`` messages were accepted, to anyone; return them all."""
        await self._wait_until(
            lambda: len(self.messages) >= count,
            within,
            lambda: f"{len(self.messages)} of {count} messages arrived",
        )
        return list(self.messages)

    async def _wait_until(
        self, done: Callable[[], bool], within: float, short: Callable[[], str]
    ) -> None:
        """Wake at every accepted message until ``done()``; ``AssertionError(short())`` if
        that takes longer than ``within`` seconds."""
        self._arrived.clear()
        deadline = asyncio.get_running_loop().time() + within
        while not done():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(short())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
            self._arrived.clear()

    async def wait_for_read(self, message_id: str, *, within: float = 10.0) -> None:
        """Wait until ``message_id`` was marked read (receipts are sent on the side)."""
        async with asyncio.timeout(within):
            while message_id not in self.read_receipts:
                self._read_event.clear()
                await self._read_event.wait()
