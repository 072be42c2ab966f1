"""Draining a user's outbox through the window decision and the Cloud API, in ``seq`` order.

The dispatcher calls the sender while it holds the user's lease, so one user's replies leave
one at a time and in order, whichever process queued them. Every outcome is written back to
the entry at once: ``sent`` with the wamid and whether it went as a session or a template
message (and why), ``skipped`` with the reason nothing was sent, ``failed`` with Meta's code,
or still ``pending`` with the time of the next attempt.

No reply is sent twice: before a request the attempt is recorded as in flight (for a turn's
new replies, in the turn's own write), and every request carries the entry's
``biz_opaque_callback_data``, which Meta echoes in the status webhooks of that message. An
attempt whose answer was lost (a timeout, a crash) is therefore settled by its status webhook
— the store records the wamid on the way in — and is only sent again when no status arrived
within ``grace`` seconds. The outbox is the one retry queue: a send is a single short request,
and what failed is retried from here under one :class:`~bot.retry.RetryPolicy`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import structlog

from bot.dispatcher import Drained
from bot.errors import (
    CloudAPIError,
    LeaseLost,
    OutcomeUnknown,
    RateLimited,
    SendingHalted,
    TransientError,
    Undeliverable,
    VersionConflict,
    WindowClosed,
)
from bot.live_templates import LiveTemplates
from bot.metrics import Metrics
from bot.models import (
    DELIVERY_RANK,
    JSON,
    OutboxEntry,
    StatusUpdate,
    UserRecord,
    delivery_status,
    is_user_id,
    parse_callback_data,
)
from bot.ratelimit import SharedRateLimiter
from bot.retry import RetryPolicy
from bot.store.base import Lease, Store, is_job_entry
from bot.templates import TemplateRegistry
from bot.window import Decision, WindowPolicy, decide, decide_fallback

log = structlog.get_logger("windowbot.sender")

_HALT_PAUSE = 60.0


class Transport(Protocol):
    """Something that delivers a message to a user and returns its wamid."""

    async def send(self, to: str, message: JSON, *, callback: str = "") -> str:
        """Send ``message`` (a Cloud API body without ``to``) to ``to`` in one request.

        ``callback`` goes out as ``biz_opaque_callback_data``. Raises
        :class:`~bot.errors.OutcomeUnknown` when the request may have reached Meta but no
        answer came.
        """


class Sender:
    """The :class:`~bot.dispatcher.UserDrainer` that sends replies.

    Args:
        store: where the outbox lives.
        transport: the Cloud API client, or a stand-in (sandbox, ``bot chat``).
        registry: the templates fallbacks may use (``None``: no templates declared).
        policy: window margin and language choice.
        metrics: counters to update.
        on_decision: called with each entry and its decision (``bot chat`` shows them).
        retry: when a failed send is tried again, and when it is given up.
        grace: seconds an attempt whose outcome is unknown waits for a status webhook
            carrying its callback data before it is sent again.
        live: what Meta says about the templates now (:mod:`bot.live_templates`); checked
            before every template send.
    """

    def __init__(
        self,
        store: Store,
        transport: Transport,
        *,
        registry: TemplateRegistry | None,
        policy: WindowPolicy,
        metrics: Metrics | None = None,
        on_decision: Callable[[OutboxEntry, Decision], None] | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, shared safely
        grace: float = 60.0,
        jitter: Callable[[], float] = random.random,
        live: LiveTemplates | None = None,
        limiter: SharedRateLimiter | None = None,
    ) -> None:
        self.live = live
        self.store = store
        self.transport = transport
        self.registry = registry
        self.policy = policy
        self.metrics = metrics or Metrics()
        self.on_decision = on_decision
        self.retry = retry
        self.grace = grace
        self._jitter = jitter
        self.limiter = limiter  # the number's send rate, shared by every process
        self._halted_until = 0.0  # 190/131048: no sends before this time, for every user
        self._unreachable: dict[str, bool] = {}  # users a send just found undeliverable

    async def apply_statuses(
        self, lease: Lease, record: UserRecord, statuses: Sequence[StatusUpdate]
    ) -> bool:
        """Record delivery progress; a 131047 ``failed`` status queues the fallback once.

        Returns whether an entry was queued again (its fallback is to be sent).
        """
        requeued = False
        for status in statuses:
            entry = await self.store.outbox_for_status(status)
            bound = log.bind(wa_id=record.key, wamid=status.id, status=status.status)
            if entry is None:
                bound.info("status_unmatched")
                continue
            if status.status == "failed":
                code = status.errors[0].code if status.errors else 0
                detail = status.errors[0].details or status.errors[0].title if status.errors else ""
                if code == 131047 and _can_fall_back(entry):
                    bound.info("window_closed_fallback_queued", code=code)
                    entry = _again(
                        entry,
                        fallback_sent=True,
                        wamid="",
                        error_code=code,
                        reason=f"session message failed with {code}: {detail}",
                    )
                    requeued = True
                else:
                    bound.warning("reply_failed", code=code, detail=detail)
                    entry = replace(entry, status="failed", error_code=code, reason=detail)
                await self.store.save_outbox(lease, entry)
                continue
            if entry.wamid != status.id:
                if not _settles(entry, status):
                    bound.info("status_unmatched", reason="names an earlier attempt")
                    continue
                bound.info("send_settled_by_status", attempt=entry.attempts)
                entry = replace(entry, wamid=status.id, inflight_at=0.0, inflight_token="")
                entry = replace(entry, status=delivery_status("sent", status.status))
                await self.store.save_outbox(lease, entry)
                continue
            moved = delivery_status(entry.status, status.status)
            if moved != entry.status:
                await self.store.save_outbox(lease, replace(entry, status=moved))
        return requeued

    async def drain(
        self,
        lease: Lease,
        record: UserRecord,
        entries: Sequence[OutboxEntry],
        now: float,
        lease_ok: Callable[[], bool] = lambda: True,
    ) -> Drained:
        """Send the due ones of the user's pending ``entries``, in order.

        A reminder that is not due yet does not hold up later replies; an entry waiting for a
        retry or for the outcome of an attempt in flight does (order).
        """
        if self._halted_until:
            if now < self._halted_until:  # the token was refused: keep everything queued
                return Drained(record, self._halted_until, blocked=True)
            self._halted_until = 0.0
            log.warning("sending_resumed", after="pause; trying the token again")
        wake_at: float | None = None
        for entry in entries:
            if entry.next_attempt_at > now and not entry.inflight_at:
                if entry.outgoing.send_at and entry.attempts == 0:
                    wake_at = min(wake_at or entry.next_attempt_at, entry.next_attempt_at)
                    continue  # a reminder that is not due yet
                return Drained(record, entry.next_attempt_at, blocked=True)  # a retry waits
            retry_at = await self._send(lease, record, entry, now, lease_ok)
            if retry_at is not None:
                return Drained(record, retry_at, blocked=True)
            if self._unreachable.pop(record.key, False):
                record = await self._mark_undeliverable(lease, record, now)
        return Drained(record, wake_at)

    async def _mark_undeliverable(self, lease: Lease, record: UserRecord, now: float) -> UserRecord:
        """Remember a 131026 on the user: nothing more is sent until they write again."""
        marked = replace(record, undeliverable=True)
        try:
            return (await self.store.commit_turn(lease, None, marked, [], now)).record
        except VersionConflict:
            return marked  # someone wrote the user meanwhile; the decision below still holds

    def _decide(self, record: UserRecord, entry: OutboxEntry, now: float) -> Decision:
        if entry.fallback_sent:
            return decide_fallback(
                record, entry.outgoing, now, registry=self.registry, policy=self.policy
            )
        return decide(record, entry.outgoing, now, registry=self.registry, policy=self.policy)

    async def _send(
        self,
        lease: Lease,
        record: UserRecord,
        entry: OutboxEntry,
        now: float,
        lease_ok: Callable[[], bool],
    ) -> float | None:
        """Send one entry; the time to look again if it must wait, else ``None``."""
        bound = log.bind(reply=entry.id, note=entry.outgoing.note)
        if entry.inflight_at and entry.inflight_token != lease.token:
            settle_at = entry.inflight_at + self.grace
            if now < settle_at:
                bound.info("send_outcome_pending", attempt=entry.attempts, recheck_at=settle_at)
                return settle_at
            bound.warning(
                "send_outcome_unknown",
                attempt=entry.attempts,
                action=f"no status within {self.grace:g}s: sending again",
            )
        try:
            decision = self._decide(record, entry, now)
            if self.live is not None and decision.template:  # Meta's word, not the file's
                self.registry = await self.live.refresh()
                decision = self.live.note(self._decide(record, entry, now))
        except Exception as exc:  # a bug or bad data must not silence the user's later replies
            bound.exception("reply_failed", error=str(exc))
            await self._settle(lease, entry, "failed", f"internal error: {exc}", bound)
            return None
        address = record.wa_id or record.user_id or record.key
        if decision.kind == "template" and is_user_id(address) and self._authentication(decision):
            decision = replace(
                decision,
                kind="skip",
                message=None,
                reason=f"authentication template {decision.template!r} needs a phone number;"
                " this user is known only by the business-scoped id"
                f" {address} (WhatsApp sends no authentication template to a 'recipient')",
            )
        if self.on_decision is not None:
            self.on_decision(entry, decision)
        if decision.kind == "skip" or decision.message is None:
            bound.warning("reply_not_sent", reason=decision.reason)
            self.metrics.replies_not_sent += 1
            await self._settle(lease, entry, "skipped", decision.reason, bound, count=False)
            return None
        # the send slot first: waiting for it leaves no attempt in flight
        slot = await self.limiter.acquire() if self.limiter is not None else 0.0
        if not (entry.inflight_at and entry.inflight_token == lease.token):
            started = await self.store.begin_send(lease, entry, now)
            if started is None:
                return None  # a status showed it was sent meanwhile
            entry = started
        if self.limiter is not None:
            await self.limiter.still(slot)
        if not lease_ok():
            raise LeaseLost(f"user {lease.user}: lease not renewed in time; not sending")
        try:
            wamid = await self.transport.send(
                address, decision.message, callback=entry.callback_data
            )
        except OutcomeUnknown as exc:
            bound.warning("send_outcome_unknown", error=str(exc), recheck_in=self.grace)
            unknown = replace(entry, inflight_token="", reason=str(exc), error_code=exc.code)
            await self.store.save_outbox(lease, unknown)
            return entry.inflight_at + self.grace
        except WindowClosed as exc:
            if decision.kind == "session" and _can_fall_back(entry):
                bound.info("window_closed_fallback", code=exc.code)
                fallback = _again(
                    entry,
                    fallback_sent=True,
                    error_code=exc.code,
                    reason=f"session message refused with {exc.code}",
                )
                await self.store.save_outbox(lease, fallback)
                return await self._send(lease, record, fallback, now, lease_ok)
            await self._fail(lease, entry, exc, bound)
            return None
        except (TransientError, RateLimited) as exc:
            if exc.code == 130429 and self.limiter is not None:
                await self.limiter.pause()  # the number's throughput: every process backs off
            delay = self.retry.delay(entry.attempts, self._jitter())
            if delay is None:
                await self._fail(lease, entry, exc, bound)
                return None
            bound.warning("send_deferred", error=str(exc), attempts=entry.attempts, delay=delay)
            deferred = _again(
                entry, next_attempt_at=now + delay, reason=str(exc), error_code=exc.code
            )
            await self.store.save_outbox(lease, deferred)
            return now + delay
        except SendingHalted as exc:
            self._halted_until = now + _HALT_PAUSE
            bound.error("sending_halted", code=exc.code, error=str(exc), retry_in=_HALT_PAUSE)
            paused = _again(
                entry, next_attempt_at=now + _HALT_PAUSE, reason=str(exc), error_code=exc.code
            )
            await self.store.save_outbox(lease, paused)
            return now + _HALT_PAUSE
        except CloudAPIError as exc:
            await self._fail(lease, entry, exc, bound)
            return None
        self.metrics.replies_sent += 1
        if is_job_entry(entry.id):
            self.metrics.jobs_sent += 1
        if decision.kind == "template":
            self.metrics.replies_as_template += 1
        bound.info(
            "reply_sent",
            sent_as=decision.kind,
            reason=decision.reason,
            wamid=wamid,
            template=decision.template or None,
        )
        sent = replace(
            entry,
            status="sent",
            wamid=wamid,
            sent_as=decision.kind,
            reason=decision.reason if not entry.reason else f"{entry.reason}; {decision.reason}",
            inflight_at=0.0,
            inflight_token="",
        )
        await self.store.save_outbox(lease, sent)
        return None

    def _authentication(self, decision: Decision) -> bool:
        """Whether the decision sends an AUTHENTICATION template (those need a phone number)."""
        template = self.registry.get(decision.template) if self.registry else None
        return template is not None and template.category == "AUTHENTICATION"

    async def _fail(
        self,
        lease: Lease,
        entry: OutboxEntry,
        exc: CloudAPIError,
        bound: structlog.typing.FilteringBoundLogger,
    ) -> None:
        if isinstance(exc, Undeliverable):
            self._unreachable[entry.user] = True
        if is_job_entry(entry.id):
            self.metrics.jobs_failed += 1
        bound.warning(
            "reply_failed",
            code=exc.code,
            error=str(exc),
            undeliverable=isinstance(exc, Undeliverable),
        )
        await self._settle(lease, replace(entry, error_code=exc.code), "failed", str(exc), bound)

    async def _settle(
        self,
        lease: Lease,
        entry: OutboxEntry,
        status: str,
        reason: str,
        bound: structlog.typing.FilteringBoundLogger,
        *,
        count: bool = True,
    ) -> None:
        """Store a final outcome for which nothing was (or will be) sent."""
        if count:
            self.metrics.send_failures += 1
        done = replace(entry, status=status, reason=reason, inflight_at=0.0, inflight_token="")
        await self.store.save_outbox(lease, done)


def _settles(entry: OutboxEntry, status: StatusUpdate) -> bool:
    """Whether ``status`` reports the attempt of ``entry`` that is in flight (Meta took it)."""
    named = parse_callback_data(status.callback_data)
    return (
        named is not None
        and named == (entry.id, entry.attempts)
        and entry.inflight_at > 0
        and status.status in DELIVERY_RANK
    )


def _can_fall_back(entry: OutboxEntry) -> bool:
    return entry.outgoing.fallback is not None and not entry.fallback_sent


def _again(entry: OutboxEntry, **changes: Any) -> OutboxEntry:
    """``entry`` pending again, with no attempt in flight (Meta answered: not sent)."""
    return replace(entry, status="pending", inflight_at=0.0, inflight_token="", **changes)


class LogTransport:
    """Sandbox mode's transport: each reply is logged (``reply_logged``) instead of sent."""

    def __init__(self) -> None:
        self._count = 0

    async def send(self, to: str, message: JSON, *, callback: str = "") -> str:
        """Log ``message`` and return a made-up wamid."""
        self._count += 1
        log.info("reply_logged", to=to, type=message.get("type"), message=message)
        return f"wamid.sandbox.{self._count}"
