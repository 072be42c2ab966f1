"""The send rate of one business number, shared by every process on the store.

Meta allows a number a throughput (80 messages/s by default) and answers 130429 beyond it,
whichever of our processes sent the message. The limit is a leaky bucket whose clock lives
in the store: a process takes a **batch of consecutive send slots** ``1/rate`` seconds apart
in one store write (:meth:`~bot.store.base.JobStore.reserve_sends`), then hands them out to
its senders locally, each sleeping until its slot. So N processes together never exceed the
rate, one busy process may use all of it, and a process pays one store round trip per batch,
not per message (at low traffic a batch is one slot: the slots are points in time, and a slot
left unused is never spent later, or a burst could follow a quiet moment).

The slots are wall-clock times (``time.time``): processes on several hosts need clocks kept
in step (NTP), as the leases do.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

log = structlog.get_logger("windowbot.ratelimit")

#: A slot whose time passed more than this many seconds ago is not used: sent late, it would
#: bunch with the next process's slot and push a second over the rate.
LATE = 0.01


class SendSlots(Protocol):
    """Where the shared bucket's clock lives (the store)."""

    async def reserve_sends(self, count: int, interval: float, now: float) -> float:
        """Take ``count`` slots ``interval`` apart; the time of the first."""


class SharedRateLimiter:
    """At most ``rate`` sends a second across every process sharing ``slots``.

    Args:
        slots: the store.
        rate: messages per second for the number; 0 turns the limiter off.
        batch: the most slots taken per store write (default: a tenth of a second's worth).
        clock, sleep: injectable for tests.
    """

    def __init__(
        self,
        slots: SendSlots,
        rate: float,
        *,
        batch: int = 0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self._slots_store = slots
        self._batch = batch or max(1, int(rate / 10))
        self._clock = clock
        self._sleep = sleep
        self._slots: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._waiting = 0
        self.reservations = 0  # store writes made (for tests and metrics)

    async def acquire(self) -> float:
        """Wait for this process's next send slot; the slot's time (0 when unlimited).

        A slot from this process's batch that went stale while it waited (a busy loop woke
        it late) is replaced, once: the next one is used however late it comes. So is a slot
        just reserved, even when the store's round trip took longer than ``LATE``: sends
        then bunch by at most that round trip, while taking another slot would come back
        just as late (a slow disk or a busy MongoDB would keep every sender waiting for
        ever, each try spending a slot of the shared rate).
        """
        if self.rate <= 0:
            return 0.0
        slot, reserved = await self._next_slot()
        if await self._until(slot) or reserved:
            return slot
        slot, _ = await self._next_slot()  # woken too late: sending now could bunch
        await self._until(slot)
        return slot

    async def _until(self, slot: float) -> bool:
        """Sleep until ``slot``; whether it is still on time (within ``LATE``)."""
        wait = slot - self._clock()
        if wait > 0:
            await self._sleep(wait)
        return self._clock() - slot <= LATE

    async def still(self, slot: float) -> None:
        """Before sending on ``slot`` taken a moment ago: a new slot if it is stale now
        (what came between, such as a store write, took too long)."""
        if self.rate > 0 and self._clock() - slot > LATE:
            await self.acquire()

    async def pause(self, seconds: float = 1.0) -> None:
        """Meta answered 130429 anyway (another sender on the number?): every process waits.

        Takes ``seconds`` worth of slots from the shared bucket and leaves them unused.
        """
        if self.rate <= 0:
            return
        async with self._lock:
            self._slots.clear()
            count = max(1, int(self.rate * seconds))
            await self._slots_store.reserve_sends(count, 1.0 / self.rate, self._clock())
            self.reservations += 1
        log.warning("send_rate_paused", seconds=seconds, reason="130429 from the Cloud API")

    async def _next_slot(self) -> tuple[float, bool]:
        """The next slot of this process's batch, and whether it was reserved just now."""
        self._waiting += 1
        try:
            async with self._lock:
                now = self._clock()
                while self._slots and self._slots[0] < now - LATE:
                    self._slots.popleft()
                reserved = not self._slots
                if reserved:
                    count = min(self._batch, self._waiting)
                    interval = 1.0 / self.rate
                    first = await self._slots_store.reserve_sends(count, interval, now)
                    self.reservations += 1
                    self._slots.extend(first + i * interval for i in range(count))
                return self._slots.popleft(), reserved
        finally:
            self._waiting -= 1


__all__ = ["SendSlots", "SharedRateLimiter"]
