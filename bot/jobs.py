"""Reminder jobs: one-shot, keyed messages a business sends a user later, safe from any
number of processes.

A **job** (:class:`~bot.models.Job`) is a record in the store: the user, what to send (a
session message and/or its template fallback, the :class:`~bot.models.Outgoing` flows use),
when, an optional key (one per event: scheduling it again replaces the job), an expiry, a
resume point and quiet hours. Flows (``remind:``), hooks (``ctx.schedule(..., key=)``),
Python (``Outbound.schedule``) and the CLI (``bot remind``) all schedule through
:mod:`bot.scheduling` and the store; this module dispatches them.

The :class:`JobDispatcher` (in ``bot run`` and ``bot worker``) claims due jobs with a lease
(each job by one process; a crashed claimer's jobs are taken over once its lease ran out),
then for each one decides, as the reply path would at that moment: expired, the user opted
out, quiet hours in the user's time zone (it waits), the window decision (a session message
while the window is open, else its template — not APPROVED or MARKETING: skipped), and for a
business-initiated send the messaging limit tier (beyond it, it waits, oldest first). A job
that goes is **handed over**: appended to its user's outbox in the same store operation that
marks it queued, and the user's worker sends it like any reply, through the outbox, the
shared rate limit (:mod:`bot.ratelimit`), the retry policy and the lease fencing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import structlog

from bot._when import iso, next_allowed, parse_quiet, user_zone
from bot.config import Config
from bot.errors import StoreError
from bot.metrics import Metrics
from bot.models import Job, Outgoing, UserRecord
from bot.store.base import JobStore, Reach
from bot.templates import TemplateRegistry
from bot.window import WindowPolicy, decide

log = structlog.get_logger("windowbot.jobs")

#: Calling code → time zone, for users who stored none (longest prefix wins).
DEFAULT_COUNTRY_ZONES: Mapping[str, str] = {
    "1": "America/New_York",
    "44": "Europe/London",
    "52": "America/Mexico_City",
    "54": "America/Argentina/Buenos_Aires",
    "55": "America/Sao_Paulo",
    "34": "Europe/Madrid",
    "351": "Europe/Lisbon",
    "49": "Europe/Berlin",
    "33": "Europe/Paris",
    "39": "Europe/Rome",
    "91": "Asia/Kolkata",
}


@dataclass(frozen=True, slots=True)
class JobPolicy:
    """How due jobs are dispatched (built from ``[jobs]`` of the config).

    Attributes:
        lease_seconds: how long a claim lasts; a crashed claimer's jobs are taken over then.
        poll_seconds: how often the store is asked for due jobs.
        batch: the most jobs claimed at once.
        quiet_hours: ``"21:00-08:00"``: no job goes out then, in the user's local time.
        default_timezone: the zone of users with none stored and no known calling code.
        country_timezones: calling code → zone.
        messaging_limit: unique users reached by business-initiated messages per rolling
            24 h (250, 2000, 10000, 100000; 0 for unlimited).
    """

    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    batch: int = 100
    quiet_hours: str = ""
    default_timezone: str = "UTC"
    country_timezones: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_COUNTRY_ZONES)
    )
    messaging_limit: int = 0


def job_policy(config: Config) -> JobPolicy:
    """The dispatcher's settings from ``[jobs]`` (its time zones extend the built-in ones)."""
    jobs = config.jobs
    return JobPolicy(
        lease_seconds=jobs.lease_seconds,
        poll_seconds=jobs.poll_seconds,
        batch=jobs.batch,
        quiet_hours=jobs.quiet_hours,
        default_timezone=jobs.default_timezone,
        country_timezones={**DEFAULT_COUNTRY_ZONES, **jobs.country_timezones},
        messaging_limit=jobs.messaging_limit,
    )


# --- dispatching ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to do with one claimed job: hand ``outgoing`` over, or settle it."""

    job: Job
    outgoing: Outgoing | None = None
    business: bool = False  # a template outside the window: counts against the tier
    state: str = ""
    reason: str = ""
    wake_at: float = 0.0
    category: str = ""  # the skip reason for the metrics


class JobDispatcher:
    """Claims due jobs and hands them to their users' outboxes.

    Args:
        store: where jobs live.
        wake: called with a user whose outbox got a job (the per-user dispatcher's notify).
        registry: the templates (for the window decision).
        window: the window decision's settings.
        policy: leases, quiet hours, time zones, the messaging limit.
        metrics: counters to update.
        clock: ``time.time`` unless a test moves time.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        wake: Callable[[str], None],
        registry: TemplateRegistry | None,
        window: WindowPolicy,
        policy: JobPolicy | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.wake = wake
        self.registry = registry
        self.window = window
        self.policy = policy or JobPolicy()
        self.metrics = metrics or Metrics()
        self.owner = f"jobs-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()

    async def start(self) -> None:
        """Start claiming due jobs in the background."""
        self._task = asyncio.create_task(self._loop(), name="windowbot-jobs")

    async def stop(self) -> None:
        """Stop claiming (claims held run out and are taken over by others)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def poke(self) -> None:
        """Look for due jobs now rather than at the next poll."""
        self._poke.set()

    async def _loop(self) -> None:
        while True:
            claimed = 0
            try:
                claimed = await self.run_once()
            except StoreError as exc:
                log.warning("jobs_dispatch_failed", error=str(exc))
            except Exception:
                log.exception("jobs_dispatch_crashed")
            if claimed >= self.policy.batch:
                continue  # more are due
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.policy.poll_seconds)

    async def run_once(self, *, now: float | None = None, user: str = "") -> int:
        """Claim one batch of due jobs and hand over or settle each; how many were claimed.

        ``user`` and ``now``: only that user's jobs due by that time (the sandbox console
        moves one user's clock).
        """
        if now is None:
            now = self._clock()
            self.metrics.jobs_due = await self.store.due_jobs(now)
        until = now + self.policy.lease_seconds
        jobs = await self.store.claim_jobs(self.owner, now, until, self.policy.batch, user=user)
        if not jobs:
            return 0
        self.metrics.jobs_claimed += len(jobs)
        records = await asyncio.gather(*(self.store.get_user(j.user) for j in jobs))
        plans = [self._plan(job, record, now) for job, record in zip(jobs, records, strict=True)]
        plans = await self._within_tier(plans, now)
        await asyncio.gather(*(self._carry_out(plan, now) for plan in plans))
        return len(jobs)

    async def run_until(
        self,
        user: str,
        target: float,
        *,
        now: Callable[[], float],
        move_to: Callable[[float], None],
        settle: Callable[[], Awaitable[None]],
    ) -> None:
        """Move one user's clock (``bot chat``, the sandbox console) to ``target``, stopping
        at each of their jobs due meanwhile, in order, so each goes out as the window
        decision of its own time says; ``settle`` lets the user's worker send."""
        while True:
            scheduled = await self.store.find_jobs(user=user, state="scheduled")
            due = [j.wake_at for j in scheduled if now() < j.wake_at <= target]
            if not due:
                break
            move_to(min(due))
            await self.run_once(now=now(), user=user)
            await settle()
        move_to(target)
        await self.run_once(now=now(), user=user)
        await settle()

    def _plan(self, job: Job, record: UserRecord | None, now: float) -> _Plan:
        """The decision for one job at ``now`` (pure but for the registry)."""
        if job.expires_at and now > job.expires_at:
            return _Plan(
                job,
                state="expired",
                reason=f"expired: due {iso(job.send_at)}, not sent by {iso(job.expires_at)}",
            )
        record = record or _blank(job.user)
        if record.opted_out:
            reason = "not sent: user opted out of business-initiated messages"
            return _Plan(job, state="skipped", reason=reason, category="opted_out")
        zone = user_zone(record, self.policy.country_timezones, self.policy.default_timezone)
        quiet_text = job.quiet_hours or self.policy.quiet_hours
        allowed = next_allowed(now, zone, parse_quiet(quiet_text))
        if allowed > now:
            if job.expires_at and allowed > job.expires_at:
                reason = (
                    f"expired: quiet hours ({quiet_text} {zone.key}) last until"
                    f" {iso(allowed, zone)}, after its expiry {iso(job.expires_at, zone)}"
                )
                return _Plan(job, state="expired", reason=reason)
            reason = f"waiting: quiet hours ({quiet_text} {zone.key}) until {iso(allowed, zone)}"
            return _Plan(job, state="scheduled", reason=reason, wake_at=allowed)
        decision = decide(record, job.outgoing, now, registry=self.registry, policy=self.window)
        if decision.kind == "skip":
            category = _category(decision.reason)
            return _Plan(job, state="skipped", reason=decision.reason, category=category)
        # the entry keeps its due time (send_at): views show it as the reminder it was
        outgoing = replace(job.outgoing, send_at=job.send_at)
        return _Plan(job, outgoing=outgoing, business=decision.kind == "template")

    async def _within_tier(self, plans: list[_Plan], now: float) -> list[_Plan]:
        """Business-initiated sends beyond the messaging limit wait for room, oldest first."""
        limit = self.policy.messaging_limit
        business = [p.job.user for p in plans if p.business]
        if not limit or not business:
            return plans
        reach: Reach = await self.store.reserve_reach(business, now, limit)
        self.metrics.tier_headroom = reach.headroom
        out = []
        for plan in plans:
            if plan.business and plan.job.user not in reach.allowed:
                room = reach.room_at or now + self.policy.poll_seconds
                reason = (
                    f"waiting: messaging limit of {limit} users per 24 h reached;"
                    f" room from {iso(room)}"
                )
                plan = _Plan(plan.job, state="scheduled", reason=reason, wake_at=room)
            out.append(plan)
        return out

    async def _carry_out(self, plan: _Plan, now: float) -> None:
        job = plan.job
        bound = log.bind(wa_id=job.user, job=job.id, key=job.key or None)
        if plan.outgoing is None:
            held = await self.store.settle_job(
                job, now, state=plan.state, reason=plan.reason, wake_at=plan.wake_at
            )
            if not held:
                bound.warning("job_claim_lost", action="another dispatcher has it")
            elif plan.state == "scheduled":
                self.metrics.jobs_waiting += 1
                bound.info("job_waiting", reason=plan.reason)
            elif plan.state == "expired":
                self.metrics.jobs_expired += 1
                bound.info("job_expired", reason=plan.reason)
            else:
                skipped = self.metrics.jobs_skipped
                skipped[plan.category] = skipped.get(plan.category, 0) + 1
                bound.info("job_skipped", reason=plan.reason)
            return
        entry = await self.store.hand_over(job, plan.outgoing, now)
        if entry is None:
            bound.warning("job_claim_lost", action="not queued here")
            return
        self.metrics.jobs_queued += 1
        self.metrics.dispatch_lag.observe(max(0.0, now - job.send_at))
        bound.info("job_queued", entry=entry.id, lag=round(now - job.send_at, 3))
        self.wake(job.user)


def _category(reason: str) -> str:
    """A short label for a skip reason (metrics must not carry user data)."""
    for needle, label in (
        ("opted out", "opted_out"),
        ("MARKETING", "marketing"),
        ("131026", "undeliverable"),
        ("no template fallback", "window_closed"),
        ("not in the registry", "unknown_template"),
        (" is ", "template_not_approved"),
        ("no APPROVED", "template_not_approved"),
    ):
        if needle in reason:
            return label
    return "other"


def _blank(user: str) -> UserRecord:
    phone = user.isdigit()
    return UserRecord(key=user, wa_id=user if phone else "", user_id="" if phone else user)


__all__ = ["DEFAULT_COUNTRY_ZONES", "JobDispatcher", "JobPolicy", "job_policy"]
