"""Reminder jobs: one-shot, keyed messages a business sends a user later, safe from any
number of processes.

A **job** (:class:`~bot.models.Job`) is a record in the store: the user, what to send (a
session message and/or its template fallback, the :class:`~bot.models.Outgoing` flows use),
when, an optional key (one per event: scheduling it again replaces the job), an expiry, a
resume point and quiet hours. Flows (``remind:``), hooks (``ctx.schedule(..., key=)``),
Python (:class:`Scheduler`, ``Outbound.schedule``) and the CLI (``bot remind``) all schedule
through :func:`build_job` and the store.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import structlog

from bot._when import (
    iso,
    next_allowed,
    parse_duration,
    parse_quiet,
    parse_time,
    user_zone,
)
from bot.config import Config
from bot.errors import ScheduleError, StoreError
from bot.metrics import Metrics
from bot.models import InboundMessage, Job, Outgoing, TemplateCall, UserRecord
from bot.store.base import JobStore, Reach
from bot.templates import TemplateRegistry
from bot.window import WindowPolicy, decide

log = structlog.get_logger("windowbot.jobs")

#: Button payloads and ids of a job with a resume point: ``wbr1:<flow>.<state>:<payload>``.
RESUME_PREFIX = "wbr1:"
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
TIERS = (0, 250, 2000, 10_000, 100_000)  # 0: unlimited


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


# --- building jobs ----------------------------------------------------------------------------


def as_outgoing(what: Outgoing | TemplateCall | str, note: str = "") -> Outgoing:
    """A job's message: text, a template (business-initiated) or an :class:`Outgoing`."""
    if isinstance(what, str):
        return Outgoing({"type": "text", "text": {"body": what, "preview_url": False}}, note=note)
    if isinstance(what, TemplateCall):
        return Outgoing(None, fallback=what, note=note)
    return replace(what, send_at=0.0, note=what.note or note)


def build_job(
    user: str,
    what: Outgoing | TemplateCall | str,
    *,
    at: float,
    now: float,
    key: str = "",
    expires_after: float | str = 0.0,
    resume: str = "",
    quiet_hours: str = "",
    note: str = "",
    job_id: str = "",
) -> Job:
    """A new scheduled job; raises :class:`~bot._when.ScheduleError` for a bad request.

    ``expires_after`` counts from ``at``. ``resume`` (``flow.state``) is written into the
    message's quick-reply payloads and reply-button ids, so the user's tap lands there.
    """
    if not user:
        raise ScheduleError("a job needs a user (wa_id or business-scoped id)")
    if "|" in key:
        raise ScheduleError(f"key {key!r}: '|' is reserved; use ':' to build keys")
    flow, dot, state = resume.partition(".")
    if resume and not (dot and flow and state):
        raise ScheduleError(f"resume {resume!r} must name a state as flow.state")
    parse_quiet(quiet_hours)  # refuses a bad value now, not at dispatch
    expiry = parse_duration(expires_after) if expires_after else 0.0
    outgoing = with_resume(as_outgoing(what, note or "reminder"), resume)
    if outgoing.message is None and outgoing.fallback is None:
        raise ScheduleError("a job needs a message or a template")
    return Job(
        id=job_id or (f"{user}|{key}" if key else f"{user}|~{uuid.uuid4().hex}"),
        uid=uuid.uuid4().hex,
        user=user,
        outgoing=outgoing,
        send_at=float(at),
        key=key,
        expires_at=float(at) + expiry if expiry else 0.0,
        resume=resume,
        quiet_hours=quiet_hours,
        created_at=now,
        updated_at=now,
        wake_at=float(at),
        reason="scheduled",
    )


def with_resume(outgoing: Outgoing, resume: str) -> Outgoing:
    """``outgoing`` with its buttons marked to resume at ``resume`` (``flow.state``)."""
    if not resume:
        return outgoing
    mark = f"{RESUME_PREFIX}{resume}:"
    fallback = outgoing.fallback
    if fallback is not None:
        fallback = replace(fallback, buttons=tuple(mark + b for b in fallback.buttons))
    message = outgoing.message
    inter = (message or {}).get("interactive") or {}
    if message is not None and inter.get("type") == "button":
        buttons = [
            {**b, "reply": {**b["reply"], "id": mark + b["reply"]["id"]}}
            for b in inter["action"]["buttons"]
        ]
        message = {**message, "interactive": {**inter, "action": {"buttons": buttons}}}
    return replace(outgoing, message=message, fallback=fallback)


def resume_point(message: InboundMessage) -> tuple[str, str, InboundMessage] | None:
    """For a tap on a job's button: (flow, state, the message with its own payload back)."""
    if message.button is not None and message.button.payload.startswith(RESUME_PREFIX):
        target, payload = _split_resume(message.button.payload)
        unmarked = replace(message, button=replace(message.button, payload=payload))
    elif message.interactive is not None and message.interactive.id.startswith(RESUME_PREFIX):
        target, payload = _split_resume(message.interactive.id)
        unmarked = replace(message, interactive=replace(message.interactive, id=payload))
    else:
        return None
    flow, _, state = target.partition(".")
    return flow, state, unmarked


def _split_resume(value: str) -> tuple[str, str]:
    target, _, payload = value[len(RESUME_PREFIX) :].partition(":")
    return target, payload


# --- the scheduling API -----------------------------------------------------------------------


class Scheduler:
    """Schedule, cancel and list jobs on a store (``Outbound`` and the CLI use this).

    Args:
        store: where jobs live.
        registry: the templates; a template call it would never send is refused at once.
        clock: ``time.time`` unless a test moves time.
    """

    def __init__(
        self,
        store: JobStore,
        registry: TemplateRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.registry, self.clock = store, registry, clock

    async def schedule(
        self,
        user: str,
        what: Outgoing | TemplateCall | str,
        *,
        at: float | str,
        key: str = "",
        expires_after: float | str = 0.0,
        resume: str = "",
        quiet_hours: str = "",
        zone: ZoneInfo | None = None,
    ) -> Job:
        """Schedule one job (the same key again replaces it); returns it as stored."""
        now = self.clock()
        when = parse_time(at, now, zone)
        job = build_job(
            user,
            what,
            at=when,
            now=now,
            key=key,
            expires_after=expires_after,
            resume=resume,
            quiet_hours=quiet_hours,
        )
        self.check(job.outgoing)
        [stored] = await self.store.schedule_jobs([job])
        log.info("job_scheduled", wa_id=user, key=key or None, send_at=iso(when), job=job.id)
        return stored

    def check(self, outgoing: Outgoing) -> None:
        """Refuse a template the registry does not declare, or a call that does not fit it."""
        call = outgoing.fallback
        if call is None:
            return
        if self.registry is None:
            raise ScheduleError(f"template {call.name}: no valid templates.yaml is loaded")
        params: Any = call.parameters
        problems = [
            p
            for p in self.registry.check_call(call.name, call.language or "user", params)
            if not p.startswith("warning")
        ]
        if problems:
            raise ScheduleError(f"template {call.name}: " + "; ".join(problems))

    async def cancel(self, key: str, *, user: str = "", prefix: bool = False) -> int:
        """Cancel the scheduled jobs with ``key`` (or keys starting with it); how many."""
        now = self.clock()
        if prefix:
            return await self.store.cancel_jobs(now, prefix=key, user=user)
        return await self.store.cancel_jobs(now, key=key, user=user)

    async def jobs(
        self, user: str = "", *, key: str = "", state: str = "", limit: int = 100
    ) -> list[Job]:
        """Jobs, upcoming and recent, with their outcome and reason."""
        return await self.store.find_jobs(user=user, key=key, state=state, limit=limit)


class ReminderLike(Protocol):
    """What a turn's reminder carries (:class:`~bot.engine.hooks.Reminder`)."""

    @property
    def at(self) -> float: ...

    @property
    def outgoing(self) -> Outgoing | None: ...

    @property
    def template(self) -> TemplateCall | None: ...

    @property
    def note(self) -> str: ...


async def schedule_turn(
    store: JobStore, record: UserRecord, message: InboundMessage, turn: Any, now: float
) -> None:
    """Store the jobs a turn asked for, and cancel the keys it cancelled.

    Called before the turn is committed: a job without a key is named after the message
    and its place in the turn, so a turn tried again replaces its own jobs, never adds more.
    """
    user = record.key
    for key in getattr(turn, "cancels", ()):
        await store.cancel_jobs(now, key=key, user=user)
    jobs = []
    for index, reminder in enumerate(getattr(turn, "reminders", ())):
        what: Outgoing | TemplateCall | None = reminder.outgoing or reminder.template
        if what is None:
            continue
        key = getattr(reminder, "key", "")
        jobs.append(
            build_job(
                user,
                what,
                at=reminder.at,
                now=now,
                key=key,
                expires_after=getattr(reminder, "expires_after", 0.0),
                resume=getattr(reminder, "resume", ""),
                quiet_hours=getattr(reminder, "quiet_hours", ""),
                note=reminder.note,
                job_id="" if key else f"{user}|~{message.id}:{index}",
            )
        )
    if jobs:
        await store.schedule_jobs(jobs)
        for job in jobs:
            log.info("job_scheduled", key=job.key or None, send_at=iso(job.send_at), job=job.id)


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

    async def run_once(self) -> int:
        """Claim one batch of due jobs and hand over or settle each; how many were claimed."""
        now = self._clock()
        self.metrics.jobs_due = await self.store.due_jobs(now)
        until = now + self.policy.lease_seconds
        jobs = await self.store.claim_jobs(self.owner, now, until, self.policy.batch)
        if not jobs:
            return 0
        self.metrics.jobs_claimed += len(jobs)
        records = await asyncio.gather(*(self.store.get_user(j.user) for j in jobs))
        plans = [self._plan(job, record, now) for job, record in zip(jobs, records, strict=True)]
        plans = await self._within_tier(plans, now)
        await asyncio.gather(*(self._carry_out(plan, now) for plan in plans))
        return len(jobs)

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
        return _Plan(job, outgoing=job.outgoing, business=decision.kind == "template")

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


__all__ = [
    "JobDispatcher",
    "JobPolicy",
    "Scheduler",
    "as_outgoing",
    "build_job",
    "job_policy",
    "resume_point",
    "schedule_turn",
    "with_resume",
]
