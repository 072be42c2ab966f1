"""The send rate shared through the store: slots taken in batches, handed out in order."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from bot.ratelimit import SharedRateLimiter
from bot.store.sqlite import SQLiteStore


class Clock:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class SlowSlots:
    """The store's slots behind a round trip of ``delay`` seconds on ``clock`` (a busy
    MongoDB, a disk with a slow fsync); fails the test on the 11th reservation of a run that
    should need far fewer (a sender that never gets its slot)."""

    def __init__(self, store: SQLiteStore, clock: Clock, delay: float) -> None:
        self.store, self.clock, self.delay = store, clock, delay
        self.calls = 0

    async def reserve_sends(self, count: int, interval: float, now: float) -> float:
        self.calls += 1
        assert self.calls <= 10, "the limiter keeps reserving slots and never sends"
        first = await self.store.reserve_sends(count, interval, now)
        self.clock.now += self.delay
        return first


class Oversleeping(Clock):
    """A busy event loop: every sleep wakes ``late`` seconds after it was due."""

    def __init__(self, late: float) -> None:
        super().__init__()
        self.late = late

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds + self.late)


class TestSharedRateLimiter:
    async def test_two_processes_share_the_rate(self, tmp_path: Path) -> None:
        """Two limiters on one store never send faster than the rate between them."""
        stores = [SQLiteStore(tmp_path / "bot.db") for _ in range(2)]
        for store in stores:
            await store.open()
        clock = Clock()
        limiters = [
            SharedRateLimiter(s, 10.0, batch=3, clock=clock, sleep=clock.sleep) for s in stores
        ]
        times = []
        for n in range(12):
            await limiters[n % 2].acquire()
            times.append(clock.now)
        for store in stores:
            await store.close()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.1 - 1e-9  # never faster than 10/s, whichever process sends

    async def test_one_store_write_per_batch(self, tmp_path: Path) -> None:
        """A busy process pays one store round trip per batch of sends, not one per send."""
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        clock = Clock()
        limiter = SharedRateLimiter(store, 80.0, batch=8, clock=clock, sleep=clock.sleep)
        await asyncio.gather(*(limiter.acquire() for _ in range(32)))
        await store.close()
        assert limiter.reservations <= 5  # the first caller, alone then, takes one slot
        assert abs(clock.now - (1000.0 + 31 / 80)) < 1e-6

    async def test_a_130429_pauses_every_process(self, tmp_path: Path) -> None:
        """After a pause taken by one process, the other's next send waits a second."""
        stores = [SQLiteStore(tmp_path / "bot.db") for _ in range(2)]
        for store in stores:
            await store.open()
        clock = Clock()
        one, other = (SharedRateLimiter(s, 80.0, clock=clock, sleep=clock.sleep) for s in stores)
        await one.pause(1.0)
        await other.acquire()
        for store in stores:
            await store.close()
        assert clock.now >= 1001.0 - 1e-9

    async def test_a_stale_slot_is_replaced(self, tmp_path: Path) -> None:
        """A slot that went stale before the send (a slow store write) gives way to a new one."""
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        clock = Clock()
        limiter = SharedRateLimiter(store, 10.0, batch=1, clock=clock, sleep=clock.sleep)
        slot = await limiter.acquire()
        await limiter.still(slot)
        assert limiter.reservations == 1  # fresh: kept
        clock.now += 0.5
        await limiter.still(slot)
        await store.close()
        assert limiter.reservations == 2

    @pytest.mark.parametrize("delay", [0.05, 0.15])
    async def test_a_store_slower_than_a_slot_still_lets_sends_go(
        self, tmp_path: Path, delay: float
    ) -> None:
        """A reservation whose round trip outlasts the slot's tolerance (0.05 s) or even the
        interval between slots (0.15 s: every new slot comes back late) is used, not retaken."""
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        clock = Clock()
        slots = SlowSlots(store, clock, delay=delay)
        limiter = SharedRateLimiter(slots, 10.0, batch=1, clock=clock, sleep=clock.sleep)
        taken = [await limiter.acquire() for _ in range(4)]
        await store.close()
        assert slots.calls == 4 and taken[0] == 1000.0  # no slot wasted
        assert all(later - earlier >= 0.1 - 1e-9 for earlier, later in itertools.pairwise(taken))

    async def test_a_busy_loop_waking_every_sender_late_still_sends(self, tmp_path: Path) -> None:
        """Each sender wakes 0.03 s after its slot (past the tolerance): each still sends,
        at the rate, without a run of new reservations."""
        store = SQLiteStore(tmp_path / "bot.db")
        await store.open()
        clock = Oversleeping(late=0.03)
        slots = SlowSlots(store, clock, delay=0.0)
        limiter = SharedRateLimiter(slots, 10.0, batch=1, clock=clock, sleep=clock.sleep)
        taken = [await limiter.acquire() for _ in range(3)]
        await store.close()
        assert slots.calls <= 6
        assert all(later - earlier >= 0.1 - 1e-9 for earlier, later in itertools.pairwise(taken))

    async def test_zero_means_unlimited(self, tmp_path: Path) -> None:
        """Rate 0: no waiting and no store writes."""
        store = SQLiteStore(tmp_path / "bot.db")
        limiter = SharedRateLimiter(store, 0.0)
        assert await limiter.acquire() == 0.0 and limiter.reservations == 0
        await limiter.still(-100.0)
        assert limiter.reservations == 0
