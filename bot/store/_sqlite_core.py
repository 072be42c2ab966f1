"""The embedded store: one SQLite file in WAL mode, with group commit.

Every operation is a small function over the connection. Operations are queued; one task
takes whatever is queued, opens a ``BEGIN IMMEDIATE`` transaction, runs the operations
under one SAVEPOINT (should one raise, the batch rolls back to it and runs again with a
savepoint per operation, so the failing one rolls back alone; one alone in its batch needs
none), and commits them all with a single ``COMMIT`` before resolving their futures.
So a coroutine that returns has its data on disk (``synchronous=FULL`` fsyncs the WAL at
every commit), and under load one fsync serves many webhooks: that is what makes
durable-before-ack cheap.

The operations themselves run on the event loop: they only touch pages of a file whose write
lock the transaction holds, so they never wait. What can wait runs on a helper thread: the
``COMMIT`` (the fsync), and a ``BEGIN`` that finds another process holding the lock (it waits
there up to ``busy_timeout``). While it does, new operations queue for the next batch. (An
earlier design ran every operation on a writer thread: each one then crossed threads twice
and the two threads fought over the GIL, which cost more than the SQL.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from bot.errors import LeaseLost, StoreUnavailable
from bot.models import (
    InboundMessage,
    OutboxEntry,
    Outgoing,
    UserRecord,
)
from bot.store.base import (
    AliasCache,
    Lease,
    dumps,
    inbound_from_json,
    new_outbox_entries,
    outbox_to_json,
    user_from_json,
    user_to_json,
)

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
#: An operation's outcome in a batch: its future, whether it returned, what (or what it raised).
_Result = tuple[asyncio.Future[Any], bool, Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    key TEXT PRIMARY KEY, version INTEGER NOT NULL, next_seq INTEGER NOT NULL, data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (
    wamid TEXT PRIMARY KEY, user TEXT NOT NULL, ts INTEGER NOT NULL, status TEXT NOT NULL,
    received_at REAL NOT NULL, finished_at REAL, reason TEXT, data TEXT NOT NULL
);
DROP INDEX IF EXISTS inbox_pending;
-- rowid is the arrival order (every index ends with it): (user, ts, rowid)
CREATE INDEX IF NOT EXISTS inbox_arrival ON inbox(user, ts) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS inbox_finished ON inbox(finished_at) WHERE status != 'pending';
CREATE TABLE IF NOT EXISTS statuses (
    wamid TEXT NOT NULL, status TEXT NOT NULL, user TEXT NOT NULL, ts INTEGER NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0, received_at REAL NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (wamid, status)
);
CREATE INDEX IF NOT EXISTS statuses_pending ON statuses(user, ts) WHERE applied = 0;
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY, user TEXT NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL,
    next_attempt_at REAL NOT NULL, wamid TEXT NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(user, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outbox_wamid ON outbox(wamid) WHERE wamid != '';
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, at REAL NOT NULL);
-- every id a user is known by (phone number, business-scoped ids) -> their canonical key
CREATE TABLE IF NOT EXISTS aliases (id TEXT PRIMARY KEY, user TEXT NOT NULL) WITHOUT ROWID;
"""
_JOB_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, uid TEXT NOT NULL, user TEXT NOT NULL, key TEXT NOT NULL,
    state TEXT NOT NULL, send_at REAL NOT NULL, wake_at REAL NOT NULL, created_at REAL NOT NULL,
    claim_token TEXT NOT NULL DEFAULT '', claim_until REAL NOT NULL DEFAULT 0,
    entry_id TEXT NOT NULL DEFAULT '', data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(wake_at) WHERE state = 'scheduled';
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user, send_at);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs(key, send_at);
-- the purge: every job that is no longer waiting for its time, by when it was due
CREATE INDEX IF NOT EXISTS jobs_done ON jobs(send_at) WHERE state != 'scheduled';
CREATE TABLE IF NOT EXISTS reach (user TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS reach_at ON reach(at);
CREATE TABLE IF NOT EXISTS send_slots (name TEXT PRIMARY KEY, next REAL NOT NULL);
"""
#: Lease columns on ``users``, added to files made before leases fenced writes.
_LEASE_COLUMNS = (
    ("lease_owner", "TEXT NOT NULL DEFAULT ''"),
    ("lease_token", "TEXT NOT NULL DEFAULT ''"),
    ("lease_until", "REAL NOT NULL DEFAULT 0"),
)


class SQLiteCore:
    """The SQLite file, its lifecycle and its group commit; the stores' parts build on it."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        max_batch: int = 512,
        busy_timeout: float = 5.0,
    ):
        self.path = Path(path)
        self.description = f"sqlite:///{self.path}"
        self._synchronous = synchronous
        self._max_batch = max_batch
        self._busy_ms = max(0, int(busy_timeout * 1000))
        self._pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self._pump: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, "windowbot-sqlite")
        self._decoded = _Decoded()
        # Lease tokens only need to differ from every other token: a random prefix per
        # store object and a counter (os.urandom per claim cost a system call each).
        prefix, counter = uuid.uuid4().hex[:16], itertools.count()
        self._token: Callable[[], str] = lambda: f"{prefix}{next(counter):x}"
        self._aliases = AliasCache()

    # --- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_ms / 1000,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            conn.executescript(_SCHEMA)
            conn.executescript(_JOB_SCHEMA)
            have = {row[1] for row in conn.execute("PRAGMA table_info(users)")}
            for name, decl in _LEASE_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE users ADD COLUMN {name} {decl}")
            conn.execute("PRAGMA busy_timeout=0")  # the event loop never waits for a lock
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(
                f"cannot open the SQLite store {self.path}: {exc} "
                "(check that the folder exists and is writable)"
            ) from None
        self._conn = conn
        self._waiter = concurrent.futures.ThreadPoolExecutor(1, "windowbot-sqlite")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._pump is not None:
            await asyncio.shield(self._pump)
        waiter = self._waiter
        await asyncio.get_running_loop().run_in_executor(waiter, conn.close)
        waiter.shutdown(wait=False)

    async def ping(self, *, write: bool = False) -> None:
        if write:  # through a real commit: a full disk or a lock held elsewhere fails here
            await self._call(
                lambda c: _run(c, "INSERT OR REPLACE INTO health (id, at) VALUES (1, 0)")
            )
        else:
            await self._call(lambda c: c.execute("SELECT 1").fetchone())

    # --- group commit -------------------------------------------------------------------

    async def _call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise StoreUnavailable(f"the SQLite store {self.path} is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._pending.append((op, fut))
        if self._pump is None:
            self._pump = loop.create_task(self._run_batches(), name="windowbot-sqlite-commit")
        return await fut

    async def _run_batches(self) -> None:
        """Run what is queued, a transaction at a time, until nothing is; then stop."""
        try:
            while self._pending and self._conn is not None:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._run_batch(self._conn, batch)
        finally:
            self._pump = None

    async def _run_batch(
        self, conn: sqlite3.Connection, batch: list[tuple[Op, asyncio.Future[Any]]]
    ) -> None:
        loop = asyncio.get_running_loop()
        results: list[_Result] = []
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _locked(exc):
                    raise
                await loop.run_in_executor(self._waiter, self._begin_waiting, conn)
            live = [(op, fut) for op, fut in batch if not fut.done()]  # callers gave up
            if len(live) == 1:  # alone in its transaction: no savepoint needed
                op, fut = live[0]
                try:
                    results.append((fut, True, op(conn)))
                except sqlite3.OperationalError:
                    raise  # the file failed (full, I/O), not the operation: see below
                except Exception as exc:
                    conn.execute("ROLLBACK")
                    results.append((fut, False, exc))
            elif live:
                done = _all_or_none(conn, live)
                results = done if done is not None else _each_alone(conn, live)
            if conn.in_transaction:  # the fsync happens off the event loop
                await loop.run_in_executor(self._waiter, conn.execute, "COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = StoreUnavailable(f"SQLite store {self.path} failed: {exc}")
            results = [(fut, False, error) for _, fut in batch]
        for fut, ok, value in results:
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def _begin_waiting(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, waiting up to the busy timeout for another process's lock."""
        conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.execute("PRAGMA busy_timeout=0")


class _Decoded:
    """Objects this process encoded or decoded lately, by the exact JSON stored for them.

    A worker mostly reads back what this process has just written: the message its webhook
    stored, the record its last turn committed. When the stored text is the remembered
    text, the (immutable) object is reused instead of being decoded again; any other text
    is decoded. Bounded: the older half is forgotten when it is full.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._inbound: dict[str, tuple[str, InboundMessage]] = {}
        self._records: dict[str, tuple[str, UserRecord]] = {}

    def remember_inbound(
        self, messages: Sequence[InboundMessage], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """``messages`` as encoded in their inbox ``rows`` (the JSON is the row's last item)."""
        for message, row in zip(messages, rows, strict=True):
            self._inbound[message.id] = (row[-1], message)
        _bound(self._inbound, self._size)

    def inbound(self, wamid: str, data: str) -> InboundMessage:
        """The message stored as ``data``."""
        known = self._inbound.pop(wamid, None)
        if known is not None and known[0] == data:
            return known[1]
        return inbound_from_json(json.loads(data))

    def remember_record(self, data: str, record: UserRecord) -> None:
        """``record``, stored as ``data``."""
        self._records[record.key] = (data, record)
        _bound(self._records, self._size)

    def last_record(self, user: str) -> UserRecord | None:
        """The record of ``user`` last remembered, if it is."""
        known = self._records.get(user)
        return None if known is None else known[1]

    def record(self, user: str, data: str | None) -> UserRecord:
        """The record stored as ``data`` (``None``: never committed)."""
        if data is None:
            return _blank_user(user)
        known = self._records.get(user)
        if known is not None and known[0] == data:
            return known[1]
        record = user_from_json(json.loads(data))
        self.remember_record(data, record)
        return record


def _bound(cache: dict[str, Any], size: int) -> None:
    """Forget the older half of ``cache`` once it holds more than ``size`` items."""
    if len(cache) > size:
        for key in list(cache)[: size // 2]:
            del cache[key]


def _blank_user(user: str, version: int = 0) -> UserRecord:
    """The record of a user never seen (keyed by a phone number or a business-scoped id)."""
    phone = user.isdigit()
    return UserRecord(
        key=user, wa_id=user if phone else "", user_id="" if phone else user, version=version
    )


def _append(
    c: sqlite3.Connection, user: str, payloads: Sequence[Outgoing], now: float, entry_id: str = ""
) -> list[OutboxEntry]:
    """Append business-initiated entries to a user's outbox (see ``Store.enqueue``).

    ``entry_id`` names the one entry appended (a job's); an entry of that id already stored
    is not appended again.
    """
    row = c.execute("SELECT version, next_seq, data FROM users WHERE key = ?", (user,)).fetchone()
    next_seq = 0 if row is None else row[1]
    entries = new_outbox_entries(user, next_seq, payloads, now)
    if entry_id:
        if c.execute("SELECT 1 FROM outbox WHERE id = ?", (entry_id,)).fetchone():
            return []
        entries = [replace(e, id=entry_id) for e in entries]
    _insert_outbox(c, entries)
    if row is None:
        blank = dumps(user_to_json(_blank_user(user, version=1)))
        c.execute(
            "INSERT INTO users (key, version, next_seq, data) VALUES (?, 1, ?, ?)",
            (user, len(entries), blank),
        )
    elif not row[2]:  # claimed but never committed: the record is born here
        blank = dumps(user_to_json(_blank_user(user, version=1)))
        c.execute(
            "UPDATE users SET version = 1, next_seq = ?, data = ? WHERE key = ?",
            (next_seq + len(entries), blank, user),
        )
    else:
        c.execute(
            "UPDATE users SET version = version + 1, next_seq = ?, "
            "data = json_set(data, '$.version', version + 1) WHERE key = ?",
            (next_seq + len(entries), user),
        )
    return entries


def _insert_outbox(c: sqlite3.Connection, entries: Sequence[OutboxEntry]) -> None:
    """Store new (pending) outbox entries."""
    c.executemany(
        "INSERT INTO outbox (id, user, seq, status, next_attempt_at, wamid, data) "
        "VALUES (?, ?, ?, 'pending', ?, '', ?)",
        [(e.id, e.user, e.seq, e.next_attempt_at, dumps(outbox_to_json(e))) for e in entries],
    )


def _check_lease(c: sqlite3.Connection, lease: Lease) -> None:
    row = c.execute("SELECT lease_token FROM users WHERE key = ?", (lease.user,)).fetchone()
    if row is None or row[0] != lease.token:
        raise LeaseLost(f"user {lease.user}: the lease was taken over; write refused")


def _all_or_none(
    conn: sqlite3.Connection, live: list[tuple[Op, asyncio.Future[Any]]]
) -> list[_Result] | None:
    """Run a batch's operations under one savepoint; ``None`` (rolled back) if one raised.

    Operations fail seldom (a lost lease, a version conflict): one savepoint for the batch
    spares two statements per operation. An operation changes nothing but the database, so
    after the rollback the batch runs again, each operation alone (:func:`_each_alone`).
    """
    conn.execute("SAVEPOINT batch")
    try:
        done = [(fut, True, op(conn)) for op, fut in live]
    except Exception:
        conn.execute("ROLLBACK TO batch")
        conn.execute("RELEASE batch")
        return None
    conn.execute("RELEASE batch")
    return done


def _each_alone(
    conn: sqlite3.Connection, live: list[tuple[Op, asyncio.Future[Any]]]
) -> list[_Result]:
    """Run each operation in its own savepoint: one that raises rolls back alone."""
    results: list[_Result] = []
    for op, fut in live:
        conn.execute("SAVEPOINT op")
        try:
            results.append((fut, True, op(conn)))
            conn.execute("RELEASE op")
        except Exception as exc:  # the caller gets it; the batch goes on
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            results.append((fut, False, exc))
    return results


def _run(c: sqlite3.Connection, sql: str) -> None:
    """Run a statement and return nothing (an operation's result is data, never a cursor)."""
    c.execute(sql)


def _run_many(c: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Run a statement for each row (see ``_run``)."""
    c.executemany(sql, rows)


def _locked(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` is SQLITE_BUSY: another connection holds the write lock."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY
