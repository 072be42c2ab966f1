"""The MongoDB store's leases: claim, renew and release, and reading a user's work and record.

A claim takes the lease in the user document and reads the pending work; a takeover and a
release kill the old token's fences first (see :mod:`bot.store.mongo` for the design).
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from bot.models import UserRecord
from bot.store._mongo_core import (
    _INBOX_ORDER,
    _NO_LEASE,
    _STATUS_ORDER,
    Doc,
    _blank_user,
    _MongoCore,
    _token,
)
from bot.store.base import (
    Lease,
    Work,
    inbound_from_json,
    outbox_from_json,
    status_from_json,
    user_from_json,
)


class _MongoLeases(_MongoCore):
    """Leases held in the user document, and the reads that finish a turn left behind first."""

    # --- leases -------------------------------------------------------------------------

    async def claim(
        self, user: str, owner: str, until: float, now: float, *, limit: int = 64
    ) -> Work | None:
        token = uuid.uuid4().hex
        free = {
            "_id": user,
            "$or": [
                {"lease.token": {"$in": ["", None]}},
                {"lease.owner": owner},
                {"lease.until": {"$lt": now - self._skew}},
            ],
        }
        taken = {"lease": {"owner": owner, "token": token, "until": float(until)}, "adopted": []}
        with self._translate("claim"):
            # No upsert: under contention an upsert that loses the race may come back as an
            # update that reports no document before (secantusdb does), and the previous
            # token would be lost. An update of an existing, free user is one round trip; a
            # miss is a held user or a new one, which the insert tells apart.
            before = await self._users.find_one_and_update(
                free, {"$set": taken}, return_document=ReturnDocument.BEFORE
            )
            if before is None:
                try:
                    await self._users.insert_one({"_id": user, **taken})
                except DuplicateKeyError:  # the user exists: another owner holds the lease
                    return None
                before = {"_id": user}
            lease = Lease(user, owner, token, float(until))
            previous = _token(before)
            if previous:  # taken over (or claimed again): that token writes nothing more
                await self._kill_fences(user, previous, before.get("adopted") or [], token)
            return await self._read_work(lease, before, limit, fence=True)

    async def read_work(self, lease: Lease, *, limit: int = 64) -> Work:
        with self._translate("read_work"):
            doc = await self._users.find_one({"_id": lease.user})
            return await self._read_work(lease, doc or {"_id": lease.user}, limit, fence=False)

    async def _read_work(self, lease: Lease, doc: Doc, limit: int, *, fence: bool) -> Work:
        """Finish a turn ``doc`` carries, then read the user's pending work.

        ``fence``: fence the pending entries read with the lease's token. Only right after
        the claim: any other owner's fences have been killed by then.
        """
        await self._finish_turn(doc)
        user = lease.user
        inbox, statuses, outbox = await asyncio.gather(
            self._inbox.find({"user": user, "status": "pending"})
            .sort(_INBOX_ORDER)
            .limit(limit)
            .to_list(None),
            self._statuses.find({"user": user, "applied": False})
            .sort(_STATUS_ORDER)
            .limit(limit)
            .to_list(None),
            self._outbox.find({"user": user, "status": "pending"})
            .sort("seq", ASCENDING)
            .limit(limit)
            .to_list(None),
        )
        stray = [d["_id"] for d in outbox if d.get("fence") != lease.token]
        if fence and stray:
            await self._outbox.update_many(
                {"_id": {"$in": stray}, "user": user, "status": "pending"},
                {"$set": {"fence": lease.token}},
            )
        return Work(
            lease=lease,
            record=_record(doc) or _blank_user(user),
            inbound=tuple(inbound_from_json(d["data"]) for d in inbox),
            statuses=tuple(status_from_json(d["data"]) for d in statuses),
            outbox=tuple(outbox_from_json(d) for d in outbox),
        )

    async def _kill_fences(self, user: str, token: str, adopted: list[str], by: str) -> None:
        """Re-fence every entry ``token`` may write (or is adopting) to a dead marker."""
        query: Doc = {"user": user, "fence": token}
        if adopted:
            query = {"user": user, "$or": [{"fence": token}, {"_id": {"$in": adopted}}]}
        await self._outbox.update_many(query, {"$set": {"fence": f"-{by}"}})

    async def renew(self, leases: Sequence[Lease], until: float) -> set[str]:
        async def one(lease: Lease) -> str | None:
            result = await self._users.update_one(
                {"_id": lease.user, "lease.token": lease.token},
                {"$set": {"lease.until": float(until)}},
            )
            return lease.user if result.matched_count else None

        with self._translate("renew"):
            held = await asyncio.gather(*(one(lease) for lease in leases))
        return {user for user in held if user is not None}

    async def release(self, leases: Sequence[Lease]) -> set[str]:
        async def one(lease: Lease) -> None:
            # Fences first: should the second step fail, the lease is still there and the
            # claim that takes it over once it expires kills the fences again.
            await self._kill_fences(lease.user, lease.token, [], lease.token)
            await self._users.update_one(
                {"_id": lease.user, "lease.token": lease.token},
                {"$set": {"lease": dict(_NO_LEASE), "adopted": []}},
            )

        users = list(dict.fromkeys(lease.user for lease in leases))
        with self._translate("release"):
            await asyncio.gather(*(one(lease) for lease in leases))
            if not users:
                return set()
            # after the release (see Store.release): work stored later is claimed where it lands
            left = await asyncio.gather(
                *(
                    _aggregate(
                        coll,
                        [
                            {"$match": {"user": {"$in": users}, **match}},
                            {"$group": {"_id": "$user"}},
                        ],
                    )
                    for coll, match in (
                        (self._inbox, {"status": "pending"}),
                        (self._statuses, {"applied": False}),
                    )
                )
            )
        return {str(row["_id"]) for rows in left for row in rows}

    async def users_with_work(self, now: float, limit: int) -> list[str]:
        if limit <= 0:
            return []
        with self._translate("users_with_work"):
            live = {"lease.until": {"$gte": now - self._skew}}
            busy = [d["_id"] for d in await self._users.find(live, {"_id": 1}).to_list(None)]
            sources: list[tuple[AsyncCollection[Doc], Doc, str]] = [
                (self._inbox, {"status": "pending"}, "ts"),
                (self._statuses, {"applied": False}, "ts"),
                (
                    self._outbox,
                    {"status": "pending", "next_attempt_at": {"$lte": now}},
                    "next_attempt_at",
                ),
            ]
            found: dict[str, None] = {}
            for coll, match, oldest in sources:
                pipeline: list[Doc] = [
                    {"$match": {**match, "user": {"$nin": busy}}},
                    {"$group": {"_id": "$user", "first": {"$min": f"${oldest}"}}},
                    {"$sort": {"first": 1, "_id": 1}},
                    {"$limit": limit},
                ]
                found.update(dict.fromkeys(d["_id"] for d in await _aggregate(coll, pipeline)))
            crashed = self._users.find(
                {"_turn.at": {"$exists": True}, "_id": {"$nin": busy}}, {"_id": 1}
            )
            found.update(dict.fromkeys(d["_id"] for d in await crashed.limit(limit).to_list(None)))
        return list(found)[:limit]

    async def get_user(self, user: str) -> UserRecord | None:
        with self._translate("get_user"):
            doc = await self._users.find_one({"_id": user})
            if doc is None:
                return None
            await self._finish_turn(doc)
        return _record(doc)


def _record(doc: Mapping[str, Any]) -> UserRecord | None:
    """The record a user document holds (``None`` before the first turn)."""
    return user_from_json(doc) if "key" in doc else None


async def _aggregate(coll: AsyncCollection[Doc], pipeline: list[Doc]) -> list[Mapping[str, Any]]:
    """Run an aggregation on PyMongo (``aggregate`` is a coroutine) or motor (it is not)."""
    cursor: Any = coll.aggregate(pipeline)
    if inspect.isawaitable(cursor):
        cursor = await cursor
    return cast("list[Mapping[str, Any]]", await cursor.to_list(None))
