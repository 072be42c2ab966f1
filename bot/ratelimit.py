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
        """Wait for this process's next send slot; the slot's time (0 when unlimited)."""
        if self.rate <= 0:
            return 0.0
        while True:
            slot = await self._next_slot()
            wait = slot - self._clock()
            if wait > 0:
                await self._sleep(wait)
            if self._clock() - slot <= LATE:
                return slot
            # woken too late (a busy loop): sending now could bunch with later slots

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

    async def _next_slot(self) -> float:
        self._waiting += 1
        try:
            async with self._lock:
                now = self._clock()
                while self._slots and self._slots[0] < now - LATE:
                    self._slots.popleft()
                if not self._slots:
                    count = min(self._batch, self._waiting)
                    interval = 1.0 / self.rate
                    first = await self._slots_store.reserve_sends(count, interval, now)
                    self.reservations += 1
                    self._slots.extend(first + i * interval for i in range(count))
                return self._slots.popleft()
        finally:
            self._waiting -= 1


__all__ = ["SendSlots", "SharedRateLimiter"]
