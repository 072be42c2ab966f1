"""Draining the inbox: one worker per user, users in parallel, leases across processes.

The webhook handler stores messages and calls :meth:`Dispatcher.notify`; a worker task for
that user waits a moment for the rest of a burst (``order_window``), takes the user's lease in
the store, then repeatedly applies the status items it was told about, handles pending
messages oldest first (each one a single atomic ``commit_turn``) and lets the sender send the
replies, until the store has nothing left for the user. Only then is the lease released. A
periodic sweep asks the store for users with work nobody holds: that is how messages left
behind by a crash, received by another process while this one held the user, or replies and
reminders that became due are picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Protocol

import structlog

from bot.errors import StoreError, VersionConflict
from bot.metrics import Metrics
from bot.models import (
    InboundMessage,
    OutboxEntry,
    Outgoing,
    StatusUpdate,
    TemplateCall,
    UserRecord,
)
from bot.store.base import Committed, Store

log = structlog.get_logger("windowbot.dispatcher")

_BATCH = 64
_MAX_CONFLICTS = 20
_PURGE_EVERY = 3600.0
_PURGE_BATCH = 5000


class Scheduled(Protocol):
    """A reminder a hook asked for: a reply, or a template, to send at ``at``."""

    @property
    def at(self) -> float: ...

    @property
    def outgoing(self) -> Outgoing | None: ...

    @property
    def template(self) -> TemplateCall | None: ...

    @property
    def note(self) -> str: ...


class TurnResult(Protocol):
    """What a handler returns: the user's new record, the replies and reminders to queue."""

    @property
    def record(self) -> UserRecord: ...

    @property
    def outgoing(self) -> Sequence[Outgoing]: ...

    @property
    def reminders(self) -> Sequence[Scheduled]: ...


def _scheduled(turn: TurnResult) -> list[Outgoing]:
    """The turn's reminders as outbox entries that wait for their time."""
    out = []
    for reminder in turn.reminders:
        if reminder.outgoing is not None:
            out.append(replace(reminder.outgoing, send_at=reminder.at))
        else:
            out.append(
                Outgoing(
                    message=None,
                    fallback=reminder.template,
                    note=reminder.note,
                    send_at=reminder.at,
                )
            )
    return out


Handler = Callable[[UserRecord, InboundMessage, float], Awaitable[TurnResult]]


class UserDrainer(Protocol):
    """The sender's side of a user's turn: apply statuses and send what is queued."""

    async def apply_statuses(self, record: UserRecord, statuses: Sequence[StatusUpdate]) -> None:
        """Apply status items to the outbox entries they name."""

    async def drain(
        self, record: UserRecord, now: float, fresh: Sequence[OutboxEntry] | None = None
    ) -> float | None:
        """Send the user's due outbox entries; return when to try again, if something waits.

        ``fresh``: the caller knows these are the user's only pending entries (skip the read).
        """


def apply_inbound(record: UserRecord, message: InboundMessage) -> UserRecord:
    """The record after ``message`` arrived: profile, window start, count (pure)."""
    return replace(
        record,
        wa_id=message.wa_id or record.wa_id,
        user_id=message.user_id or record.user_id,
        profile_name=message.profile_name or record.profile_name,
        last_inbound_at=max(record.last_inbound_at, message.timestamp),
        message_count=record.message_count + 1,
        undeliverable=False,  # they just wrote to us
    )


class Dispatcher:
    """Per-user workers over a store.

    Args:
        store: where the inbox, users and outbox live.
        handler: runs one message's turn (the flow engine); ``None`` only records the user.
        drainer: the sender; ``None`` leaves the outbox alone.
        metrics: counters to update.
        concurrency: the most users handled at once in this process.
        lease_seconds: how long a lease lasts before another process may take the user over.
        sweep_seconds: how often to look for work nobody holds.
        order_window: how long a worker woken by a new message waits before reading the
            user's pending messages, so that a burst delivered out of order is still handled
            in timestamp order (adds this much latency to the first reply of a burst).
        retention: seconds to keep finished work; older rows are purged hourly (0: never).
        clock: ``time.time`` unless a test moves time.
    """

    def __init__(
        self,
        store: Store,
        *,
        handler: Handler | None = None,
        drainer: UserDrainer | None = None,
        metrics: Metrics | None = None,
        concurrency: int = 512,
        lease_seconds: float = 15.0,
        sweep_seconds: float = 2.0,
        order_window: float = 0.0,
        retention: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.handler = handler
        self.drainer = drainer
        self.metrics = metrics or Metrics()
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self._lease = lease_seconds
        self._sweep_every = sweep_seconds
        self._order_window = order_window
        self._retention = retention
        self._purged_at = 0.0
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._active: dict[str, bool] = {}  # user -> notified again while working
        self._wants: dict[str, set[str]] = {}  # user -> "statuses", "outbox" to look at too
        self._tasks: set[asyncio.Task[None]] = set()
        self._received: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the periodic sweep (its first pass recovers what a crash left behind)."""
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="windowbot-sweep")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop sweeping, give running workers ``grace`` seconds to finish, then cancel them.

        A worker cancelled mid-send leaves its reply pending (sent again after the restart),
        so a clean shutdown lets them finish first.
        """
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no user is being worked on (for tests and graceful shutdown)."""
        await self._idle.wait()

    # --- entry points -------------------------------------------------------------------

    def notify(
        self,
        user: str,
        received_at: float | None = None,
        wamid: str = "",
        *,
        statuses: bool = False,
        everything: bool = False,
    ) -> None:
        """Say that ``user`` has work; starts a worker unless one is already running.

        A plain notification means "new inbound messages"; ``statuses`` adds status items to
        apply, ``everything`` (the sweep) also the outbox entries that are due.
        """
        if wamid and received_at is not None:
            self._received[wamid] = received_at
        if statuses or everything:
            wants = self._wants.setdefault(user, set())
            wants.add("statuses")
            if everything:
                wants.add("outbox")
        if user in self._active:
            self._active[user] = True
            return
        self._active[user] = False
        self._idle.clear()
        wait = 0.0 if everything else self._order_window
        task = asyncio.create_task(self._work(user, wait), name=f"windowbot-user-{user}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status_arrived(self, user: str, *, failed: bool) -> None:
        """A status item for ``user`` was stored.

        Progress (sent, delivered, read) is applied by the store on the way in; only a
        ``failed`` status needs the user's worker (it may queue a template fallback), or a
        status that may have beaten its wamid into the outbox while the worker is sending.
        Anything else left pending is picked up by the sweep.
        """
        if failed or user in self._active:
            self.notify(user, statuses=True)

    async def sweep(self) -> int:
        """Notify every user with work that nobody holds; return how many."""
        now = self._clock()
        self._forget_stale(now)
        users = await self.store.users_with_work(now, 1000)
        started = 0
        for user in users:
            if user in self._active or self._retry_at.get(user, 0) > now:
                continue
            self.notify(user, everything=True)
            started += 1
        return started

    def _forget_stale(self, now: float) -> None:
        """Drop bookkeeping another process made moot (it handled the message, the user)."""
        self._retry_at = {u: t for u, t in self._retry_at.items() if t > now}
        if len(self._received) > 10_000:
            cutoff = time.perf_counter() - 600
            self._received = {m: t for m, t in self._received.items() if t > cutoff}

    async def purge(self) -> int:
        """Delete finished work older than the retention, a batch at a time; how many rows."""
        total = 0
        before = self._clock() - self._retention
        for _ in range(100):  # at most 100 batches an hour: never hog the store
            deleted = await self.store.purge(before, _PURGE_BATCH)
            total += deleted
            if deleted < _PURGE_BATCH:
                break
            await asyncio.sleep(0)
        if total:
            log.info("store_purged", rows=total, older_than_days=self._retention / 86400)
        return total

    async def _sweep_loop(self) -> None:
        while True:
            try:
                if self._retention and self._clock() - self._purged_at >= _PURGE_EVERY:
                    self._purged_at = self._clock()
                    await self.purge()
                await self.sweep()
            except StoreError as exc:
                log.warning("sweep_failed", error=str(exc))
            except Exception:
                log.exception("sweep_crashed")
            await asyncio.sleep(self._sweep_every)

    # --- one user's worker --------------------------------------------------------------

    async def _work(self, user: str, wait: float) -> None:
        # Each worker is its own task with its own context: every log line written while
        # handling this user (engine, hooks, sender, store) carries these keys.
        structlog.contextvars.bind_contextvars(wa_id=user)
        try:
            if wait:
                # Meta does not promise delivery order: let the rest of a burst land, so
                # the whole burst is handled in timestamp order.
                await asyncio.sleep(wait)
            async with self._slots:
                await self._work_user(user)
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            log.warning("user_work_interrupted", error=str(exc))
        except Exception:
            log.exception("user_work_crashed")
        finally:
            self._active.pop(user, None)
            if not self._active:
                self._idle.set()

    async def _work_user(self, user: str) -> None:
        store, owner = self.store, self.owner
        lease = _Lease(store, user, owner, self._lease, self._clock)
        if not await lease.renew():
            return  # another process has the user; its worker or a later sweep takes this
        try:
            record = await store.get_user(user) or UserRecord(key=user)
            while True:
                self._active[user] = False
                wants = self._wants.pop(user, set())
                statuses = []
                if "statuses" in wants:
                    statuses = await store.pending_statuses(user, _BATCH)
                    if statuses and self.drainer is not None:
                        await self.drainer.apply_statuses(record, statuses)
                    if statuses:
                        await store.finish_statuses([(s.id, s.status) for s in statuses])
                messages = await store.pending_inbound(user, _BATCH)
                for message in messages:
                    if not await lease.keep():
                        return
                    committed = await self._handle(record, message)
                    record = committed.record
                    if self.drainer is not None and (committed.backlog or committed.entries):
                        # with nothing older pending, the new replies are all there is to send
                        fresh = None if committed.backlog else committed.entries
                        await self._drain(record, fresh)
                if self.drainer is not None and not messages and (statuses or "outbox" in wants):
                    await self._drain(record)
                if not statuses and not messages and not self._active.get(user):
                    return
        finally:
            with contextlib.suppress(StoreError):
                await store.release_user(user, owner)

    async def _drain(self, record: UserRecord, fresh: Sequence[OutboxEntry] | None = None) -> None:
        assert self.drainer is not None
        retry_at = await self.drainer.drain(record, self._clock(), fresh)
        if retry_at is None:
            self._retry_at.pop(record.key, None)
        else:
            self._retry_at[record.key] = retry_at

    async def _handle(self, record: UserRecord, message: InboundMessage) -> Committed:
        """Run one message's turn and store it atomically; says what was stored."""
        structlog.contextvars.bind_contextvars(
            message_id=message.id, flow=record.flow, state=record.state
        )
        for _ in range(_MAX_CONFLICTS):
            now = self._clock()
            base = apply_inbound(record, message)
            outgoing: tuple[Outgoing, ...] = ()
            try:
                if self.handler is None:
                    new = base
                else:
                    turn = await self.handler(base, message, now)
                    new, outgoing = turn.record, (*turn.outgoing, *_scheduled(turn))
            except Exception as exc:
                log.exception("message_failed")
                self.metrics.failed += 1
                await self.store.fail_inbound(message.id, f"{type(exc).__name__}: {exc}", now)
                self._received.pop(message.id, None)
                return Committed(record, backlog=True)
            try:
                committed = await self.store.commit_turn(message.id, new, outgoing, now)
            except VersionConflict:
                record = await self.store.get_user(message.user) or UserRecord(key=message.user)
                if not await self._still_pending(message):
                    return Committed(record, backlog=True)
                continue
            self.metrics.processed += 1
            started = self._received.pop(message.id, None)
            if started is not None:
                self.metrics.latency.observe(time.perf_counter() - started)
            log.debug(
                "message_processed",
                to_flow=committed.record.flow,
                to_state=committed.record.state,
                replies=len(outgoing),
            )
            return committed
        raise VersionConflict(f"user {message.user}: gave up after {_MAX_CONFLICTS} conflicts")

    async def _still_pending(self, message: InboundMessage) -> bool:
        pending = await self.store.pending_inbound(message.user, _BATCH)
        return any(m.id == message.id for m in pending)


__all__ = ["Dispatcher", "Handler", "TurnResult", "UserDrainer", "apply_inbound"]


class _Lease:
    """A worker's hold on one user, renewed once half its time has passed."""

    def __init__(
        self, store: Store, user: str, owner: str, seconds: float, clock: Callable[[], float]
    ) -> None:
        self.store, self.user, self.owner = store, user, owner
        self.seconds, self.clock = seconds, clock
        self.until = 0.0

    async def renew(self) -> bool:
        """Take or extend the lease; ``False`` if another owner holds it."""
        now = self.clock()
        until = now + self.seconds
        if not await self.store.acquire_user(self.user, self.owner, until, now):
            return False
        self.until = until
        return True

    async def keep(self) -> bool:
        """Renew if half the lease is gone; ``False`` (and a warning) if it was lost."""
        if self.until - self.clock() >= self.seconds / 2:
            return True
        if await self.renew():
            return True
        log.warning("lease_lost", wa_id=self.user)
        return False
