"""Draining a user's outbox through the window decision and the Cloud API, in ``seq`` order.

The dispatcher calls the sender while it holds the user's lease, so one user's replies leave
one at a time and in order, whichever process queued them. Every outcome is written back to
the entry: ``sent`` with the wamid and whether it went as a session or a template message
(and why), ``skipped`` with the reason nothing was sent, ``failed`` with Meta's code, or
still ``pending`` with the time of the next attempt.

At-least-once edge: if the process dies after the Cloud API accepted a message but before
its wamid was written, the entry is still pending and is sent again after the restart; the
user may then see that reply twice. Everything else is sent exactly once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import structlog

from bot.errors import (
    CloudAPIError,
    RateLimited,
    SendingHalted,
    TransientError,
    Undeliverable,
    VersionConflict,
    WindowClosed,
)
from bot.metrics import Metrics
from bot.models import JSON, OutboxEntry, StatusUpdate, UserRecord
from bot.store.base import Store
from bot.templates import TemplateRegistry
from bot.window import Decision, WindowPolicy, decide, decide_fallback

log = structlog.get_logger("windowbot.sender")

_RANK = {"pending": 0, "sent": 1, "delivered": 2, "read": 3}
_MAX_ATTEMPTS = 12
_HALT_PAUSE = 60.0


class Transport(Protocol):
    """Something that delivers a message to a user and returns its wamid."""

    async def send(self, to: str, message: JSON) -> str:
        """Send ``message`` (a Cloud API body without ``to``) to ``to``."""


class Sender:
    """The :class:`~bot.dispatcher.UserDrainer` that sends replies.

    Args:
        store: where the outbox lives.
        transport: the Cloud API client, or a stand-in (sandbox, ``bot chat``).
        registry: the templates fallbacks may use (``None``: no templates declared).
        policy: window margin and language choice.
        metrics: counters to update.
        on_decision: called with each entry and its decision (``bot chat`` shows them).
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
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.transport = transport
        self.registry = registry
        self.policy = policy
        self.metrics = metrics or Metrics()
        self.on_decision = on_decision
        self._jitter = jitter
        self._halted_until = 0.0  # 190/131048: no sends before this time, for every user
        self._unreachable: dict[str, bool] = {}  # users a send just found undeliverable

    async def apply_statuses(self, record: UserRecord, statuses: Sequence[StatusUpdate]) -> None:
        """Record delivery progress; a 131047 ``failed`` status queues the fallback once."""
        for status in statuses:
            entry = await self.store.outbox_by_wamid(status.id)
            bound = log.bind(wa_id=record.key, wamid=status.id, status=status.status)
            if entry is None:
                bound.info("status_unmatched")
                continue
            if status.status == "failed":
                code = status.errors[0].code if status.errors else 0
                detail = status.errors[0].details or status.errors[0].title if status.errors else ""
                if code == 131047 and self._can_fall_back(entry):
                    bound.info("window_closed_fallback_queued", code=code)
                    entry = replace(
                        entry,
                        status="pending",
                        fallback_sent=True,
                        next_attempt_at=0.0,
                        error_code=code,
                        reason=f"session message failed with {code}: {detail}",
                    )
                else:
                    bound.warning("reply_failed", code=code, detail=detail)
                    entry = replace(entry, status="failed", error_code=code, reason=detail)
                await self.store.save_outbox(entry)
            elif _RANK.get(status.status, 0) > _RANK.get(entry.status, -1):
                await self.store.save_outbox(replace(entry, status=status.status))

    async def drain(
        self, record: UserRecord, now: float, fresh: Sequence[OutboxEntry] | None = None
    ) -> float | None:
        """Send the user's pending entries in order; return when to retry if one must wait.

        ``fresh``: entries the caller knows are all that is pending (no need to read them).
        """
        if self._halted_until:
            if now < self._halted_until:
                return self._halted_until  # the token was refused: keep everything queued
            self._halted_until = 0.0
            resume = getattr(self.transport, "resume", None)
            if resume is not None:
                log.warning("sending_resumed", after="pause; trying the token again")
                resume()
        next_due: float | None = None
        entries = fresh if fresh is not None else await self.store.pending_outbox(record.key, 100)
        for entry in entries:
            if entry.next_attempt_at > now:
                if entry.outgoing.send_at and entry.attempts == 0:
                    # a reminder that is not due yet: it does not hold up later replies
                    next_due = min(next_due or entry.next_attempt_at, entry.next_attempt_at)
                    continue
                return entry.next_attempt_at  # a retry: later replies wait for it (order)
            retry_at = await self._send(record, entry, now)
            if retry_at is not None:
                return retry_at
            if self._unreachable.pop(record.key, False):
                record = await self._mark_undeliverable(record, now)
        return next_due

    async def _mark_undeliverable(self, record: UserRecord, now: float) -> UserRecord:
        """Remember a 131026 on the user: nothing more is sent until they write again."""
        marked = replace(record, undeliverable=True)
        try:
            return (await self.store.commit_turn(None, marked, [], now)).record
        except VersionConflict:
            return marked  # someone wrote the user meanwhile; the decision below still holds

    def _can_fall_back(self, entry: OutboxEntry) -> bool:
        return entry.outgoing.fallback is not None and not entry.fallback_sent

    def _decide(self, record: UserRecord, entry: OutboxEntry, now: float) -> Decision:
        if entry.fallback_sent:
            return decide_fallback(
                record, entry.outgoing, now, registry=self.registry, policy=self.policy
            )
        return decide(record, entry.outgoing, now, registry=self.registry, policy=self.policy)

    async def _send(self, record: UserRecord, entry: OutboxEntry, now: float) -> float | None:
        bound = log.bind(wa_id=record.key, reply=entry.id, note=entry.outgoing.note)
        decision = self._decide(record, entry, now)
        if self.on_decision is not None:
            self.on_decision(entry, decision)
        if decision.kind == "skip" or decision.message is None:
            bound.warning("reply_not_sent", reason=decision.reason)
            self.metrics.replies_not_sent += 1
            await self.store.save_outbox(replace(entry, status="skipped", reason=decision.reason))
            return None
        try:
            wamid = await self.transport.send(record.wa_id or record.key, decision.message)
        except WindowClosed as exc:
            if decision.kind == "session" and self._can_fall_back(entry):
                bound.info("window_closed_fallback", code=exc.code)
                fallback = replace(
                    entry,
                    fallback_sent=True,
                    error_code=exc.code,
                    reason=f"session message refused with {exc.code}",
                )
                await self.store.save_outbox(fallback)
                return await self._send(record, fallback, now)
            await self._fail(entry, exc, bound)
            return None
        except (TransientError, RateLimited) as exc:
            attempts = entry.attempts + 1
            if attempts >= _MAX_ATTEMPTS:
                await self._fail(entry, exc, bound)
                return None
            delay = min(600.0, 2.0**attempts) * (0.5 + self._jitter())
            bound.warning("send_deferred", error=str(exc), attempts=attempts, delay=delay)
            await self.store.save_outbox(
                replace(
                    entry,
                    attempts=attempts,
                    next_attempt_at=now + delay,
                    reason=str(exc),
                    error_code=exc.code,
                )
            )
            return now + delay
        except SendingHalted as exc:
            self._halted_until = now + _HALT_PAUSE
            bound.error("sending_halted", code=exc.code, error=str(exc), retry_in=_HALT_PAUSE)
            await self.store.save_outbox(
                replace(
                    entry, next_attempt_at=now + _HALT_PAUSE, reason=str(exc), error_code=exc.code
                )
            )
            return now + _HALT_PAUSE
        except CloudAPIError as exc:
            await self._fail(entry, exc, bound)
            return None
        self.metrics.replies_sent += 1
        if decision.kind == "template":
            self.metrics.replies_as_template += 1
        bound.info(
            "reply_sent",
            sent_as=decision.kind,
            reason=decision.reason,
            wamid=wamid,
            template=decision.template or None,
        )
        await self.store.save_outbox(
            replace(
                entry,
                status="sent",
                wamid=wamid,
                sent_as=decision.kind,
                reason=decision.reason
                if not entry.reason
                else f"{entry.reason}; {decision.reason}",
                attempts=entry.attempts + 1,
            )
        )
        return None

    async def _fail(
        self, entry: OutboxEntry, exc: CloudAPIError, bound: structlog.typing.FilteringBoundLogger
    ) -> None:
        self.metrics.send_failures += 1
        if isinstance(exc, Undeliverable):
            self._unreachable[entry.user] = True
        bound.warning(
            "reply_failed",
            code=exc.code,
            error=str(exc),
            undeliverable=isinstance(exc, Undeliverable),
        )
        await self.store.save_outbox(
            replace(
                entry,
                status="failed",
                error_code=exc.code,
                reason=str(exc),
                attempts=entry.attempts + 1,
            )
        )
        return None


class LogTransport:
    """Sandbox mode's transport: each reply is logged (``reply_logged``) instead of sent."""

    def __init__(self) -> None:
        self._count = 0

    async def send(self, to: str, message: JSON) -> str:
        """Log ``message`` and return a made-up wamid."""
        self._count += 1
        log.info("reply_logged", to=to, type=message.get("type"), message=message)
        return f"wamid.sandbox.{self._count}"
