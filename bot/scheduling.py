"""Building and scheduling reminder jobs: the one API behind flows' ``remind:``, hooks'
``ctx.schedule``, ``Outbound.schedule`` and ``bot remind`` (:mod:`bot.jobs` dispatches them).

A job (:class:`~bot.models.Job`) is one-shot and tied to one event: its optional key is per
user, and scheduling the key again replaces the job. Its resume point is written into the
message's quick-reply payloads and reply-button ids (``wbr1:<flow>.<state>:<payload>``), so a
tap comes back marked and :func:`resume_point` tells the engine where it lands, whichever
process receives it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from bot._when import iso, parse_duration, parse_quiet, parse_time
from bot.errors import ScheduleError
from bot.models import InboundMessage, Job, Outgoing, TemplateCall, UserRecord
from bot.store.base import JobStore
from bot.templates import TemplateRegistry

log = structlog.get_logger("windowbot.scheduling")

#: Button payloads and ids of a job with a resume point: ``wbr1:<flow>.<state>:<payload>``.
RESUME_PREFIX = "wbr1:"


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


def unmarked(payload: str) -> str:
    """A button payload or id without its resume mark (for showing it)."""
    return _split_resume(payload)[1] if payload.startswith(RESUME_PREFIX) else payload


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


__all__ = [
    "RESUME_PREFIX",
    "Scheduler",
    "as_outgoing",
    "build_job",
    "resume_point",
    "schedule_turn",
    "unmarked",
    "with_resume",
]
