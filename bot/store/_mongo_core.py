"""What every part of :class:`~bot.store.mongo.MongoStore` shares: construction, lifecycle.

The collections, the indexes the queries need, the translation of driver errors into the
store's own, and the insert that treats a duplicate ``_id`` as "already there".
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self, cast
from urllib.parse import parse_qsl, urlsplit

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

from bot.errors import ConfigError, StoreError
from bot.models import UserRecord
from bot.store._mongo_errors import mask_url, translate
from bot.store.base import AliasCache

Doc = dict[str, Any]

_DUPLICATE_KEY = 11000
_NO_INDEX = frozenset({26, 27})  # NamespaceNotFound, IndexNotFound
_INBOX_ORDER = [("ts", ASCENDING), ("arrival", ASCENDING)]
_STATUS_ORDER = [("ts", ASCENDING), ("received_at", ASCENDING), ("rank", ASCENDING)]
#: Indexes each query needs. No ``_id`` in a compound index: nx-27017 then fails every insert.
_INDEXES: dict[str, list[list[tuple[str, int]]]] = {
    "users": [[("lease.until", ASCENDING)]],  # the sweep leaves out live leases
    "inbox": [
        [("user", ASCENDING), ("status", ASCENDING), *_INBOX_ORDER],  # a user's pending
        [("status", ASCENDING), ("finished_at", ASCENDING)],  # sweep, counts, purge
    ],
    "statuses": [
        [("user", ASCENDING), ("applied", ASCENDING), *_STATUS_ORDER],  # a user's pending
        [("applied", ASCENDING), ("received_at", ASCENDING)],  # sweep, purge
    ],
    "outbox": [
        [("user", ASCENDING), ("status", ASCENDING), ("seq", ASCENDING)],  # a user's pending
        [("user", ASCENDING), ("wamid", ASCENDING)],  # status lookups
        [("user", ASCENDING), ("fence", ASCENDING)],  # re-fencing at claim and release
        [("status", ASCENDING), ("next_attempt_at", ASCENDING)],  # sweep
        [("status", ASCENDING), ("created_at", ASCENDING)],  # purge
    ],
    "jobs": [
        [("state", ASCENDING), ("wake_at", ASCENDING)],  # due jobs
        [("user", ASCENDING), ("send_at", ASCENDING)],  # a user's jobs
        [("key", ASCENDING), ("send_at", ASCENDING)],  # by key
        [("state", ASCENDING), ("send_at", ASCENDING)],  # purge
    ],
    "template_events": [[("received_at", ASCENDING)]],  # purge
    "pricing": [[("ts", ASCENDING)]],  # counts since, the roll-up of closed days
    "reach": [[("at", ASCENDING)]],
}
#: Indexes of earlier versions that a prefix of one above serves just as well. (The outbox
#: ``wamid_1`` stays: processes of the previous version look entries up by wamid alone.)
_SUPERSEDED = {
    "inbox": ("user_1_status_1_ts_1", "status_1", "finished_at_1"),
    "statuses": ("user_1_applied_1_ts_1", "applied_1"),
}


class _MongoCore:
    """The base of :class:`~bot.store.mongo.MongoStore` (see it for the arguments)."""

    if TYPE_CHECKING:  # _MongoTurns's: every reader first finishes a turn left behind

        async def _finish_turn(self, doc: Doc) -> None: ...

    def __init__(
        self,
        database: Any,
        *,
        client: Any = None,
        description: str = "",
        clock_skew: float = 0.0,
    ) -> None:
        # Typed as PyMongo's database: motor's has the same collection API for what is used
        # here, except ``aggregate`` (see ``_mongo_leases._aggregate``).
        self._db = cast("AsyncDatabase[Doc]", database)
        self._client = client
        self.description = description or f"MongoDB database {database.name!r}"
        self._skew = max(0.0, clock_skew)
        self._users: AsyncCollection[Doc] = self._db["users"]
        self._inbox: AsyncCollection[Doc] = self._db["inbox"]
        self._statuses: AsyncCollection[Doc] = self._db["statuses"]
        self._outbox: AsyncCollection[Doc] = self._db["outbox"]
        self._jobs: AsyncCollection[Doc] = self._db["jobs"]
        self._reach: AsyncCollection[Doc] = self._db["reach"]
        self._limits: AsyncCollection[Doc] = self._db["limits"]

        self._aliases: AsyncCollection[Doc] = self._db["aliases"]
        self._alias_cache = AliasCache()
        self._last_arrival = 0.0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        database: str | None = None,
        timeout_ms: int = 5000,
        operation_timeout_ms: int = 30_000,
        clock_skew: float = 0.0,
    ) -> Self:
        """A store on a new PyMongo client for ``url`` (closed again by :meth:`close`).

        The database is ``database``, else the URL's path, else ``windowbot``. Writes are
        acknowledged by a majority and journaled; the server must be found and connected to
        within ``timeout_ms``, and answer an operation (its write concern included) within
        ``operation_timeout_ms``, so a hung server fails the call instead of blocking it.
        Options given in the URL (``w``, ``journal``, ``socketTimeoutMS``...) win over these.

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
            "socketTimeoutMS": operation_timeout_ms,
            "wTimeoutMS": operation_timeout_ms,
        }
        options = {k: v for k, v in defaults.items() if k.lower() not in given}
        try:
            client: AsyncMongoClient[Doc] = AsyncMongoClient(url, **options)
            db = client[database] if database else client.get_default_database("windowbot")
        except (PyMongoError, ValueError, TypeError) as exc:  # the URI parser raises all three
            reason = mask_url(str(exc))
            raise ConfigError(f"invalid MongoDB URL {masked}: {reason}") from None
        description = masked if database is None else f"{masked} (database {database!r})"
        return cls(db, client=client, description=description, clock_skew=clock_skew)

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
            for name, indexes in _INDEXES.items():
                for keys in indexes:
                    await self._db[name].create_index(keys)
            for name, old in _SUPERSEDED.items():
                for index in old:
                    try:
                        await self._db[name].drop_index(index)
                    except OperationFailure as exc:
                        if exc.code not in _NO_INDEX:
                            raise

    async def close(self) -> None:
        """Close the client if the store created it; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            result = client.close()
            if inspect.isawaitable(result):  # PyMongo's close is a coroutine, motor's is not
                await result

    async def ping(self, *, write: bool = False) -> None:
        with self._translate("ping"):
            if write:  # a real write ($inc always changes the document) with the write concern
                await self._db["health"].update_one(
                    {"_id": "ping"}, {"$inc": {"writes": 1}}, upsert=True
                )
            else:
                await self._db.command("ping")

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn driver errors into the store's own (see :func:`_mongo_errors.translate`)."""
        with translate(self.description, what):
            yield

    async def _delete_some(self, coll: AsyncCollection[Doc], query: Doc, limit: int) -> int:
        """Delete up to ``limit`` documents matching ``query``; how many.

        Their ids are read first (``delete_many`` has no limit), and the query is applied
        again with them: a document that stopped matching meanwhile stays.
        """
        found = await coll.find(query, {"_id": 1}).limit(limit).to_list(None)
        if not found:
            return 0
        ids = {"_id": {"$in": [d["_id"] for d in found]}}
        return int((await coll.delete_many({**query, **ids})).deleted_count)

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


# --- the user document, shared by the parts ----------------------------------------------

_NO_LEASE: Doc = {"owner": "", "token": "", "until": 0.0}


def _token(doc: Mapping[str, Any] | None) -> str:
    """The lease token a user document holds ('' for none)."""
    return str(((doc or {}).get("lease") or {}).get("token") or "")


def _version_is(doc: Mapping[str, Any]) -> Doc:
    """A filter matching the version ``doc`` has (a claimed, never written user has none)."""
    return {"version": doc["version"]} if "version" in doc else {"version": {"$exists": False}}


def _blank_user(user: str, version: int = 0) -> UserRecord:
    """The record of a user never seen (keyed by a phone number or a business-scoped id)."""
    phone = user.isdigit()
    return UserRecord(
        key=user, wa_id=user if phone else "", user_id="" if phone else user, version=version
    )
