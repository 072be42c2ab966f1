"""Draining the inbox: one worker per user, users in parallel, leases across processes.

The webhook handler stores messages through :meth:`Dispatcher.receive`, which claims their
users in the same store operation where the store can (SQLite): the lease and all the user's
pending work come back with the insert, and a worker task for each claimed user starts with
them. Other users (another process holds them, or the store cannot claim cheaply: Mongo)
get a worker that claims them itself. A worker then applies status items, sends replies
left pending, and handles the pending messages in arrival order, each one a single atomic,
lease-fenced ``commit_turn`` followed by the sends of its replies, until the store has
nothing left for the user. No message waits for anything but the one before it.

Leases are renewed in the background, one batched write for every user this process holds,
however long a turn or a send takes; a worker whose lease was lost stops before its next
write or send (and the store refuses its writes anyway: they are fenced by the lease token).
A message whose handling fails is retried a bounded number of times, then marked failed with
the reason, and the user gets the project's error reply; their later messages go on.

A periodic sweep asks the store for users with work nobody holds: that is how messages left
behind by a crash, received by another process while this one held the user, or replies and
reminders that became due are picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Protocol

import structlog

from bot.errors import LeaseLost, StoreError, StoreUnavailable, VersionConflict
from bot.metrics import Metrics
from bot.models import (
    InboundMessage,
    OutboxEntry,
    Outgoing,
    StatusUpdate,
    TemplateCall,
    UserRecord,
    value_object,
)
from bot.retry import RetryPolicy
from bot.store.base import Added, Committed, Lease, PreTurn, Store, Work

log = structlog.get_logger("windowbot.dispatcher")

_BATCH = 64
_MAX_CONFLICTS = 20
_PURGE_EVERY = 3600.0
_PURGE_BATCH = 5000
#: A failing turn is tried three times, 0.2 s and 0.4 s apart (with jitter).
HANDLING = RetryPolicy(max_attempts=3, base=0.2, cap=2.0)


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

#: A turn that calls no hook, or ``None`` if it would (:meth:`bot.engine.Engine.handle_pure`).
PureHandler = Callable[[UserRecord, InboundMessage, float], TurnResult | None]


ErrorReplies = Callable[[UserRecord, InboundMessage | None, float, str], Sequence[Outgoing]]

#: Stores a turn's reminders as jobs (:func:`bot.jobs.schedule_turn`), before its commit.
ReminderJobs = Callable[[UserRecord, InboundMessage, TurnResult, float], Awaitable[None]]


@value_object
class Drained:
    """What the sender did with a user's outbox.

    Attributes:
        record: the user's record afterwards (a 131026 marks it undeliverable).
        wake_at: when something left pending (a retry, a reminder) wants another look.
        blocked: an entry that must go out before later ones is waiting (a retry, or an
            attempt whose outcome is not known yet): new replies queue behind it.
    """

    record: UserRecord
    wake_at: float | None = None
    blocked: bool = False


class UserDrainer(Protocol):
    """The sender's side of a user's turn: apply statuses and send what is queued."""

    async def apply_statuses(
        self, lease: Lease, record: UserRecord, statuses: Sequence[StatusUpdate]
    ) -> bool:
        """Apply status items to the entries they name; whether an entry was queued again."""

    async def drain(
        self,
        lease: Lease,
        record: UserRecord,
        entries: Sequence[OutboxEntry],
        now: float,
        lease_ok: Callable[[], bool],
    ) -> Drained:
        """Send the due ones of ``entries`` (the user's pending entries, in ``seq`` order)."""


def apply_inbound(record: UserRecord, message: InboundMessage, now: float) -> UserRecord:
    """The record after ``message`` arrived: profile, window start, count (pure).

    The window starts at the message's timestamp, but never later than ``now``: a clock
    ahead of ours cannot stretch the 24 hours Meta allows.
    """
    return replace(
        record,
        wa_id=message.wa_id or record.wa_id,
        user_id=message.user_id or record.user_id,
        profile_name=message.profile_name or record.profile_name,
        last_inbound_at=max(record.last_inbound_at, min(message.timestamp, int(now))),
        message_count=record.message_count + 1,
        undeliverable=False,  # they just wrote to us
    )


class Dispatcher:
    """Per-user workers over a store.

    Args:
        store: where the inbox, users and outbox live.
        handler: runs one message's turn (the flow engine); ``None`` only records the user.
        drainer: the sender; ``None`` leaves the outbox alone.
        error_replies: what a user gets when their message could not be handled.
        metrics: counters to update.
        concurrency: the most users handled at once in this process.
        lease_seconds: how long a lease lasts unless renewed (renewed every third of it).
        sweep_seconds: how often to look for work nobody holds.
        retention: seconds to keep finished work; older rows are purged hourly (0: never).
        handling: how often a failing turn is tried before the message is marked failed.
        clock: ``time.time`` unless a test moves time.
        reminders: stores a turn's reminders as jobs; ``None`` queues them in the outbox
            with their ``send_at``.
        pure_handler: the handler's turns that call no hook, run on the webhook's path for
            idle users (see :meth:`receive`); ``None``: every turn runs in a worker.
    """

    def __init__(
        self,
        store: Store,
        *,
        handler: Handler | None = None,
        drainer: UserDrainer | None = None,
        error_replies: ErrorReplies | None = None,
        metrics: Metrics | None = None,
        concurrency: int = 512,
        lease_seconds: float = 15.0,
        sweep_seconds: float = 2.0,
        retention: float = 0.0,
        handling: RetryPolicy = HANDLING,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        reminders: ReminderJobs | None = None,
        pure_handler: PureHandler | None = None,
    ) -> None:
        self.store = store
        self.handler = handler
        self.pure_handler = pure_handler
        self.reminders = reminders
        self.drainer = drainer
        self.error_replies = error_replies
        self.metrics = metrics or Metrics()
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self._lease = lease_seconds
        self._sweep_every = sweep_seconds
        self._retention = retention
        self._handling = handling
        self._purged_at = 0.0
        self._clock = clock
        self._jitter = jitter
        self._slots = asyncio.Semaphore(concurrency)
        self._active: dict[str, bool] = {}  # user -> notified again while working
        self._tasks: set[asyncio.Task[None]] = set()
        self._received: dict[str, float] = {}
        self._retry_at: dict[str, float] = {}
        self._leases = _Leases(store, lease_seconds, clock, on_work_left=self._work_left)
        self._background: list[asyncio.Task[None]] = []
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the sweep (its first pass recovers what a crash left) and lease renewal."""
        self._stopping = False
        self._background = [
            asyncio.create_task(self._sweep_loop(), name="windowbot-sweep"),
            asyncio.create_task(self._leases.keep(), name="windowbot-leases"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop sweeping, give running workers ``grace`` seconds to finish, then cancel them.

        A worker cancelled mid-send leaves its attempt in flight: after the restart it is
        resent only if no status webhook shows that Meta accepted it.
        """
        self._stopping = True
        sweeper = self._background[:1]
        for task in sweeper:
            task.cancel()
        await asyncio.gather(*sweeper, return_exceptions=True)
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in self._background[1:]:
            task.cancel()
        await asyncio.gather(*self._background[1:], return_exceptions=True)
        self._background = []
        await self._leases.flush()

    async def idle(self) -> None:
        """Wait until no user is being worked on and their leases are released."""
        while True:
            await self._idle.wait()
            await self._leases.flush()  # may find work left, and start its worker
            if self._idle.is_set():
                return

    # --- entry points -------------------------------------------------------------------

    def notify(self, user: str, received_at: float | None = None, wamid: str = "") -> None:
        """Say that ``user`` has work; starts a worker unless one is already running."""
        if wamid and received_at is not None:
            self._received[wamid] = received_at
        if user in self._active:
            self._active[user] = True
            return
        self._active[user] = False
        self._idle.clear()
        self._start(user)

    def _start(self, user: str, work: Work | None = None, **context: str) -> None:
        task = asyncio.create_task(self._work(user, work, context), name=f"windowbot-user-{user}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def receive(
        self, messages: Sequence[InboundMessage], now: float, received_at: float
    ) -> Added:
        """Store a webhook's ``messages`` and start their users' workers; which were new.

        Workers start for the users the store filed the messages under (``Added.users``:
        a message carrying only a business-scoped id may belong to a user keyed by phone).

        The users nobody works on in this process are claimed in the insert's own store
        operation where the store can (:meth:`Store.add_and_claim`): their workers start
        with their work in hand. They are marked busy first, so a webhook arriving
        meanwhile leaves them to the worker about to start.

        An idle user's message can even be handled there: when the store remembers the
        user's record and the turn calls no hook (``pure_handler``), the turn runs before
        the insert, and the store commits it in the same write if the record is unchanged
        and the message is all the user has pending; the worker then only sends the
        replies. Otherwise the turn is dropped (it had no effect) and the message waits for
        its worker as usual.
        """
        users = list(dict.fromkeys(m.user for m in messages if m.user not in self._active))
        for user in users:
            self._active[user] = False
        if users:
            self._idle.clear()
        pre = self._pre_turns(messages, users)
        try:
            fresh, works = await self.store.add_and_claim(
                messages,
                now,
                owner=self.owner,
                until=now + self._lease,
                users=users,
                limit=_BATCH,
                turns={user: turn for user, (turn, _) in pre.items()},
            )
        except BaseException:
            self._unreserve(users, set())
            raise
        for work in works:
            self._leases.hold(work.lease)
            user = work.lease.user
            if work.handled is None:
                self._start(user, work)
                continue
            turn, read = pre[user]
            self.metrics.processed += 1
            self.metrics.latency.observe(time.perf_counter() - received_at)
            self._start(user, work, message_id=turn.message_id, flow=read.flow, state=read.state)
        started = {work.lease.user for work in works}
        self._unreserve(users, started)
        for message, new, user in zip(messages, fresh, fresh.users, strict=True):
            if new:
                self._received[message.id] = received_at
                if user not in started:  # its worker claims it (or finds it held)
                    self.notify(user)
        return fresh

    def _pre_turns(
        self, messages: Sequence[InboundMessage], users: Sequence[str]
    ) -> dict[str, tuple[PreTurn, UserRecord]]:
        """The pure turns of ``users``' messages, for :meth:`receive`; with the records read.

        Only a user with one message in this webhook and a record the store remembers is
        tried; a turn that asks for reminders (stored before a turn's commit) is dropped.
        """
        if self.pure_handler is None or self.drainer is None or not users:
            return {}
        idle = set(users)
        counts = Counter(m.user for m in messages)
        pre = {}
        for message in messages:
            user = message.user
            if user not in idle or counts[user] != 1:
                continue
            record = self.store.known_record(user)
            if record is None:
                continue
            # as in the user's worker: log lines (and a per-user clock) know the user
            tokens = structlog.contextvars.bind_contextvars(wa_id=user, message_id=message.id)
            try:
                now = self._clock()
                turn = self.pure_handler(apply_inbound(record, message, now), message, now)
            except Exception:  # the worker's turn fails the same way, and says so
                turn = None
            finally:
                structlog.contextvars.reset_contextvars(**tokens)
            if turn is None or turn.reminders or getattr(turn, "cancels", ()):
                continue
            pre[user] = (PreTurn(message.id, turn.record, tuple(turn.outgoing), now), record)
        return pre

    def _unreserve(self, users: Sequence[str], started: set[str]) -> None:
        """Give up the users marked busy for a claim that did not start their worker."""
        for user in users:
            if user not in started and self._active.pop(user, False):
                self.notify(user)  # work arrived meanwhile: the usual worker claims it
        if not self._active:
            self._idle.set()

    def _work_left(self, user: str) -> None:
        """A released user has work another process stored meanwhile: claim them again."""
        if self._stopping:
            return  # whoever runs next takes it (a sweep, another process)
        log.info("work_left_after_release", wa_id=user)
        self.notify(user)

    def status_arrived(self, user: str, *, failed: bool) -> None:
        """A status item for ``user`` was stored.

        Progress (sent, delivered, read) is applied by the store on the way in; the user's
        worker is needed for a ``failed`` status (it may queue a template fallback), while
        it works (a status may have beaten its wamid into the outbox), and when the user's
        replies wait for an attempt whose outcome this status may have settled.
        """
        if failed or user in self._active or user in self._retry_at:
            self._retry_at.pop(user, None)
            self.notify(user)

    async def sweep(self) -> int:
        """Notify every user with work that nobody holds; return how many."""
        now = self._clock()
        self._forget_stale(now)
        users = await self.store.users_with_work(now, 1000)
        started = 0
        for user in users:
            if user in self._active or self._retry_at.get(user, 0) > now:
                continue
            self.notify(user)
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

    async def _work(
        self, user: str, work: Work | None = None, context: dict[str, str] | None = None
    ) -> None:
        # Each worker is its own task with its own context: every log line written while
        # handling this user (engine, hooks, sender, store) carries these keys.
        structlog.contextvars.bind_contextvars(wa_id=user, **(context or {}))
        try:
            async with self._slots:
                await self._work_user(user, work)
        except asyncio.CancelledError:
            raise
        except LeaseLost as exc:
            log.warning("lease_lost", error=str(exc))
        except StoreError as exc:
            log.warning("user_work_interrupted", error=str(exc))
        except Exception:
            log.exception("user_work_crashed")
        finally:
            self._active.pop(user, None)
            if not self._active:
                self._idle.set()

    async def _work_user(self, user: str, work: Work | None) -> None:
        if work is None:  # else claimed with the webhook's insert, and already held
            now = self._clock()
            work = await self.store.claim(user, self.owner, now + self._lease, now, limit=_BATCH)
            if work is None:
                return  # another process has the user; its worker or a later sweep takes this
            self._leases.hold(work.lease)
        lease = work.lease
        done = False
        try:
            while work is not None:
                work = await self._step(lease, work)
            done = True
        finally:  # a worker that failed leaves what is left to the sweep, not to a hot loop
            self._leases.release(lease, recheck=done)

    async def _step(self, lease: Lease, work: Work) -> Work | None:
        """Handle what one read of the user's work found; the next read, if more is due."""
        user = lease.user
        self._active[user] = False
        record, drainer = work.record, self.drainer
        if work.handled is not None:  # by the webhook's write: its replies are to send
            assert drainer is not None  # (only turns with a sender are run there)
            await self._drain(lease, record, work.handled.entries)
            return await self._next(lease, reread=False, full=False)
        requeued = False
        if work.statuses:
            if drainer is not None:
                requeued = await drainer.apply_statuses(lease, record, work.statuses)
            await self.store.finish_statuses(user, [(s.id, s.status) for s in work.statuses])
        drained = Drained(record)
        if drainer is not None and work.outbox and not requeued:
            drained = await self._drain(lease, record, work.outbox)
            record = drained.record
        reread = requeued
        for message in work.inbound:
            self._leases.check(lease)
            sending = drainer is not None and not drained.blocked and not reread
            committed = await self._handle(lease, record, message, start_sending=sending)
            record = committed.record
            if drainer is None or not committed.entries or drained.blocked:
                continue
            if committed.backlog or reread:
                reread = True  # older replies are pending: send them all in order
            else:
                drained = await self._drain(lease, record, committed.entries)
                record = drained.record
        return await self._next(lease, reread=reread, full=len(work.inbound) >= _BATCH)

    async def _next(self, lease: Lease, *, reread: bool, full: bool) -> Work | None:
        """The user's next work, if there may be some: they were notified meanwhile, older
        replies are to send (``reread``), or the last read was ``full``."""
        if not (self._active.get(lease.user) or reread or full):
            return None
        work = await self.store.read_work(lease, limit=_BATCH)
        if not (work.inbound or work.statuses or (work.outbox and reread)):
            return None
        return work

    async def _drain(
        self, lease: Lease, record: UserRecord, entries: Sequence[OutboxEntry]
    ) -> Drained:
        assert self.drainer is not None
        drained = await self.drainer.drain(
            lease, record, entries, self._clock(), lambda: self._leases.valid(lease)
        )
        if drained.wake_at is None:
            self._retry_at.pop(record.key, None)
        else:
            self._retry_at[record.key] = drained.wake_at
        return drained

    async def _handle(
        self, lease: Lease, record: UserRecord, message: InboundMessage, *, start_sending: bool
    ) -> Committed:
        """Run one message's turn and store it atomically; says what was stored.

        A turn that raises is tried again (``handling``); then the message is marked failed
        with the reason and the user gets the error reply, so their next message is handled.
        """
        structlog.contextvars.bind_contextvars(
            message_id=message.id, flow=record.flow, state=record.state
        )
        failures = conflicts = 0
        while True:
            now = self._clock()
            base = apply_inbound(record, message, now)
            failed = ""
            try:
                new, outgoing = await self._turn(base, message, now)
                committed = await self.store.commit_turn(
                    lease, message.id, new, outgoing, now, start_sending=start_sending
                )
            except (LeaseLost, StoreUnavailable):
                raise
            except VersionConflict:
                conflicts += 1
                if conflicts >= _MAX_CONFLICTS:
                    raise
                work = await self.store.read_work(lease, limit=_BATCH)
                record = work.record
                if all(m.id != message.id for m in work.inbound):
                    return Committed(record)  # another writer handled it meanwhile
                continue
            except Exception as exc:
                failures += 1
                failed = f"{type(exc).__name__}: {exc}"[:500]
                delay = self._handling.delay(failures, self._jitter())
                if delay is not None:
                    log.warning("message_retry", error=failed, attempt=failures, delay=delay)
                    await asyncio.sleep(delay)
                    continue
                committed = await self._give_up(lease, record, base, message, now, failed)
            break
        if failed:
            self.metrics.failed += 1
        else:
            self.metrics.processed += 1
        started = self._received.pop(message.id, None)
        if started is not None:
            self.metrics.latency.observe(time.perf_counter() - started)
        return committed

    async def _turn(
        self, base: UserRecord, message: InboundMessage, now: float
    ) -> tuple[UserRecord, tuple[Outgoing, ...]]:
        if self.handler is None:
            return base, ()
        turn = await self.handler(base, message, now)
        if self.reminders is None:
            return turn.record, (*turn.outgoing, *_scheduled(turn))
        if turn.reminders or getattr(turn, "cancels", ()):
            await self.reminders(base, message, turn, now)
        return turn.record, tuple(turn.outgoing)

    async def _give_up(
        self,
        lease: Lease,
        record: UserRecord,
        base: UserRecord,
        message: InboundMessage,
        now: float,
        reason: str,
    ) -> Committed:
        """Mark the message failed and queue the error reply instead of the turn's result."""
        log.error("message_failed", error=reason, attempts=self._handling.max_attempts)
        replies: Sequence[Outgoing] = ()
        if self.error_replies is not None:
            try:
                replies = self.error_replies(base, message, now, reason)
            except Exception:
                log.exception("error_reply_failed")
        try:
            return await self.store.commit_turn(
                lease, message.id, base, replies, now, failed=reason
            )
        except (LeaseLost, StoreUnavailable, VersionConflict):
            raise
        except Exception:  # even the error reply cannot be stored: keep the record as it was
            log.exception("error_reply_not_stored")
            return await self.store.commit_turn(lease, message.id, record, (), now, failed=reason)


__all__ = [
    "Dispatcher",
    "Drained",
    "ErrorReplies",
    "Handler",
    "PureHandler",
    "TurnResult",
    "UserDrainer",
    "apply_inbound",
]


class _Leases:
    """The leases this process holds: renewed together in the background, released in batches.

    A lease is trusted locally until a safety margin before it would run out since its last
    successful renewal: a worker checks :meth:`valid` before each send, so a process whose
    renewals stall (a paused process, a store that is down) stops sending before another
    process may take its users over. A released user with work left (another process stored
    it while we held the user, and left it to us) is handed to ``on_work_left``.
    """

    def __init__(
        self,
        store: Store,
        seconds: float,
        clock: Callable[[], float],
        on_work_left: Callable[[str], None] = lambda user: None,
    ) -> None:
        self.store, self.seconds, self.clock = store, seconds, clock
        self.on_work_left = on_work_left
        self._held: dict[str, Lease] = {}
        self._valid_until: dict[str, float] = {}  # token -> time.monotonic() bound
        self._lost: set[str] = set()
        self._releasing: list[tuple[Lease, bool]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    def hold(self, lease: Lease) -> None:
        """Start renewing ``lease`` (just claimed)."""
        self._held[lease.user] = lease
        self._valid_until[lease.token] = time.monotonic() + self.seconds * 0.8

    def valid(self, lease: Lease) -> bool:
        """Whether ``lease`` is surely still ours (renewed recently enough, never lost)."""
        if lease.token in self._lost:
            return False
        return time.monotonic() < self._valid_until.get(lease.token, 0.0)

    def check(self, lease: Lease) -> None:
        """Raise ``LeaseLost`` unless :meth:`valid`."""
        if not self.valid(lease):
            raise LeaseLost(f"user {lease.user}: the lease ran out or was taken over")

    def release(self, lease: Lease, *, recheck: bool = False) -> None:
        """Stop renewing ``lease`` and release it with the next batch; ``recheck``: hand
        the user to ``on_work_left`` if work is pending once it is released."""
        if self._held.get(lease.user) == lease:
            del self._held[lease.user]
        self._valid_until.pop(lease.token, None)
        self._lost.discard(lease.token)
        self._releasing.append((lease, recheck))
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(0)  # let every worker finishing in this loop pass join the batch
        self._flushing = None
        await self.flush()

    async def flush(self) -> None:
        """Release every lease waiting for the batch (after any release under way)."""
        async with self._flush_lock:
            batch, self._releasing = self._releasing, []
            if not batch:
                return
            try:
                left = await self.store.release([lease for lease, _ in batch])
            except Exception as exc:  # the leases then run out on their own
                log.warning("lease_release_failed", users=len(batch), error=str(exc))
                return
            for user in dict.fromkeys(lease.user for lease, recheck in batch if recheck):
                if user in left:
                    self.on_work_left(user)

    async def keep(self) -> None:
        """Renew every held lease, a third of the lease time apart, until cancelled."""
        while True:
            await asyncio.sleep(self.seconds / 3)
            leases = list(self._held.values())
            if not leases:
                continue
            started = time.monotonic()
            try:
                held = await self.store.renew(leases, self.clock() + self.seconds)
            except StoreError as exc:
                log.warning("lease_renewal_failed", users=len(leases), error=str(exc))
                continue
            for lease in leases:
                if lease.user in held:
                    if lease.token in self._valid_until:
                        self._valid_until[lease.token] = started + self.seconds * 0.8
                else:
                    self._lost.add(lease.token)
                    log.warning("lease_lost", wa_id=lease.user)
