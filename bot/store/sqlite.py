"""The embedded store: one SQLite file in WAL mode, with group commit.

Every operation is a small function over the connection. Operations are queued; one task
takes whatever is queued, opens a ``BEGIN IMMEDIATE`` transaction, runs each operation
inside its own SAVEPOINT (so one failing operation rolls back alone; one alone in its batch
needs none), and commits them all with a single ``COMMIT`` before resolving their futures.
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

from bot.errors import LeaseLost, StoreUnavailable, VersionConflict
from bot.models import (
    DELIVERY_RANK,
    IdentityChange,
    InboundMessage,
    Job,
    OutboxEntry,
    Outgoing,
    StatusUpdate,
    TemplateEvent,
    UserRecord,
    delivery_status,
    parse_callback_data,
)
from bot.store.base import (
    OUTCOMES,
    REACH_SECONDS,
    Added,
    AliasCache,
    Committed,
    Identity,
    InboxItem,
    Lease,
    PricingCount,
    Reach,
    Resolved,
    TemplateView,
    Work,
    apply_template_event,
    change_identity,
    dumps,
    filed,
    filed_status,
    inbound_from_json,
    inbound_to_json,
    job_entry_id,
    job_from_json,
    job_to_json,
    live_from_json,
    live_to_json,
    merge_saved,
    message_identity,
    new_outbox_entries,
    outbox_from_json,
    outbox_to_json,
    pricing_row,
    report_conflicts,
    resolve_identities,
    resolve_job,
    status_from_json,
    status_identity,
    status_to_json,
    user_from_json,
    user_to_json,
)

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

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


class SQLiteStore:
    """The :class:`~bot.store.base.Store` on a local SQLite file.

    Args:
        path: the database file (created with its folder if missing).
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` (default) survives power loss,
            ``NORMAL`` survives a killed process only.
        max_batch: the most operations one commit may carry.
        busy_timeout: seconds a write waits for another process's lock on the file before
            it fails (the webhook then answers 503 and Meta retries).
    """

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
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
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
            else:
                for op, fut in live:
                    conn.execute("SAVEPOINT op")
                    try:
                        results.append((fut, True, op(conn)))
                        conn.execute("RELEASE op")
                    except Exception as exc:  # the caller gets it; the batch goes on
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        results.append((fut, False, exc))
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

    # --- inbox and statuses -------------------------------------------------------------

    async def add_inbound(self, messages: Sequence[InboundMessage], now: float) -> Added:
        insert = self._insert(messages, now)
        added, learned = await self._call(insert)
        self._learn(*learned)
        return added

    def _insert(
        self, messages: Sequence[InboundMessage], now: float
    ) -> Callable[[sqlite3.Connection], tuple[Added, tuple[dict[str, str], Resolved]]]:
        """The operation that inserts ``messages`` under their users' canonical keys.

        When this process has seen every id before (the usual case) the keys come from its
        cache and the rows are encoded (and remembered decoded for :meth:`_work`) here;
        otherwise the aliases are read and the new ones written inside the operation. It
        returns the flags and what to teach the cache once the write is committed.
        """
        identities = [message_identity(m) for m in messages]

        def rows(users: Sequence[str]) -> list[tuple[Any, ...]]:
            return [
                (m.id, user, m.timestamp, now, dumps(inbound_to_json(filed(m, user))))
                for m, user in zip(messages, users, strict=True)
            ]

        cached: list[str] | None = None
        ready: list[tuple[Any, ...]] = []
        if not self._aliases.missing(identities):
            cached = self._aliases.resolve(identities).users
            ready = rows(cached)
            filed_messages = [filed(m, u) for m, u in zip(messages, cached, strict=True)]
            self._decoded.remember_inbound(filed_messages, ready)

        def op(c: sqlite3.Connection) -> tuple[Added, tuple[dict[str, str], Resolved]]:
            learned: tuple[dict[str, str], Resolved] = ({}, Resolved())
            if cached is None:
                resolved, known = _resolve_aliases(c, identities)
                users, todo, learned = resolved.users, rows(resolved.users), (known, resolved)
            else:
                users, todo = cached, ready
            out = []
            for row in todo:
                cur = c.execute(
                    "INSERT OR IGNORE INTO inbox (wamid, user, ts, status, received_at, data) "
                    "VALUES (?, ?, ?, 'pending', ?, ?)",
                    row,
                )
                out.append(cur.rowcount == 1)
            return Added(out, users), learned

        return op

    async def add_and_claim(
        self,
        messages: Sequence[InboundMessage],
        now: float,
        *,
        owner: str,
        until: float,
        users: Sequence[str],
        limit: int = 64,
    ) -> tuple[Added, list[Work]]:
        insert = self._insert(messages, now)
        tokens = {user: self._token() for user in users}

        def op(
            c: sqlite3.Connection,
        ) -> tuple[Added, tuple[dict[str, str], Resolved], list[tuple[str, str | None, _Rows]]]:
            fresh, learned = insert(c)
            filed_under = set(fresh.users)
            claimed = []
            for user, token in tokens.items():
                if user not in filed_under:  # its messages went to the user's canonical key
                    continue
                got = _claim(c, user, owner, token, until, now, limit)
                if got is not None:
                    claimed.append((user, *got))
            return fresh, learned, claimed

        fresh, learned, claimed = await self._call(op)
        self._learn(*learned)
        return fresh, [
            self._work(Lease(user, owner, tokens[user], until), data, rows)
            for user, data, rows in claimed
        ]

    async def add_statuses(self, statuses: Sequence[StatusUpdate], now: float) -> Added:
        identities = [status_identity(s) for s in statuses]

        def rows(users: Sequence[str]) -> list[tuple[Any, ...]]:
            out = []
            for s, user in zip(statuses, users, strict=True):
                status = filed_status(s, user)
                data = dumps(status_to_json(status))
                out.append((status, (s.id, s.status, user, s.timestamp, now, data)))
            return out

        def insert(c: sqlite3.Connection, rows: list[Any]) -> list[bool]:
            out = []
            for status, row in rows:
                cur = c.execute(
                    "INSERT OR IGNORE INTO statuses (wamid, status, user, ts, received_at, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
                new = cur.rowcount == 1
                out.append(new)
                if new and _apply_status(c, status):
                    c.execute(
                        "UPDATE statuses SET applied = 1 WHERE wamid = ? AND status = ?",
                        (status.id, status.status),
                    )
            return out

        return await self._filed(identities, rows, insert)

    async def _filed(
        self,
        identities: list[Identity],
        rows: Callable[[Sequence[str]], list[Any]],
        insert: Callable[[sqlite3.Connection, list[Any]], list[bool]],
    ) -> Added:
        """Insert items under their users' canonical keys, resolved in the same write.

        When the process has seen every id before (the usual case), the keys come from its
        cache and the rows are encoded here; otherwise the aliases are read and the new ones
        written inside the insert's own transaction.
        """
        if not self._aliases.missing(identities):
            users = self._aliases.resolve(identities).users
            ready = rows(users)
            return Added(await self._call(lambda c: insert(c, ready)), users)

        def op(c: sqlite3.Connection) -> tuple[list[bool], Resolved, dict[str, str]]:
            resolved, known = _resolve_aliases(c, identities)
            return insert(c, rows(resolved.users)), resolved, known

        new, resolved, known = await self._call(op)
        self._learn(known, resolved)
        return Added(new, resolved.users)

    def _learn(self, known: dict[str, str], resolved: Resolved) -> None:
        self._aliases.learn(known)
        self._aliases.learn(resolved.new)
        report_conflicts(resolved)

    async def add_identity_changes(
        self, changes: Sequence[IdentityChange], now: float
    ) -> list[str]:
        identities = [change_identity(c) for c in changes]

        def op(c: sqlite3.Connection) -> tuple[Resolved, dict[str, str]]:
            resolved, known = _resolve_aliases(c, identities)
            for identity, user in zip(identities, resolved.users, strict=True):
                fields = [("$.user_id", identity.user_id), ("$.wa_id", identity.wa_id)]
                paths = [(path, value) for path, value in fields if value]
                sets = "".join(f", '{path}', ?" for path, _ in paths)
                c.execute(
                    "UPDATE users SET version = version + 1, data = json_set(data"
                    f"{sets}, '$.version', version + 1) WHERE key = ? AND data != ''",
                    (*(value for _, value in paths), user),
                )
            return resolved, known

        resolved, known = await self._call(op)
        self._learn(known, resolved)
        return resolved.users

    # --- leases -------------------------------------------------------------------------

    async def claim(
        self, user: str, owner: str, until: float, now: float, *, limit: int = 64
    ) -> Work | None:
        token = self._token()
        got = await self._call(lambda c: _claim(c, user, owner, token, until, now, limit))
        if got is None:
            return None
        data, rows = got
        return self._work(Lease(user, owner, token, until), data, rows)

    def _work(self, lease: Lease, data: str | None, rows: _Rows) -> Work:
        """Decode what :func:`_read_pending` read (on the event loop, not the writer thread)."""
        inbox, statuses, outbox = rows
        return Work(
            lease=lease,
            record=self._decoded.record(lease.user, data),
            inbound=tuple(self._decoded.inbound(wamid, d) for wamid, d in inbox),
            statuses=tuple(status_from_json(json.loads(d)) for d in statuses),
            outbox=tuple(outbox_from_json(json.loads(d)) for d in outbox),
        )

    async def read_work(self, lease: Lease, *, limit: int = 64) -> Work:
        def op(c: sqlite3.Connection) -> tuple[str | None, _Rows]:
            row = c.execute("SELECT data FROM users WHERE key = ?", (lease.user,)).fetchone()
            return (row[0] or None) if row else None, _read_pending(c, lease.user, limit)

        data, rows = await self._call(op)
        return self._work(lease, data, rows)

    async def renew(self, leases: Sequence[Lease], until: float) -> set[str]:
        rows = [(until, lease.user, lease.token) for lease in leases]

        def op(c: sqlite3.Connection) -> set[str]:
            held = set()
            for row in rows:
                cur = c.execute(
                    "UPDATE users SET lease_until = ? WHERE key = ? AND lease_token = ?", row
                )
                if cur.rowcount == 1:
                    held.add(row[1])
            return held

        return await self._call(op) if rows else set()

    async def release(self, leases: Sequence[Lease]) -> None:
        rows = [(lease.user, lease.token) for lease in leases]
        if rows:
            await self._call(
                lambda c: _run_many(
                    c,
                    "UPDATE users SET lease_owner = '', lease_token = '', lease_until = 0 "
                    "WHERE key = ? AND lease_token = ?",
                    rows,
                )
            )

    async def users_with_work(self, now: float, limit: int) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT user FROM ("
                " SELECT DISTINCT user FROM inbox WHERE status = 'pending'"
                " UNION SELECT DISTINCT user FROM statuses WHERE applied = 0"
                " UNION SELECT DISTINCT user FROM outbox"
                "  WHERE status = 'pending' AND next_attempt_at <= ?"
                ") AS w WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.key = w.user"
                " AND u.lease_token != '' AND u.lease_until >= ?) LIMIT ?",
                (now, now, limit),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._call(op)

    async def get_user(self, user: str) -> UserRecord | None:
        def op(c: sqlite3.Connection) -> str | None:
            row = c.execute("SELECT data FROM users WHERE key = ?", (user,)).fetchone()
            return (row[0] or None) if row else None

        data = await self._call(op)
        return None if data is None else user_from_json(json.loads(data))

    # --- per-user work ------------------------------------------------------------------

    async def commit_turn(
        self,
        lease: Lease,
        message_id: str | None,
        record: UserRecord,
        outgoing: Sequence[Outgoing],
        now: float,
        *,
        failed: str = "",
        start_sending: bool = False,
    ) -> Committed:
        read_version = record.version
        stored = replace(record, version=read_version + 1)
        data = dumps(user_to_json(stored))
        payloads = list(outgoing)

        def op(c: sqlite3.Connection) -> Committed:
            row = c.execute(
                "SELECT version, next_seq, lease_token FROM users WHERE key = ?", (record.key,)
            ).fetchone()
            if row is None or row[2] != lease.token:
                raise LeaseLost(f"user {record.key}: the lease was taken over; turn not stored")
            current, next_seq = row[0], row[1]
            if current != read_version:
                raise VersionConflict(
                    f"user {record.key}: read version {read_version}, stored {current}"
                )
            backlog = bool(payloads) and _has_pending_outbox(c, record.key, now)
            entries = new_outbox_entries(
                record.key,
                next_seq,
                payloads,
                now,
                in_flight=lease.token if start_sending and not backlog else "",
            )
            c.executemany(
                "INSERT INTO outbox (id, user, seq, status, next_attempt_at, wamid, data) "
                "VALUES (?, ?, ?, 'pending', ?, '', ?)",
                [
                    (e.id, e.user, e.seq, e.next_attempt_at, dumps(outbox_to_json(e)))
                    for e in entries
                ],
            )
            c.execute(
                "UPDATE users SET version = ?, next_seq = ?, data = ? WHERE key = ?",
                (stored.version, next_seq + len(entries), data, record.key),
            )
            if message_id is not None:
                c.execute(
                    "UPDATE inbox SET status = ?, finished_at = ?, reason = ? WHERE wamid = ?",
                    ("failed" if failed else "done", now, failed or None, message_id),
                )
            return Committed(stored, tuple(entries), backlog)

        committed = await self._call(op)
        self._decoded.remember_record(data, stored)
        return committed

    async def enqueue(
        self, user: str, outgoing: Sequence[Outgoing], now: float
    ) -> list[OutboxEntry]:
        payloads = list(outgoing)
        return await self._call(lambda c: _append(c, user, payloads, now))

    async def begin_send(self, lease: Lease, entry: OutboxEntry, now: float) -> OutboxEntry | None:
        def op(c: sqlite3.Connection) -> int | None:
            _check_lease(c, lease)
            row = c.execute(
                "SELECT json_extract(data, '$.attempts') FROM outbox "
                "WHERE id = ? AND status = 'pending' AND wamid = ''",
                (entry.id,),
            ).fetchone()
            if row is None:
                return None
            attempts = int(row[0] or 0) + 1
            c.execute(
                "UPDATE outbox SET data = json_set(data, '$.attempts', ?, '$.inflight_at', ?, "
                "'$.inflight_token', ?) WHERE id = ?",
                (attempts, now, lease.token, entry.id),
            )
            return attempts

        attempts = await self._call(op)
        if attempts is None:
            return None
        return replace(entry, attempts=attempts, inflight_at=now, inflight_token=lease.token)

    async def save_outbox(self, lease: Lease, entry: OutboxEntry) -> None:
        # An entry's reply never changes once queued: only its delivery fields are written,
        # so the (large) message body is not encoded again for every send.
        def op(c: sqlite3.Connection) -> None:
            row = c.execute(  # the fence and the stored entry in one statement
                "SELECT u.lease_token, o.status, o.wamid FROM users u "
                "LEFT JOIN outbox o ON o.id = ? WHERE u.key = ?",
                (entry.id, lease.user),
            ).fetchone()
            if row is None or row[0] != lease.token:
                raise LeaseLost(f"user {lease.user}: the lease was taken over; write refused")
            if row[1] is None:
                return
            status = merge_saved(row[1], row[2], entry)
            c.execute(
                "UPDATE outbox SET status = ?, next_attempt_at = ?, wamid = ?, data = json_set("
                "data, '$.status', ?, '$.attempts', ?, '$.next_attempt_at', ?, '$.wamid', ?, "
                "'$.sent_as', ?, '$.reason', ?, '$.error_code', ?, '$.fallback_sent', ?, "
                "'$.inflight_at', ?, '$.inflight_token', ?) WHERE id = ?",
                (
                    status,
                    entry.next_attempt_at,
                    entry.wamid,
                    status,
                    entry.attempts,
                    entry.next_attempt_at,
                    entry.wamid,
                    entry.sent_as,
                    entry.reason,
                    entry.error_code,
                    entry.fallback_sent,
                    entry.inflight_at,
                    entry.inflight_token,
                    entry.id,
                ),
            )

        await self._call(op)

    async def outbox_for_status(self, status: StatusUpdate) -> OutboxEntry | None:
        named = parse_callback_data(status.callback_data)

        def op(c: sqlite3.Connection) -> str | None:
            row = c.execute(  # the condition lets SQLite use the partial index
                "SELECT data FROM outbox WHERE wamid = ? AND wamid != ''", (status.id,)
            ).fetchone()
            if row is None and named is not None:
                row = c.execute(
                    "SELECT data FROM outbox WHERE id = ? AND user = ?",
                    (named[0], status.recipient),
                ).fetchone()
            return None if row is None else str(row[0])

        data = await self._call(op) if status.id else None
        return None if data is None else outbox_from_json(json.loads(data))

    async def finish_statuses(self, user: str, keys: Sequence[tuple[str, str]]) -> None:
        rows = [(wamid, status, user) for wamid, status in keys]
        await self._call(
            lambda c: _run_many(
                c,
                "UPDATE statuses SET applied = 1 WHERE wamid = ? AND status = ? AND user = ?",
                rows,
            )
        )

    async def outbox_of(self, user: str, limit: int = 100) -> list[OutboxEntry]:
        def op(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT data FROM (SELECT data, seq FROM outbox WHERE user = ? "
                "ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                (user, limit),
            ).fetchall()
            return [r[0] for r in rows]

        return [outbox_from_json(json.loads(d)) for d in await self._call(op)]

    async def purge(self, before: float, limit: int) -> int:
        def op(c: sqlite3.Connection) -> int:
            deleted = c.execute(
                "DELETE FROM inbox WHERE rowid IN (SELECT rowid FROM inbox "
                "WHERE status != 'pending' AND finished_at < ? LIMIT ?)",
                (before, limit),
            ).rowcount
            deleted += c.execute(
                "DELETE FROM statuses WHERE rowid IN (SELECT rowid FROM statuses "
                "WHERE applied = 1 AND received_at < ? LIMIT ?)",
                (before, limit),
            ).rowcount
            deleted += c.execute(
                "DELETE FROM outbox WHERE rowid IN (SELECT rowid FROM outbox "
                "WHERE status != 'pending' AND json_extract(data, '$.created_at') < ? LIMIT ?)",
                (before, limit),
            ).rowcount
            return deleted

        return await self._call(op)

    async def inbox_counts(self) -> dict[str, int]:
        def op(c: sqlite3.Connection) -> dict[str, int]:
            rows = c.execute("SELECT status, COUNT(*) FROM inbox GROUP BY status").fetchall()
            counts = {"pending": 0, "done": 0, "failed": 0}
            counts.update({r[0]: r[1] for r in rows})
            return counts

        return await self._call(op)

    # --- templates' live view and the pricing ledger ------------------------------------

    async def _ledger_call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """``_call``, once the live-view and pricing tables exist (made on first use)."""
        if not getattr(self, "_ledger_ready", False):
            await self._call(_ledger_tables)
            self._ledger_ready = True
        return await self._call(op)

    async def add_template_events(self, events: Sequence[TemplateEvent], now: float) -> list[bool]:
        rows = [(e, e.key, dumps({"raw": dict(e.raw), "time": e.time})) for e in events]

        def op(c: sqlite3.Connection) -> list[bool]:
            out, changed = [], False
            for event, key, data in rows:
                cur = c.execute(
                    "INSERT OR IGNORE INTO template_events (key, received_at, data) "
                    "VALUES (?, ?, ?)",
                    (key, now, data),
                )
                out.append(cur.rowcount == 1)
                if cur.rowcount != 1:
                    continue
                found = c.execute(
                    "SELECT data FROM template_live WHERE name = ? AND language = ?",
                    (event.name, event.language),
                ).fetchone()
                current = live_from_json(json.loads(found[0])) if found else None
                new = apply_template_event(current, event)
                if new is not None:
                    c.execute(
                        "INSERT OR REPLACE INTO template_live (name, language, data) "
                        "VALUES (?, ?, ?)",
                        (event.name, event.language, dumps(live_to_json(new))),
                    )
                    changed = True
            if changed:
                c.execute("UPDATE template_version SET version = version + 1 WHERE id = 1")
            return out

        return await self._ledger_call(op)

    async def template_view(self) -> TemplateView:
        def op(c: sqlite3.Connection) -> tuple[int, list[str]]:
            version = c.execute("SELECT version FROM template_version WHERE id = 1").fetchone()
            rows = c.execute("SELECT data FROM template_live ORDER BY name, language").fetchall()
            return int(version[0]), [r[0] for r in rows]

        version, rows = await self._ledger_call(op)
        variants = [live_from_json(json.loads(r)) for r in rows]
        return TemplateView(version, {(v.name, v.language): v for v in variants})

    async def template_version(self) -> int:
        def op(c: sqlite3.Connection) -> int:
            row = c.execute("SELECT version FROM template_version WHERE id = 1").fetchone()
            return int(row[0])

        return await self._ledger_call(op)

    async def add_pricing(self, statuses: Sequence[StatusUpdate], now: float) -> None:
        rows = [row for row in map(pricing_row, statuses) if row is not None]
        if not rows:
            return

        def op(c: sqlite3.Connection) -> None:
            c.executemany(
                "INSERT OR IGNORE INTO pricing (wamid, entry, user, ts, day, category, type, "
                "billable, pricing_model) VALUES (:wamid, :entry, :user, :ts, :day, :category, "
                ":type, :billable, :pricing_model)",
                rows,
            )

        await self._ledger_call(op)

    async def pricing_counts(self, since: float = 0.0) -> list[PricingCount]:
        def op(c: sqlite3.Connection) -> list[PricingCount]:
            rows = c.execute(
                "SELECT day, category, type, billable, COUNT(*) FROM pricing WHERE ts >= ? "
                "GROUP BY day, category, type, billable ORDER BY day, category, type, billable",
                (since,),
            ).fetchall()
            return [PricingCount(r[0], r[1], r[2], bool(r[3]), int(r[4])) for r in rows]

        return await self._ledger_call(op)

    # --- reminder jobs ------------------------------------------------------------------

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

    # --- read-only views for the console ----------------------------------------------------

    async def list_users(self, limit: int = 100) -> list[UserRecord]:
        def op(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT data FROM users WHERE data != '' ORDER BY "
                "json_extract(data, '$.last_inbound_at') DESC, key LIMIT ?",
                (limit,),
            ).fetchall()
            return [r[0] for r in rows]

        return [user_from_json(json.loads(d)) for d in await self._call(op)]

    async def inbox_of(self, user: str, limit: int = 100) -> list[InboxItem]:
        def op(c: sqlite3.Connection) -> list[tuple[str, str, str | None, float]]:
            rows = c.execute(
                "SELECT data, status, reason, received_at FROM (SELECT rowid, * FROM inbox "
                "WHERE user = ? ORDER BY rowid DESC LIMIT ?) ORDER BY rowid",
                (user, limit),
            ).fetchall()
            return [tuple(r) for r in rows]

        return [
            InboxItem(inbound_from_json(json.loads(data)), status, reason or "", received_at)
            for data, status, reason, received_at in await self._call(op)
        ]


def _resolve_aliases(
    c: sqlite3.Connection, identities: Sequence[Identity]
) -> tuple[Resolved, dict[str, str]]:
    """Resolve ``identities`` against the aliases table and record the new aliases.

    Runs inside the writer's ``BEGIN IMMEDIATE`` transaction: no other process can record
    an alias in between. Returns the aliases read too (for the cache).
    """
    ids = list(dict.fromkeys(alias for item in identities for alias in item.ids))
    known: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found = c.execute(f"SELECT id, user FROM aliases WHERE id IN ({marks})", chunk)
        known.update(found.fetchall())
    resolved = resolve_identities(identities, known)
    c.executemany("INSERT OR IGNORE INTO aliases (id, user) VALUES (?, ?)", resolved.new.items())
    return resolved, known


#: What :func:`_read_pending` reads: inbox (wamid, JSON), statuses and outbox rows (JSON).
_Rows = tuple[list[tuple[str, str]], list[str], list[str]]


def _claim(
    c: sqlite3.Connection, user: str, owner: str, token: str, until: float, now: float, limit: int
) -> tuple[str | None, _Rows] | None:
    """Take ``user``'s lease unless another owner holds it; their record and pending work."""
    row = c.execute(
        "SELECT data, lease_owner, lease_token, lease_until FROM users WHERE key = ?", (user,)
    ).fetchone()
    if row is None:
        c.execute(
            "INSERT INTO users (key, version, next_seq, data, lease_owner, lease_token,"
            " lease_until) VALUES (?, 0, 0, '', ?, ?, ?)",
            (user, owner, token, until),
        )
        return None, _read_pending(c, user, limit)
    data, held_by, held_token, held_until = row
    if held_token and held_by != owner and held_until >= now:
        return None
    c.execute(
        "UPDATE users SET lease_owner = ?, lease_token = ?, lease_until = ? WHERE key = ?",
        (owner, token, until, user),
    )
    return data or None, _read_pending(c, user, limit)


def _read_pending(c: sqlite3.Connection, user: str, limit: int) -> _Rows:
    """A user's pending inbox (arrival order), statuses and outbox (``seq`` order)."""
    inbox = c.execute(
        "SELECT wamid, data FROM inbox WHERE user = ? AND status = 'pending' "
        "ORDER BY ts, rowid LIMIT ?",
        (user, limit),
    ).fetchall()
    statuses = c.execute(
        "SELECT data FROM statuses WHERE user = ? AND applied = 0 "
        "ORDER BY ts, received_at, CASE status WHEN 'sent' THEN 0 "
        "WHEN 'delivered' THEN 1 WHEN 'read' THEN 2 ELSE 3 END LIMIT ?",
        (user, limit),
    ).fetchall()
    outbox = c.execute(
        "SELECT data FROM outbox WHERE user = ? AND status = 'pending' ORDER BY seq LIMIT ?",
        (user, limit),
    ).fetchall()
    return [(r[0], r[1]) for r in inbox], [r[0] for r in statuses], [r[0] for r in outbox]


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
    c.executemany(
        "INSERT INTO outbox (id, user, seq, status, next_attempt_at, wamid, data) "
        "VALUES (?, ?, ?, 'pending', ?, '', ?)",
        [(e.id, e.user, e.seq, e.next_attempt_at, dumps(outbox_to_json(e))) for e in entries],
    )
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


def _check_lease(c: sqlite3.Connection, lease: Lease) -> None:
    row = c.execute("SELECT lease_token FROM users WHERE key = ?", (lease.user,)).fetchone()
    if row is None or row[0] != lease.token:
        raise LeaseLost(f"user {lease.user}: the lease was taken over; write refused")


def _has_pending_outbox(c: sqlite3.Connection, user: str, now: float) -> bool:
    """Whether an older entry must go out first (a reminder not due yet does not count)."""
    return (
        c.execute(
            "SELECT 1 FROM outbox WHERE user = ? AND status = 'pending' AND (next_attempt_at <= ?"
            " OR json_extract(data, '$.attempts') > 0) LIMIT 1",
            (user, now),
        ).fetchone()
        is not None
    )


def _apply_status(c: sqlite3.Connection, status: StatusUpdate) -> bool:
    """Apply a new status item on the way in; whether it needs nothing more from a worker.

    Its callback data may name an entry whose attempt is in flight with no wamid recorded
    (the sender died or timed out before Meta's answer): the wamid is recorded, so the
    entry is never sent again. Delivery progress then moves the entry forward.
    """
    named = parse_callback_data(status.callback_data)
    if named is not None and status.status in DELIVERY_RANK:
        entry_id, attempt = named
        c.execute(
            "UPDATE outbox SET wamid = ?, status = ?, data = json_set(data, '$.wamid', ?, "
            "'$.status', ?, '$.inflight_at', 0) WHERE id = ? AND user = ? AND wamid = '' "
            "AND status = 'pending' AND json_extract(data, '$.inflight_at') > 0 "
            "AND json_extract(data, '$.attempts') = ?",
            (status.id, "sent", status.id, "sent", entry_id, status.recipient, attempt),
        )
    if status.status not in DELIVERY_RANK:
        return False
    lower = [s for s in DELIVERY_RANK if delivery_status(s, status.status) != s]
    marks = ",".join("?" * len(lower))
    c.execute(
        "UPDATE outbox SET status = ?, data = json_set(data, '$.status', ?) "
        f"WHERE wamid = ? AND wamid != '' AND status IN ({marks})",
        (status.status, status.status, status.id, *lower),
    )
    known = c.execute(
        "SELECT 1 FROM outbox WHERE wamid = ? AND wamid != ''", (status.id,)
    ).fetchone()
    return known is not None


_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS template_events (
    key TEXT PRIMARY KEY, received_at REAL NOT NULL, data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS template_live (
    name TEXT NOT NULL, language TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (name, language)
);
CREATE TABLE IF NOT EXISTS template_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL);
INSERT OR IGNORE INTO template_version (id, version) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS pricing (
    wamid TEXT PRIMARY KEY, entry TEXT NOT NULL, user TEXT NOT NULL, ts INTEGER NOT NULL,
    day TEXT NOT NULL, category TEXT NOT NULL, type TEXT NOT NULL, billable INTEGER NOT NULL,
    pricing_model TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pricing_ts ON pricing(ts);
"""


def _ledger_tables(c: sqlite3.Connection) -> None:
    """Create the live-view and pricing tables (statement by statement: ``executescript``
    would commit the writer's open batch)."""
    for statement in filter(str.strip, _LEDGER_SCHEMA.split(";")):
        c.execute(statement)


def _run(c: sqlite3.Connection, sql: str) -> None:
    """Run a statement and return nothing (an operation's result is data, never a cursor)."""
    c.execute(sql)


def _run_many(c: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Run a statement for each row (see ``_run``)."""
    c.executemany(sql, rows)


def _locked(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` is SQLITE_BUSY: another connection holds the write lock."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY
