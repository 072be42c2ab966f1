"""The MongoDB store, on PyMongo's native async driver (a motor database works too).

The store is assembled from parts, one concern each: :mod:`bot.store._mongo_core`
(construction, lifecycle, indexes, error translation), :mod:`bot.store._mongo_jobs` (reminder
jobs, send slots, reach), :mod:`bot.store._mongo_ledgers` (templates' live view, pricing, the
console's views), :mod:`bot.store._mongo_outbox` (entries queued outside a turn, fenced
sends and saves, the outbox's lookups), :mod:`bot.store._mongo_leases` (claim, renew and
release, the reading of a user's work and record, the sweep's ``users_with_work``) and
:mod:`bot.store._mongo_turns` (a turn's write and its steps). This module holds the inbox and
statuses, aliases and housekeeping; what follows describes the design they share.

MongoDB only promises atomicity for one document and the store uses no multi-document
transaction, so every guarantee of the protocol rests on single-document conditional writes:

* ``users`` (``_id`` = user key): the record (``version``, the :func:`user_to_json` fields),
  ``next_seq``, the **lease** ``{owner, token, until}``, ``adopted`` (see fencing) and, between
  the steps of a turn, ``_turn``. A document a claim created before any commit has no record
  fields and no ``version``: the user's version is then 0.
* ``inbox`` (``_id`` = wamid; ``user``, ``ts``, ``arrival``, ``status``, ``data``...). There is
  no rowid: ``arrival`` is this process's receipt time made strictly increasing, so a user's
  pending messages sort by ``(ts, arrival)``: Meta's second first, then the order stored.
* ``statuses`` (``_id`` = ``"{wamid}:{status}"``; ``user`` = recipient, ``applied``).
* ``outbox`` (``_id`` = ``outbox_id(user, seq)``, the entry's fields and ``fence``).
* ``aliases`` (``_id`` = an id the user is known by, ``user`` = their canonical key). Inserted
  once, never changed: each process caches them, so resolving a user costs no round trip
  once seen; a miss costs one ``find`` for the whole batch, a new id one ``insert_many``
  (a duplicate key means another process linked it first: its alias is read and used).

**A turn** (:meth:`MongoStore.commit_turn`, and :meth:`~MongoStore.enqueue`) makes the user
document the commit point: one update filtered on ``{_id, version, lease.token}`` stores the
record and a ``_turn`` holding the new outbox documents and the inbox mark. Once acknowledged,
the turn has happened; then the outbox documents are inserted (duplicate ids ignored), the
message is marked done or failed and ``_turn`` is removed. Every reader of that user (claim,
``read_work``, ``get_user``, ``outbox_of``, the next turn) first finishes a ``_turn`` left
behind by a crash, and :meth:`~MongoStore.users_with_work` lists such users. The lease
token in the same filter fences the turn: a worker whose lease was taken over gets
``LeaseLost``, atomically.

**Leases** live in the user document. A claim is one ``find_one_and_update`` (upsert)
conditioned on no lease, the owner's own, or one that expired ``clock_skew`` seconds ago; it
returns the document as it was, so the record, a ``_turn`` to finish and the previous token
come with it, and the pending work is then read in one concurrent round.

**Fencing outbox writes.** Outbox entries are separate documents, so each carries ``fence``:
the token of the one lease that may write it. ``begin_send`` and ``save_outbox`` filter on
``{_id, user, fence: token}``. A claim that takes over a lease first re-fences every document
the previous token could write (those fenced by it, and those listed in ``adopted``) to a dead
marker, and after reading the pending entries fences them with its own token. A write that
finds a foreign fence on an entry while the lease is still its own (an entry sent under an
earlier lease, to which a ``failed`` status now applies) **adopts** it: it adds the id to the
user document's ``adopted``, conditioned on its token, then swaps the fence it saw for its own.
The next claim reads ``adopted`` in the same write that takes the lease, so an adoption under a
replaced lease either lands before that claim re-fences the entry or fails. :meth:`release`
kills the released token's fences the same way, so a released lease writes nothing either.

Every hot query names ``user`` (lease, turn, claim reads, fenced writes, status lookups), so a
cluster sharded by user routes each to one shard; only the sweep, the purge and the counts
scatter. Times are unix-second floats everywhere, never BSON dates.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from bot.errors import StoreError
from bot.models import (
    DELIVERY_RANK,
    IdentityChange,
    InboundMessage,
    StatusUpdate,
    UserRecord,
    delivery_status,
    parse_callback_data,
)
from bot.store._mongo_errors import mask_url
from bot.store._mongo_jobs import _MongoJobs
from bot.store._mongo_leases import _MongoLeases
from bot.store._mongo_ledgers import _MongoLedgers
from bot.store._mongo_outbox import _MongoOutbox
from bot.store._mongo_turns import _checked as _checked  # its old place; patch it in _mongo_turns
from bot.store._mongo_turns import _MongoTurns
from bot.store.base import (
    Added,
    Identity,
    PreTurn,
    Resolved,
    Work,
    change_identity,
    filed,
    filed_status,
    inbound_to_json,
    message_identity,
    report_conflicts,
    status_identity,
    status_to_json,
)

#: Ties between status items with the same timestamp go in the order they happen in.
_STATUS_RANK = {"sent": 0, "delivered": 1, "read": 2, "failed": 3, "deleted": 4, "warning": 5}


class MongoStore(_MongoTurns, _MongoLeases, _MongoOutbox, _MongoJobs, _MongoLedgers):
    """The :class:`~bot.store.base.Store` on a MongoDB database.

    Args:
        database: a PyMongo ``AsyncDatabase`` or a motor ``AsyncIOMotorDatabase``; the store
            uses it with its own write concern (:meth:`from_url` asks for a journaled one).
        client: the client to close in :meth:`close`; pass it only if the store owns it.
        description: where the data lives, for logs; must not contain a password.
        clock_skew: seconds by which the clocks of the processes sharing the database may
            differ; a lease is taken over only once it expired that long ago.
    """

    # --- inbox and statuses -------------------------------------------------------------

    async def add_inbound(self, messages: Sequence[InboundMessage], now: float) -> Added:
        with self._translate("add_inbound"):
            users = (await self._resolve([message_identity(m) for m in messages])).users
            docs = [
                {
                    "_id": m.id,
                    "user": user,
                    "ts": m.timestamp,
                    "arrival": self._arrival(now),
                    "status": "pending",
                    "data": inbound_to_json(filed(m, user)),
                    "received_at": now,
                }
                for m, user in zip(messages, users, strict=True)
            ]
            return Added(await self._insert_new(self._inbox, docs), users)

    async def _resolve(self, identities: Sequence[Identity]) -> Resolved:
        """The canonical key of each item's user, recording the ids not known yet.

        From the cache when every id is in it; else one ``find`` reads the missing ones and
        one ``insert_many`` records the new ones. An alias another process inserted first
        (duplicate key) is read and the batch resolved again with it.
        """
        missing = self._alias_cache.missing(identities)
        for _ in range(5):
            if missing:
                query = {"_id": {"$in": list(dict.fromkeys(missing))}}
                found = await self._aliases.find(query).to_list(None)
                self._alias_cache.learn({d["_id"]: d["user"] for d in found})
            resolved = self._alias_cache.resolve(identities)
            if not resolved.new:
                break
            new = list(resolved.new.items())
            docs = [{"_id": alias, "user": user} for alias, user in new]
            inserted = await self._insert_new(self._aliases, docs)
            self._alias_cache.learn({a: u for (a, u), ok in zip(new, inserted, strict=True) if ok})
            missing = [a for (a, _), ok in zip(new, inserted, strict=True) if not ok]
            if not missing:
                break
        else:
            raise StoreError(f"MongoDB at {self.description}: aliases kept changing; retry")
        report_conflicts(resolved)
        return resolved

    async def add_identity_changes(
        self, changes: Sequence[IdentityChange], now: float
    ) -> list[str]:
        with self._translate("add_identity_changes"):
            identities = [change_identity(c) for c in changes]
            resolved = await self._resolve(identities)
            for identity, user in zip(identities, resolved.users, strict=True):
                fields = {"user_id": identity.user_id, "wa_id": identity.wa_id}
                await self._users.update_one(  # a turn read before conflicts and re-reads
                    {"_id": user, "key": {"$exists": True}},
                    {"$set": {k: v for k, v in fields.items() if v}, "$inc": {"version": 1}},
                )
        return resolved.users

    async def add_and_claim(
        self,
        messages: Sequence[InboundMessage],
        now: float,
        *,
        owner: str,
        until: float,
        users: Sequence[str],
        limit: int = 64,
        turns: Mapping[str, PreTurn] | None = None,
    ) -> tuple[Added, list[Work]]:
        # A claim here takes several round trips of its own: the webhook's answer would wait
        # for them. The worker claims instead, after the acknowledgement (and runs the turns).
        return await self.add_inbound(messages, now), []

    def known_record(self, user: str) -> UserRecord | None:
        return None  # nothing is remembered: every turn reads the record under its claim

    def _arrival(self, now: float) -> float:
        """``now``, made strictly greater than the last arrival this process stored."""
        self._last_arrival = max(now, self._last_arrival + 1e-6)
        return self._last_arrival

    async def add_statuses(self, statuses: Sequence[StatusUpdate], now: float) -> Added:
        with self._translate("add_statuses"):
            users = (await self._resolve([status_identity(s) for s in statuses])).users
            statuses = [filed_status(s, user) for s, user in zip(statuses, users, strict=True)]
            # Applied before the item is stored: applying again (Meta redelivers) changes
            # nothing, and the item is then stored knowing whether a worker still needs it.
            applied = [await self._apply_status(s) for s in statuses]
            docs = [
                {
                    "_id": f"{s.id}:{s.status}",
                    "user": s.recipient,
                    "ts": s.timestamp,
                    "rank": _STATUS_RANK.get(s.status, len(_STATUS_RANK)),
                    "applied": done,
                    "data": status_to_json(s),
                    "received_at": now,
                }
                for s, done in zip(statuses, applied, strict=True)
            ]
            return Added(await self._insert_new(self._statuses, docs), users)

    async def _apply_status(self, status: StatusUpdate) -> bool:
        """Apply delivery progress to the entry the status names; whether it names one.

        Its wamid usually names the entry already. If not, its callback data may name an
        entry whose attempt is in flight with no wamid (the sender died or timed out before
        Meta's answer): the wamid is recorded then, so the entry is never sent again.
        """
        new, user = status.status, status.recipient
        if new not in DELIVERY_RANK:
            return False
        behind = [s for s in DELIVERY_RANK if delivery_status(s, new) != s]
        moved = await self._outbox.update_one(
            {"user": user, "wamid": status.id, "status": {"$in": behind}},
            {"$set": {"status": new}},
        )
        if moved.matched_count:
            return True
        named = parse_callback_data(status.callback_data)
        if named is not None:
            entry_id, attempt = named
            accepted = await self._outbox.update_one(
                {
                    "_id": entry_id,
                    "user": user,
                    "wamid": "",
                    "status": "pending",
                    "inflight_at": {"$gt": 0},
                    "attempts": attempt,
                },
                {
                    "$set": {
                        "wamid": status.id,
                        "status": delivery_status("sent", new),
                        "inflight_at": 0.0,
                    }
                },
            )
            if accepted.matched_count:
                return True
        known = await self._outbox.find_one({"user": user, "wamid": status.id}, {"_id": 1})
        return known is not None

    async def finish_statuses(self, user: str, keys: Sequence[tuple[str, str]]) -> None:
        ids = [f"{wamid}:{status}" for wamid, status in keys]
        if not ids:
            return
        with self._translate("finish_statuses"):
            await self._statuses.update_many(
                {"_id": {"$in": ids}, "user": user}, {"$set": {"applied": True}}
            )

    # --- housekeeping -------------------------------------------------------------------

    async def purge(self, before: float, limit: int) -> int:
        deleted = 0
        with self._translate("purge"):
            for coll, query in (
                (
                    self._inbox,
                    {"status": {"$in": ["done", "failed"]}, "finished_at": {"$lt": before}},
                ),
                (self._statuses, {"applied": True, "received_at": {"$lt": before}}),
                (self._outbox, {"status": {"$ne": "pending"}, "created_at": {"$lt": before}}),
            ):
                deleted += await self._delete_some(coll, query, limit)
            # after the outbox: a job whose entry was just purged is over too
            deleted += await self._purge_jobs(before, limit)
            deleted += await self._purge_events(before, limit)
            deleted += await self._purge_pricing(before, limit)
        return deleted

    async def inbox_counts(self) -> dict[str, int]:
        # One pass over the inbox: separate counts per status would count a message twice
        # that moved from pending to done between them.
        counts = {"pending": 0, "done": 0, "failed": 0}
        with self._translate("inbox_counts"):
            cursor: Any = self._inbox.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
            if inspect.isawaitable(cursor):  # PyMongo's aggregate is a coroutine, motor's not
                cursor = await cursor
            async for row in cursor:
                counts[str(row["_id"])] = int(row["n"])
        return counts


__all__ = ["MongoStore", "mask_url"]
