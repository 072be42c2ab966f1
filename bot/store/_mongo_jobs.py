"""The MongoDB store's reminder jobs, shared send slots and messaging-limit reach."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError

from bot.models import (
    Job,
    OutboxEntry,
    Outgoing,
)
from bot.store._mongo_core import Doc, _MongoCore
from bot.store.base import (
    OUTCOMES,
    REACH_SECONDS,
    Reach,
    job_entry_id,
    job_from_json,
    job_to_json,
    outbox_from_json,
    resolve_job,
)

#: Job states with nothing more to happen (``queued`` ends with its outbox entry).
_OVER = ("cancelled", "expired", "failed", "sent", "skipped")


class _MongoJobs(_MongoCore):
    """Jobs as documents of ``jobs``; see :class:`~bot.store.base.JobStore`."""

    # --- reminder jobs ------------------------------------------------------------------
    # A job is one document (``_id`` = its id); a keyed job's id is ``user|key``, so
    # replacing it is one ``replace_one``. Hand-over is idempotent rather than atomic: the
    # outbox entry is named after the job's ``uid`` (a second insert is a duplicate, ignored),
    # then the job is marked queued under its claim token.

    if TYPE_CHECKING:  # MongoStore's (per-user work): a hand-over queues the job's entry

        async def enqueue(
            self, user: str, outgoing: Sequence[Outgoing], now: float, *, entry_id: str = ""
        ) -> list[OutboxEntry]: ...

    async def schedule_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        with self._translate("schedule_jobs"):
            await asyncio.gather(
                *(self._jobs.replace_one({"_id": j.id}, _job_doc(j), upsert=True) for j in jobs)
            )
        return list(jobs)

    async def cancel_jobs(
        self, now: float, *, key: str = "", prefix: str = "", user: str = ""
    ) -> int:
        query = _job_query(user=user, key=key, prefix=prefix, state="scheduled")
        change = {"state": "cancelled", "reason": "cancelled", "updated_at": now}
        with self._translate("cancel_jobs"):
            result = await self._jobs.update_many(query, {"$set": {**change, "claim_token": ""}})
        return int(result.modified_count)

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
        query = _job_query(user=user, key=key, prefix=prefix, state="" if outcome else state)
        if outcome:
            query["state"] = {"$in": ["queued", state]}
        with self._translate("find_jobs"):
            cursor = self._jobs.find(query).sort("send_at", DESCENDING)
            docs = await (cursor if outcome else cursor.limit(limit)).to_list(None)
            ids = [d["entry_id"] for d in docs if d.get("entry_id")]
            entries = {}
            if ids:
                found = await self._outbox.find({"_id": {"$in": ids}}).to_list(None)
                entries = {e["_id"]: outbox_from_json(e) for e in found}
        jobs = [resolve_job(job_from_json(d), entries.get(d.get("entry_id", ""))) for d in docs]
        jobs.reverse()
        if outcome:
            jobs = [j for j in jobs if j.state == state][-limit:]
        return jobs

    async def claim_jobs(
        self, owner: str, now: float, until: float, limit: int, *, user: str = ""
    ) -> list[Job]:
        token = f"{owner}:{uuid.uuid4().hex[:12]}"
        due: Doc = {"state": "scheduled", "wake_at": {"$lte": now}, "claim_until": {"$lt": now}}
        if user:
            due["user"] = user
        with self._translate("claim_jobs"):
            claimed, tried = 0, list[str]()
            for _ in range(4):  # other claimers may win some of the candidates: look again
                cursor = self._jobs.find({**due, "_id": {"$nin": tried}}, {"_id": 1})
                found = await cursor.sort("wake_at", ASCENDING).limit(limit - claimed).to_list(None)
                if not found:
                    break
                ids = [d["_id"] for d in found]
                tried += ids
                # each document is claimed by one claimer: the filter is checked per document
                result = await self._jobs.update_many(
                    {**due, "_id": {"$in": ids}},
                    {"$set": {"claim_token": token, "claim_until": until}},
                )
                claimed += result.modified_count
                if claimed >= limit:
                    break
            if not claimed:
                return []
            docs = await self._jobs.find({"claim_token": token}).to_list(None)
        return sorted((job_from_json(d) for d in docs), key=lambda j: (j.send_at, j.created_at))

    async def hand_over(self, job: Job, outgoing: Outgoing, now: float) -> OutboxEntry | None:
        entry_id = job_entry_id(job)
        held = _job_held(job)
        with self._translate("hand_over"):
            if await self._jobs.find_one(held, {"_id": 1}) is None:
                return None
            appended: list[OutboxEntry] = []
            if await self._outbox.find_one({"_id": entry_id, "user": job.user}) is None:
                appended = await self.enqueue(job.user, [outgoing], now, entry_id=entry_id)
            marked = await self._jobs.update_one(
                held,
                {
                    "$set": {
                        "state": "queued",
                        "entry_id": entry_id,
                        "claim_token": "",
                        "claim_until": 0.0,
                        "updated_at": now,
                        "reason": "queued in the user's outbox",
                    }
                },
            )
        if not marked.matched_count:
            return None  # taken over meanwhile: the new claimer's hand-over inserts nothing
        return appended[0] if appended else None

    async def settle_job(
        self, job: Job, now: float, *, state: str, reason: str, wake_at: float = 0.0
    ) -> bool:
        change = {
            "state": state,
            "reason": reason,
            "updated_at": now,
            "wake_at": wake_at or job.wake_at,
            "claim_token": "",
            "claim_until": 0.0,
        }
        with self._translate("settle_job"):
            result = await self._jobs.update_one(_job_held(job), {"$set": change})
        return bool(result.matched_count)

    async def reserve_reach(self, users: Sequence[str], now: float, limit: int) -> Reach:
        """Under a short lock document: count, then reserve (no multi-document atomicity)."""
        since = now - REACH_SECONDS
        token = uuid.uuid4().hex
        with self._translate("reserve_reach"):
            with contextlib.suppress(DuplicateKeyError):  # another process holds the lock
                await self._limits.update_one(
                    {"_id": "reach_lock", "until": {"$lt": now}},
                    {"$set": {"until": now + 10.0, "token": token}},
                    upsert=True,
                )
            got = await self._limits.find_one({"_id": "reach_lock", "token": token})
            known = await self._reach.find(
                {"_id": {"$in": list(users)}, "at": {"$gt": since}}
            ).to_list(None)
            allowed = {d["_id"] for d in known}
            if got is None:  # no lock: only users already reached may go now
                return Reach(frozenset(allowed), 0, now + 1.0)
            try:
                count = await self._reach.count_documents({"at": {"$gt": since}})
                for user in users:
                    if user not in allowed and count < limit:
                        await self._reach.update_one(
                            {"_id": user}, {"$set": {"at": now}}, upsert=True
                        )
                        allowed.add(user)
                        count += 1
                room_at = 0.0
                if count >= limit:
                    oldest = (
                        await self._reach.find({"at": {"$gt": since}})
                        .sort("at", ASCENDING)
                        .limit(1)
                        .to_list(None)
                    )
                    room_at = float(oldest[0]["at"] if oldest else now) + REACH_SECONDS
            finally:
                await self._limits.update_one(
                    {"_id": "reach_lock", "token": token}, {"$set": {"until": 0.0}}
                )
        return Reach(frozenset(allowed), max(0, limit - count), room_at)

    async def reserve_sends(self, count: int, interval: float, now: float) -> float:
        with self._translate("reserve_sends"):
            while True:  # compare and set: one writer wins each round
                doc = await self._limits.find_one({"_id": "sends"})
                if doc is None:
                    try:
                        await self._limits.insert_one(
                            {"_id": "sends", "next": now + count * interval}
                        )
                        return now
                    except DuplicateKeyError:
                        continue
                start = max(now, float(doc["next"]))
                won = await self._limits.update_one(
                    {"_id": "sends", "next": doc["next"]},
                    {"$set": {"next": start + count * interval}},
                )
                if won.matched_count:
                    return start

    async def due_jobs(self, now: float) -> int:
        with self._translate("due_jobs"):
            return int(
                await self._jobs.count_documents({"state": "scheduled", "send_at": {"$lte": now}})
            )

    async def _purge_jobs(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` jobs due before ``before`` whose story is over (see
        :meth:`~bot.store.base.Store.purge`); a job queued behind a pending entry stays."""
        over = {"state": {"$in": list(_OVER)}, "send_at": {"$lt": before}}
        deleted = await self._delete_some(self._jobs, over, limit)
        queued = {"state": "queued", "send_at": {"$lt": before}}
        jobs = await self._jobs.find(queued, {"_id": 1, "entry_id": 1}).limit(limit).to_list(None)
        if jobs:
            entries = [j["entry_id"] for j in jobs if j.get("entry_id")]
            waiting = {"_id": {"$in": entries}, "status": "pending"}
            pending = {d["_id"] for d in await self._outbox.find(waiting, {"_id": 1}).to_list(None)}
            gone = [j["_id"] for j in jobs if j.get("entry_id") not in pending]
            if gone:
                done = {**queued, "_id": {"$in": gone}}
                deleted += (await self._jobs.delete_many(done)).deleted_count
        return deleted


def _job_doc(job: Job) -> Doc:
    return {"_id": job.id, **job_to_json(job)}


def _job_query(*, user: str, key: str, prefix: str, state: str) -> Doc:
    """A filter matching every one given (a key prefix as an anchored regular expression)."""
    query: Doc = {name: value for name, value in (("user", user), ("state", state)) if value}
    if key:
        query["key"] = key
    elif prefix:
        query["key"] = {"$regex": "^" + re.escape(prefix)}
    return query


def _job_held(job: Job) -> Doc:
    """The filter of this scheduling of ``job`` still scheduled under its claim token."""
    return {"_id": job.id, "uid": job.uid, "state": "scheduled", "claim_token": job.claim_token}
