"""Reminder jobs' helpers shared by the backends (see :mod:`bot.jobs`).

The stored form of a :class:`~bot.models.Job`, the id of the outbox entry it becomes, what
became of a queued job, and the messaging limit's :class:`Reach`. The protocol itself is
:class:`~bot.store.base.JobStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bot.models import Job, OutboxEntry
from bot.store._codec import outgoing_from_json, outgoing_to_json

#: Job states that a queued job takes from its outbox entry (see :func:`resolve_job`).
OUTCOMES = frozenset({"queued", "sent", "skipped", "failed"})
#: Rolling period of Meta's messaging limit: unique users reached per 24 hours.
REACH_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class Reach:
    """What :meth:`JobStore.reserve_reach` decided under the messaging limit.

    Attributes:
        allowed: the users that may be reached now (already reached in the last 24 h, or
            reserved now).
        headroom: how many more new users fit in the rolling 24 h after this call.
        room_at: when the oldest reach leaves the 24 h (0 when there is room).
    """

    allowed: frozenset[str]
    headroom: int
    room_at: float = 0.0


def job_entry_id(job: Job) -> str:
    """The id of the outbox entry a job becomes (one per scheduling, see ``Job.uid``)."""
    return f"{job.user}:job:{job.uid}"


def is_job_entry(entry_id: str) -> bool:
    """Whether an outbox entry is a job's (see :func:`job_entry_id`)."""
    return ":job:" in entry_id


def job_to_json(job: Job) -> dict[str, Any]:
    """A :class:`~bot.models.Job` as plain JSON data."""
    return {
        "id": job.id,
        "uid": job.uid,
        "user": job.user,
        "outgoing": outgoing_to_json(job.outgoing),
        "send_at": job.send_at,
        "key": job.key,
        "expires_at": job.expires_at,
        "resume": job.resume,
        "quiet_hours": job.quiet_hours,
        "state": job.state,
        "reason": job.reason,
        "error_code": job.error_code,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "wake_at": job.wake_at,
        "claim_token": job.claim_token,
        "claim_until": job.claim_until,
        "entry_id": job.entry_id,
    }


def job_from_json(data: Mapping[str, Any]) -> Job:
    """The inverse of :func:`job_to_json`."""
    return Job(
        id=data["id"],
        uid=data["uid"],
        user=data["user"],
        outgoing=outgoing_from_json(data["outgoing"]),
        send_at=float(data["send_at"]),
        key=data.get("key", ""),
        expires_at=float(data.get("expires_at", 0.0)),
        resume=data.get("resume", ""),
        quiet_hours=data.get("quiet_hours", ""),
        state=data.get("state", "scheduled"),
        reason=data.get("reason", ""),
        error_code=int(data.get("error_code", 0)),
        created_at=float(data.get("created_at", 0.0)),
        updated_at=float(data.get("updated_at", 0.0)),
        wake_at=float(data.get("wake_at", 0.0)),
        claim_token=data.get("claim_token", ""),
        claim_until=float(data.get("claim_until", 0.0)),
        entry_id=data.get("entry_id", ""),
    )


def resolve_job(job: Job, entry: OutboxEntry | None) -> Job:
    """A queued job as what became of its outbox entry: ``sent`` (how), ``skipped`` (why),
    ``failed`` (Meta's code), or still ``queued``."""
    if job.state != "queued" or entry is None:
        return job
    if entry.status in ("sent", "delivered", "read"):
        how = f"sent as {entry.sent_as}" + (f" ({entry.reason})" if entry.reason else "")
        return replace(job, state="sent", reason=how)
    if entry.status in ("skipped", "failed"):
        return replace(job, state=entry.status, reason=entry.reason, error_code=entry.error_code)
    return job
