"""The SQLite store's reminder jobs, shared send slots and messaging-limit reach."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from bot.models import (
    Job,
    OutboxEntry,
    Outgoing,
)
from bot.store._sqlite_core import (
    SQLiteCore,
    _append,
)
from bot.store.base import (
    OUTCOMES,
    REACH_SECONDS,
    Reach,
    dumps,
    job_entry_id,
    job_from_json,
    job_to_json,
    outbox_from_json,
    resolve_job,
)


class SQLiteJobs(SQLiteCore):
    """Jobs as rows of ``jobs``; see :class:`~bot.store.base.JobStore`."""

    async def schedule_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        rows = [_job_row(job) for job in jobs]

        def op(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT OR REPLACE INTO jobs (id, uid, user, key, state, send_at, wake_at, "
                "created_at, claim_token, claim_until, entry_id, data) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

        await self._call(op)
        return list(jobs)

    async def cancel_jobs(
        self, now: float, *, key: str = "", prefix: str = "", user: str = ""
    ) -> int:
        where, args = _job_filter(user=user, key=key, prefix=prefix, state="scheduled")

        def op(c: sqlite3.Connection) -> int:
            return int(
                c.execute(
                    "UPDATE jobs SET state = 'cancelled', claim_token = '', data = json_set("
                    "data, '$.state', 'cancelled', '$.reason', 'cancelled', '$.updated_at', ?, "
                    f"'$.claim_token', '') WHERE {where}",
                    (now, *args),
                ).rowcount
            )

        return await self._call(op)

    async def find_jobs(
        self,
        *,
        user: str = "",
        key: str = "",
        prefix: str = "",
        state: str = "",
        limit: int = 100,
    ) -> list[Job]:
        outcome = state in OUTCOMES  # stored as queued until its entry says otherwise
        where, args = _job_filter(
            user=user, key=key, prefix=prefix, state="" if outcome else state, table="j."
        )
        if outcome:
            where += " AND j.state IN ('queued', ?)"
            args.append(state)

        def op(c: sqlite3.Connection) -> list[tuple[str, str | None]]:
            rows = c.execute(
                "SELECT * FROM (SELECT j.data, o.data, j.send_at, j.rowid FROM jobs j "
                "LEFT JOIN outbox o ON o.id = j.entry_id AND j.entry_id != '' "
                f"WHERE {where} ORDER BY j.send_at DESC, "
                "j.rowid DESC LIMIT ?) ORDER BY 3, 4",
                (*args, -1 if outcome else limit),
            ).fetchall()
            return [(r[0], r[1]) for r in rows]

        found = [
            resolve_job(
                job_from_json(json.loads(job)),
                None if entry is None else outbox_from_json(json.loads(entry)),
            )
            for job, entry in await self._call(op)
        ]
        if outcome:
            found = [j for j in found if j.state == state][-limit:]
        return found

    async def claim_jobs(
        self, owner: str, now: float, until: float, limit: int, *, user: str = ""
    ) -> list[Job]:
        token = f"{owner}:{uuid.uuid4().hex[:12]}"
        only = "AND user = ? " if user else ""

        def op(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "UPDATE jobs SET claim_token = ?, claim_until = ?, data = json_set(data, "
                "'$.claim_token', ?, '$.claim_until', ?) WHERE id IN (SELECT id FROM jobs "
                f"WHERE state = 'scheduled' AND wake_at <= ? AND claim_until < ? {only}"
                "ORDER BY send_at, created_at LIMIT ?) RETURNING data",
                (token, until, token, until, now, now, *([user] if user else []), limit),
            ).fetchall()
            return [r[0] for r in rows]

        jobs = [job_from_json(json.loads(d)) for d in await self._call(op)]
        return sorted(jobs, key=lambda j: (j.send_at, j.created_at))

    async def hand_over(self, job: Job, outgoing: Outgoing, now: float) -> OutboxEntry | None:
        entry_id = job_entry_id(job)

        def op(c: sqlite3.Connection) -> OutboxEntry | None:
            if not _job_held(c, job):
                return None
            appended = _append(c, job.user, [outgoing], now, entry_id)
            c.execute(
                "UPDATE jobs SET state = 'queued', claim_token = '', claim_until = 0, "
                "entry_id = ?, data = json_set(data, '$.state', 'queued', '$.entry_id', ?, "
                "'$.claim_token', '', '$.claim_until', 0, '$.updated_at', ?, '$.reason', ?) "
                "WHERE id = ?",
                (entry_id, entry_id, now, "queued in the user's outbox", job.id),
            )
            return appended[0] if appended else None

        return await self._call(op)

    async def settle_job(
        self, job: Job, now: float, *, state: str, reason: str, wake_at: float = 0.0
    ) -> bool:
        wake = wake_at or job.wake_at

        def op(c: sqlite3.Connection) -> bool:
            if not _job_held(c, job):
                return False
            c.execute(
                "UPDATE jobs SET state = ?, wake_at = ?, claim_token = '', claim_until = 0, "
                "data = json_set(data, '$.state', ?, '$.wake_at', ?, '$.reason', ?, "
                "'$.updated_at', ?, '$.claim_token', '', '$.claim_until', 0) WHERE id = ?",
                (state, wake, state, wake, reason, now, job.id),
            )
            return True

        return await self._call(op)

    async def reserve_reach(self, users: Sequence[str], now: float, limit: int) -> Reach:
        since = now - REACH_SECONDS

        def op(c: sqlite3.Connection) -> Reach:
            count = c.execute("SELECT COUNT(*) FROM reach WHERE at > ?", (since,)).fetchone()[0]
            allowed = set()
            for user in users:
                row = c.execute("SELECT at FROM reach WHERE user = ?", (user,)).fetchone()
                if row is not None and row[0] > since:
                    allowed.add(user)
                elif count < limit:
                    c.execute("INSERT OR REPLACE INTO reach (user, at) VALUES (?, ?)", (user, now))
                    allowed.add(user)
                    count += 1
            room_at = 0.0
            if count >= limit:
                oldest = c.execute("SELECT MIN(at) FROM reach WHERE at > ?", (since,)).fetchone()
                room_at = float(oldest[0] or now) + REACH_SECONDS
            return Reach(frozenset(allowed), max(0, limit - count), room_at)

        return await self._call(op)

    async def reserve_sends(self, count: int, interval: float, now: float) -> float:
        def op(c: sqlite3.Connection) -> float:
            row = c.execute("SELECT next FROM send_slots WHERE name = 'sends'").fetchone()
            start = max(now, row[0] if row else 0.0)
            c.execute(
                "INSERT OR REPLACE INTO send_slots (name, next) VALUES ('sends', ?)",
                (start + count * interval,),
            )
            return start

        return await self._call(op)

    async def due_jobs(self, now: float) -> int:
        def op(c: sqlite3.Connection) -> int:
            return int(
                c.execute(
                    "SELECT COUNT(*) FROM jobs WHERE state = 'scheduled' AND send_at <= ?", (now,)
                ).fetchone()[0]
            )

        return await self._call(op)


def _job_row(job: Job) -> tuple[Any, ...]:
    return (
        job.id,
        job.uid,
        job.user,
        job.key,
        job.state,
        job.send_at,
        job.wake_at,
        job.created_at,
        job.claim_token,
        job.claim_until,
        job.entry_id,
        dumps(job_to_json(job)),
    )


def _job_filter(
    *, user: str, key: str, prefix: str, state: str, table: str = ""
) -> tuple[str, list[Any]]:
    """A WHERE clause (and its arguments) matching every filter given."""
    clauses: list[str] = ["1 = 1"]
    args: list[Any] = []
    for column, value in (("user", user), ("key", key), ("state", state)):
        if value:
            clauses.append(f"{table}{column} = ?")
            args.append(value)
    if prefix:
        clauses.append(f"substr({table}key, 1, ?) = ?")
        args += [len(prefix), prefix]
    return " AND ".join(clauses), args


def _job_held(c: sqlite3.Connection, job: Job) -> bool:
    """Whether ``job`` (this scheduling of it) is still scheduled under its claim token."""
    row = c.execute(
        "SELECT 1 FROM jobs WHERE id = ? AND uid = ? AND state = 'scheduled' "
        "AND claim_token = ? AND claim_token != ''",
        (job.id, job.uid, job.claim_token),
    ).fetchone()
    return row is not None


def _purge_jobs(c: sqlite3.Connection, before: float, limit: int) -> int:
    """Delete up to ``limit`` jobs due before ``before`` whose story is over.

    Over: cancelled, expired, skipped or failed before a send, or handed to the outbox whose
    entry is settled (or already purged). A job still scheduled, or queued behind a pending
    entry, stays whatever its age.
    """
    return c.execute(
        "DELETE FROM jobs WHERE rowid IN (SELECT j.rowid FROM jobs j "
        "LEFT JOIN outbox o ON o.id = j.entry_id AND j.entry_id != '' "
        "WHERE j.state != 'scheduled' AND j.send_at < ? "
        "AND (j.state != 'queued' OR o.status IS NULL OR o.status != 'pending') LIMIT ?)",
        (before, limit),
    ).rowcount
