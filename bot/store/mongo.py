"""The MongoDB store, on PyMongo's native async driver (a motor database works too).

Collections: ``users`` (``_id`` = user key, the record, ``version``, ``next_seq``), ``inbox``
(``_id`` = wamid; ``user``, ``ts``, ``status``, ``data``, ``received_at``), ``statuses`` (``_id``
= ``"{wamid}:{status}"``; ``user`` = recipient, ``applied``), ``outbox`` (``_id`` =
``outbox_id(user, seq)`` plus the entry's fields) and ``leases`` (``_id`` = user; ``owner``,
``until``). Payloads are stored through the JSON helpers of :mod:`bot.store.base`, so every
backend keeps the same data. Deduplication is by ``_id`` (duplicate key errors, per item).

MongoDB only promises atomicity for one document, so :meth:`MongoStore.commit_turn` makes the
**user document the commit point** instead of using a multi-document transaction:

1. the version-checked write of the user document (``replace_one`` filtered on
   ``{_id, version: read_version}``; ``insert_one`` for a new user, where a duplicate key means
   someone else created it first) stores the new record *and* a ``_turn`` field holding the
   turn's outbox documents and the inbox message it applied. Once that write is acknowledged
   the turn has happened; a conflict raises ``VersionConflict`` before anything was written;
2. the outbox documents are inserted under deterministic ids (``outbox_id(user, seq)``;
   duplicate keys are ignored, so a document the sender already updated is never clobbered);
3. the inbox message is marked ``done``;
4. ``_turn`` is removed, conditioned on the version written in step 1.

If the process dies between 1 and 4, whoever reads that user next rolls the turn forward
(steps 2-4 are idempotent): :meth:`~MongoStore.get_user`, :meth:`~MongoStore.pending_inbound`,
:meth:`~MongoStore.pending_outbox` and the next :meth:`~MongoStore.commit_turn` all do, and
:meth:`~MongoStore.users_with_work` lists users with a ``_turn`` left behind. The user's
outbox sequence lives in the user document (``next_seq``), so it continues across turns.

Times are unix-second floats everywhere (leases included), never BSON dates: they compare the
same way in every backend and on the nx-27017 stand-in used by the tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError, WriteConcernError

from bot.errors import ConfigError, StoreError, VersionConflict
from bot.models import InboundMessage, OutboxEntry, Outgoing, StatusUpdate, UserRecord
from bot.store._mongo_errors import mask_url, translate
from bot.store.base import (
    PROGRESS,
    Committed,
    inbound_from_json,
    inbound_to_json,
    new_outbox_entries,
    outbox_from_json,
    outbox_to_json,
    status_from_json,
    status_to_json,
    user_from_json,
    user_to_json,
)

Doc = dict[str, Any]

_DUPLICATE_KEY = 11000
#: Ties between status items with the same timestamp go in the order they happen in.
_STATUS_RANK = {"sent": 0, "delivered": 1, "read": 2, "failed": 3, "deleted": 4, "warning": 5}


class MongoStore:
    """The :class:`~bot.store.base.Store` on a MongoDB database.

    Args:
        database: a PyMongo ``AsyncDatabase`` or a motor ``AsyncIOMotorDatabase``; the store
            uses it with its own write concern (:meth:`from_url` asks for a journaled one).
        client: the client to close in :meth:`close`; pass it only if the store owns it.
        description: where the data lives, for logs; must not contain a password.
    """

    def __init__(self, database: Any, *, client: Any = None, description: str = "") -> None:
        # Typed as PyMongo's database: motor's has the same collection API for what is used
        # here, except ``aggregate`` (see ``_aggregate``).
        self._db = cast("AsyncDatabase[Doc]", database)
        self._client = client
        self.description = description or f"MongoDB database {database.name!r}"
        self._users: AsyncCollection[Doc] = self._db["users"]
        self._inbox: AsyncCollection[Doc] = self._db["inbox"]
        self._statuses: AsyncCollection[Doc] = self._db["statuses"]
        self._outbox: AsyncCollection[Doc] = self._db["outbox"]
        self._leases: AsyncCollection[Doc] = self._db["leases"]

    @classmethod
    def from_url(
        cls, url: str, *, database: str | None = None, timeout_ms: int = 5000
    ) -> MongoStore:
        """A store on a new PyMongo client for ``url`` (closed again by :meth:`close`).

        The database is ``database``, else the URL's path, else ``windowbot``. Writes are
        acknowledged by a majority and journaled, and the server must answer within
        ``timeout_ms``; options given in the URL (``w``, ``journal``, ...) win over these.

        Raises:
            ConfigError: the URL cannot be parsed (the message shows it without password).
        """
        masked = mask_url(url)
        given = {key.lower() for key, _ in parse_qsl(urlsplit(url).query)}
        defaults: dict[str, Any] = {
            "w": "majority",
            "journal": True,
            "serverSelectionTimeoutMS": timeout_ms,
            "connectTimeoutMS": timeout_ms,
        }
        options = {k: v for k, v in defaults.items() if k.lower() not in given}
        try:
            client: AsyncMongoClient[Doc] = AsyncMongoClient(url, **options)
            db = client[database] if database else client.get_default_database("windowbot")
        except (PyMongoError, ValueError, TypeError) as exc:  # the URI parser raises all three
            reason = mask_url(str(exc))
            raise ConfigError(f"invalid MongoDB URL {masked}: {reason}") from None
        description = masked if database is None else f"{masked} (database {database!r})"
        return cls(db, client=client, description=description)

    @property
    def database(self) -> AsyncDatabase[Doc]:
        """The database the store keeps its collections in."""
        return self._db

    # --- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Check the server answers and create the indexes (idempotent)."""
        with self._translate("open"):
            await self._db.command("ping")
            await self._users.create_index([("_turn.at", ASCENDING)], sparse=True)
            # No ``_id`` in compound indexes: nx-27017 then fails every insert (code 8,
            # "JSON path error near '_id'"); the extra in-memory sort of one user's pending
            # messages by wamid costs nothing on MongoDB.
            await self._inbox.create_index([("user", 1), ("status", 1), ("ts", 1)])
            await self._inbox.create_index([("status", 1)])
            await self._inbox.create_index([("finished_at", 1)], sparse=True)
            await self._statuses.create_index([("user", 1), ("applied", 1), ("ts", 1)])
            await self._statuses.create_index([("applied", 1)])
            await self._outbox.create_index([("user", 1), ("status", 1), ("seq", 1)])
            await self._outbox.create_index([("status", 1), ("next_attempt_at", 1)])
            await self._outbox.create_index([("wamid", 1)])
            await self._leases.create_index([("until", 1)])

    async def close(self) -> None:
        """Close the client if the store created it; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            result = client.close()
            if inspect.isawaitable(result):  # PyMongo's close is a coroutine, motor's is not
                await result

    async def ping(self) -> None:
        with self._translate("ping"):
            await self._db.command("ping")

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn driver errors into the store's own (see :func:`_mongo_errors.translate`)."""
        with translate(self.description, what):
            yield

    # --- inbox and statuses -------------------------------------------------------------

    async def add_inbound(self, messages: Sequence[InboundMessage], now: float) -> list[bool]:
        docs = [
            {
                "_id": m.id,
                "user": m.user,
                "ts": m.timestamp,
                "status": "pending",
                "data": inbound_to_json(m),
                "received_at": now,
            }
            for m in messages
        ]
        with self._translate("add_inbound"):
            return await self._insert_new(self._inbox, docs)

    async def add_statuses(self, statuses: Sequence[StatusUpdate], now: float) -> list[bool]:
        docs = [
            {
                "_id": f"{s.id}:{s.status}",
                "user": s.recipient,
                "ts": s.timestamp,
                "rank": _STATUS_RANK.get(s.status, len(_STATUS_RANK)),
                "applied": False,
                "data": status_to_json(s),
                "received_at": now,
            }
            for s in statuses
        ]
        with self._translate("add_statuses"):
            fresh = await self._insert_new(self._statuses, docs)
            for status, new in zip(statuses, fresh, strict=True):
                if new and status.status in PROGRESS:
                    await self._apply_progress(status.id, status.status)
            return fresh

    async def _apply_progress(self, wamid: str, name: str) -> None:
        """Move the outbox entry ``wamid`` names forward to ``name``; mark the status applied."""
        moved = await self._outbox.update_one(
            {"wamid": wamid, "status": {"$in": list(PROGRESS[name])}}, {"$set": {"status": name}}
        )
        if moved.matched_count or await self._outbox.find_one({"wamid": wamid}, {"_id": 1}):
            await self._statuses.update_one({"_id": f"{wamid}:{name}"}, {"$set": {"applied": True}})

    async def _insert_new(self, coll: AsyncCollection[Doc], docs: list[Doc]) -> list[bool]:
        """Insert ``docs``; for each, whether it was new (a duplicate ``_id`` is not an error)."""
        if not docs:
            return []
        try:
            await coll.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            details = exc.details
            if details.get("writeConcernErrors"):
                raise WriteConcernError(str(details["writeConcernErrors"][0])) from None
            seen = [False] * len(docs)
            for error in details.get("writeErrors", []):
                if error.get("code") != _DUPLICATE_KEY:
                    raise StoreError(
                        f"MongoDB at {self.description} refused a {coll.name} document: "
                        f"{error.get('errmsg', error)}"
                    ) from None
                seen[error["index"]] = True
            return [not s for s in seen]
        return [True] * len(docs)

    # --- leases -------------------------------------------------------------------------

    async def acquire_user(self, user: str, owner: str, until: float, now: float) -> bool:
        with self._translate("acquire_user"):
            try:
                result = await self._leases.update_one(
                    {"_id": user, "$or": [{"owner": owner}, {"until": {"$lt": now}}]},
                    {"$set": {"owner": owner, "until": float(until)}},
                    upsert=True,
                )
            except DuplicateKeyError:  # the filter missed because someone else holds it
                return False
            return result.matched_count == 1 or result.upserted_id is not None

    async def release_user(self, user: str, owner: str) -> None:
        with self._translate("release_user"):
            await self._leases.delete_one({"_id": user, "owner": owner})

    async def users_with_work(self, now: float, limit: int) -> list[str]:
        if limit <= 0:
            return []
        with self._translate("users_with_work"):
            held = await self._leases.find({"until": {"$gte": now}}, {"_id": 1}).to_list(None)
            busy = [doc["_id"] for doc in held]
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

    # --- per-user work ------------------------------------------------------------------

    async def get_user(self, user: str) -> UserRecord | None:
        with self._translate("get_user"):
            doc = await self._users.find_one({"_id": user})
            if doc is None:
                return None
            await self._finish_turn(doc)
        return user_from_json(doc)

    async def pending_inbound(self, user: str, limit: int) -> list[InboundMessage]:
        with self._translate("pending_inbound"):
            applied = await self._roll_forward(user)
            query: Doc = {"user": user, "status": "pending"}
            if applied is not None:  # done by now; excluded again in case a reader raced us
                query["_id"] = {"$ne": applied}
            cursor = self._inbox.find(query).sort([("ts", 1), ("_id", 1)]).limit(limit)
            docs = await cursor.to_list(None)
        return [inbound_from_json(doc["data"]) for doc in docs]

    async def commit_turn(
        self,
        message_id: str | None,
        record: UserRecord,
        outgoing: Sequence[Outgoing],
        now: float,
    ) -> Committed:
        with self._translate("commit_turn"):
            doc = await self._write_turn(message_id, record, outgoing, now)
            # older entries, including any a crashed turn left and _write_turn rolled forward;
            # this turn's own entries are not inserted until _finish_turn below
            backlog = bool(outgoing) and (
                await self._outbox.find_one({"user": record.key, "status": "pending"}, {"_id": 1})
                is not None
            )
            entries = tuple(outbox_from_json(e) for e in doc["_turn"]["entries"])
            await self._finish_turn(doc)
        return Committed(user_from_json(doc), entries, backlog)

    async def _write_turn(
        self,
        message_id: str | None,
        record: UserRecord,
        outgoing: Sequence[Outgoing],
        now: float,
    ) -> Doc:
        """Step 1: the version-checked write of the user document, carrying the turn."""
        read = record.version
        current = await self._users.find_one({"_id": record.key})
        stored = 0 if current is None else int(current["version"])
        if stored != read:
            raise VersionConflict(f"user {record.key}: read version {read}, stored {stored}")
        if current is not None:
            await self._finish_turn(current)  # the write below replaces the previous ``_turn``
        seq = 0 if current is None else int(current.get("next_seq", 0))
        new = new_outbox_entries(record.key, seq, outgoing, now)
        entries = [{"_id": e.id, **outbox_to_json(e)} for e in new]
        seq += len(new)
        doc: Doc = {
            "_id": record.key,
            **user_to_json(record),
            "version": read + 1,
            "next_seq": seq,
            "_turn": {"at": now, "message_id": message_id, "entries": entries},
        }
        conflict = VersionConflict(f"user {record.key}: version {read} was overwritten meanwhile")
        if current is None:
            try:
                await self._users.insert_one(doc)
            except DuplicateKeyError:
                raise conflict from None
        else:
            result = await self._users.replace_one({"_id": record.key, "version": read}, doc)
            if result.matched_count != 1:
                raise conflict
        return doc

    async def _finish_turn(self, doc: Doc) -> None:
        """Steps 2-4: apply what the user document's ``_turn`` (if any) recorded; idempotent."""
        turn = doc.pop("_turn", None)
        if turn is None:
            return
        await self._insert_new(self._outbox, list(turn.get("entries") or []))
        if turn.get("message_id") is not None:
            await self._inbox.update_one(
                {"_id": turn["message_id"]},
                {"$set": {"status": "done", "finished_at": turn["at"]}},
            )
        await self._users.update_one(
            {"_id": doc["_id"], "version": doc["version"]}, {"$unset": {"_turn": ""}}
        )

    async def _roll_forward(self, user: str) -> str | None:
        """Finish a turn left by a crash; the inbox message it applied, if any."""
        doc = await self._users.find_one({"_id": user, "_turn.at": {"$exists": True}})
        if doc is None:
            return None
        message_id = doc["_turn"].get("message_id")
        await self._finish_turn(doc)
        return None if message_id is None else str(message_id)

    async def fail_inbound(self, message_id: str, reason: str, now: float) -> None:
        with self._translate("fail_inbound"):
            await self._inbox.update_one(
                {"_id": message_id},
                {"$set": {"status": "failed", "reason": reason, "finished_at": now}},
            )

    async def pending_statuses(self, user: str, limit: int) -> list[StatusUpdate]:
        order = [("ts", 1), ("received_at", 1), ("rank", 1), ("_id", 1)]
        with self._translate("pending_statuses"):
            cursor = self._statuses.find({"user": user, "applied": False}).sort(order)
            docs = await cursor.limit(limit).to_list(None)
        return [status_from_json(doc["data"]) for doc in docs]

    async def finish_statuses(self, keys: Sequence[tuple[str, str]]) -> None:
        ids = [f"{wamid}:{status}" for wamid, status in keys]
        if not ids:
            return
        with self._translate("finish_statuses"):
            await self._statuses.update_many({"_id": {"$in": ids}}, {"$set": {"applied": True}})

    async def pending_outbox(self, user: str, limit: int) -> list[OutboxEntry]:
        with self._translate("pending_outbox"):
            await self._roll_forward(user)
            cursor = self._outbox.find({"user": user, "status": "pending"}).sort("seq", 1)
            docs = await cursor.limit(limit).to_list(None)
        return [outbox_from_json(doc) for doc in docs]

    async def outbox_by_wamid(self, wamid: str) -> OutboxEntry | None:
        if not wamid:
            return None
        with self._translate("outbox_by_wamid"):
            doc = await self._outbox.find_one({"wamid": wamid})
        return None if doc is None else outbox_from_json(doc)

    async def save_outbox(self, entry: OutboxEntry) -> None:
        with self._translate("save_outbox"):
            await self._outbox.replace_one(
                {"_id": entry.id}, {"_id": entry.id, **outbox_to_json(entry)}
            )

    async def purge(self, before: float, limit: int) -> int:
        deleted = 0
        with self._translate("purge"):
            for coll, query in (
                (self._inbox, {"status": {"$ne": "pending"}, "finished_at": {"$lt": before}}),
                (self._statuses, {"applied": True, "received_at": {"$lt": before}}),
                (self._outbox, {"status": {"$ne": "pending"}, "created_at": {"$lt": before}}),
            ):
                ids = [
                    d["_id"] for d in await coll.find(query, {"_id": 1}).limit(limit).to_list(None)
                ]
                if ids:
                    deleted += (await coll.delete_many({"_id": {"$in": ids}})).deleted_count
        return deleted

    async def inbox_counts(self) -> dict[str, int]:
        pipeline: list[Doc] = [{"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        with self._translate("inbox_counts"):
            rows = await _aggregate(self._inbox, pipeline)
        counts = {"pending": 0, "done": 0, "failed": 0}
        counts.update({str(row["_id"]): int(row["n"]) for row in rows})
        return counts


async def _aggregate(coll: AsyncCollection[Doc], pipeline: list[Doc]) -> list[Mapping[str, Any]]:
    """Run an aggregation on PyMongo (``aggregate`` is a coroutine) or motor (it is not)."""
    cursor: Any = coll.aggregate(pipeline)
    if inspect.isawaitable(cursor):
        cursor = await cursor
    return cast("list[Mapping[str, Any]]", await cursor.to_list(None))


__all__ = ["MongoStore", "mask_url"]
