"""The embedded store: one SQLite file in WAL mode, written by one thread with group commit.

Every operation is a small function run on a dedicated thread that owns the connection.
The thread takes whatever operations are queued, runs each inside its own SAVEPOINT (so one
failing operation rolls back alone), commits them all with a single ``COMMIT`` and only then
resolves their futures. So a coroutine that returns has its data on disk (``synchronous=FULL``
fsyncs the WAL at every commit), and under load one fsync serves many webhooks: that is what
makes durable-before-ack cheap. Several processes may share the file: each batch runs in a
``BEGIN IMMEDIATE`` transaction and waits for the others through ``busy_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bot.errors import StoreUnavailable, VersionConflict
from bot.models import InboundMessage, OutboxEntry, Outgoing, StatusUpdate, UserRecord
from bot.store.base import (
    PROGRESS,
    Committed,
    dumps,
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
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox(user, ts, wamid) WHERE status = 'pending';
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
CREATE TABLE IF NOT EXISTS leases (user TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL);
"""

_STOP = object()


class SQLiteStore:
    """The :class:`~bot.store.base.Store` on a local SQLite file.

    Args:
        path: the database file (created with its folder if missing).
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` (default) survives power loss,
            ``NORMAL`` survives a killed process only.
        max_batch: the most operations one commit may carry.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", max_batch: int = 512):
        self.path = Path(path)
        self.description = f"sqlite:///{self.path}"
        self._synchronous = synchronous
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        if self._thread is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(
                f"cannot open the SQLite store {self.path}: {exc} "
                "(check that the folder exists and is writable)"
            ) from None
        self._thread = threading.Thread(
            target=self._serve, args=(conn,), name="windowbot-sqlite", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(_STOP)
        await asyncio.to_thread(thread.join)

    async def ping(self) -> None:
        await self._call(lambda c: c.execute("SELECT 1").fetchone())

    # --- the writer thread --------------------------------------------------------------

    async def _call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise StoreUnavailable(f"the SQLite store {self.path} is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((op, fut, loop))
        return await fut

    def _serve(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                batch = [item]
                stop = False
                while len(batch) < self._max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)
                self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        results: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, _, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((True, op(conn)))
                    conn.execute("RELEASE op")
                except Exception as exc:  # the caller gets it; the batch goes on
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = StoreUnavailable(f"SQLite store {self.path} failed: {exc}")
            results = [(False, error)] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, fut, loop), (ok, value) in zip(batch, results, strict=True):
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, items)

    # --- inbox and statuses -------------------------------------------------------------

    async def add_inbound(self, messages: Sequence[InboundMessage], now: float) -> list[bool]:
        rows = [(m.id, m.user, m.timestamp, now, dumps(inbound_to_json(m))) for m in messages]

        def op(c: sqlite3.Connection) -> list[bool]:
            out = []
            for row in rows:
                cur = c.execute(
                    "INSERT OR IGNORE INTO inbox (wamid, user, ts, status, received_at, data) "
                    "VALUES (?, ?, ?, 'pending', ?, ?)",
                    row,
                )
                out.append(cur.rowcount == 1)
            return out

        return await self._call(op)

    async def add_statuses(self, statuses: Sequence[StatusUpdate], now: float) -> list[bool]:
        rows = [
            (s.id, s.status, s.recipient, s.timestamp, now, dumps(status_to_json(s)))
            for s in statuses
        ]

        def op(c: sqlite3.Connection) -> list[bool]:
            out = []
            for row in rows:
                cur = c.execute(
                    "INSERT OR IGNORE INTO statuses (wamid, status, user, ts, received_at, data) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    row,
                )
                out.append(cur.rowcount == 1)
                wamid, name = row[0], row[1]
                if cur.rowcount == 1 and name in PROGRESS:
                    _apply_progress(c, wamid, name)
            return out

        return await self._call(op)

    # --- leases -------------------------------------------------------------------------

    async def acquire_user(self, user: str, owner: str, until: float, now: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT INTO leases (user, owner, until) VALUES (?, ?, ?) "
                "ON CONFLICT(user) DO UPDATE SET owner = excluded.owner, until = excluded.until "
                "WHERE leases.owner = excluded.owner OR leases.until < ?",
                (user, owner, until, now),
            )
            return cur.rowcount == 1

        return await self._call(op)

    async def release_user(self, user: str, owner: str) -> None:
        await self._call(
            lambda c: c.execute("DELETE FROM leases WHERE user = ? AND owner = ?", (user, owner))
        )

    async def users_with_work(self, now: float, limit: int) -> list[str]:
        def op(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT user FROM ("
                " SELECT DISTINCT user FROM inbox WHERE status = 'pending'"
                " UNION SELECT DISTINCT user FROM statuses WHERE applied = 0"
                " UNION SELECT DISTINCT user FROM outbox"
                "  WHERE status = 'pending' AND next_attempt_at <= ?"
                ") AS w WHERE NOT EXISTS"
                " (SELECT 1 FROM leases l WHERE l.user = w.user AND l.until >= ?) LIMIT ?",
                (now, now, limit),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._call(op)

    # --- per-user work ------------------------------------------------------------------

    async def get_user(self, user: str) -> UserRecord | None:
        def op(c: sqlite3.Connection) -> UserRecord | None:
            row = c.execute("SELECT data FROM users WHERE key = ?", (user,)).fetchone()
            return None if row is None else user_from_json(json.loads(row[0]))

        return await self._call(op)

    async def pending_inbound(self, user: str, limit: int) -> list[InboundMessage]:
        def op(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT data FROM inbox WHERE user = ? AND status = 'pending' "
                "ORDER BY ts, wamid LIMIT ?",
                (user, limit),
            ).fetchall()
            return [r[0] for r in rows]

        return [inbound_from_json(json.loads(d)) for d in await self._call(op)]

    async def commit_turn(
        self,
        message_id: str | None,
        record: UserRecord,
        outgoing: Sequence[Outgoing],
        now: float,
    ) -> Committed:
        read_version = record.version
        stored = user_from_json({**user_to_json(record), "version": read_version + 1})
        data = dumps(user_to_json(stored))
        payloads = list(outgoing)

        def op(c: sqlite3.Connection) -> Committed:
            row = c.execute(
                "SELECT version, next_seq FROM users WHERE key = ?", (record.key,)
            ).fetchone()
            current, next_seq = (0, 0) if row is None else (row[0], row[1])
            if current != read_version:
                raise VersionConflict(
                    f"user {record.key}: read version {read_version}, stored {current}"
                )
            backlog = (
                bool(payloads)
                and c.execute(
                    "SELECT 1 FROM outbox WHERE user = ? AND status = 'pending' LIMIT 1",
                    (record.key,),
                ).fetchone()
                is not None
            )
            entries = new_outbox_entries(record.key, next_seq, payloads, now)
            c.executemany(
                "INSERT INTO outbox (id, user, seq, status, next_attempt_at, wamid, data) "
                "VALUES (?, ?, ?, 'pending', ?, '', ?)",
                [
                    (e.id, e.user, e.seq, e.next_attempt_at, dumps(outbox_to_json(e)))
                    for e in entries
                ],
            )
            next_seq += len(entries)
            c.execute(
                "INSERT INTO users (key, version, next_seq, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET version = excluded.version, "
                "next_seq = excluded.next_seq, data = excluded.data",
                (record.key, stored.version, next_seq, data),
            )
            if message_id is not None:
                c.execute(
                    "UPDATE inbox SET status = 'done', finished_at = ? WHERE wamid = ?",
                    (now, message_id),
                )
            return Committed(stored, tuple(entries), backlog)

        return await self._call(op)

    async def fail_inbound(self, message_id: str, reason: str, now: float) -> None:
        await self._call(
            lambda c: c.execute(
                "UPDATE inbox SET status = 'failed', finished_at = ?, reason = ? WHERE wamid = ?",
                (now, reason, message_id),
            )
        )

    async def pending_statuses(self, user: str, limit: int) -> list[StatusUpdate]:
        def op(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT data FROM statuses WHERE user = ? AND applied = 0 "
                "ORDER BY ts, received_at, CASE status WHEN 'sent' THEN 0 "
                "WHEN 'delivered' THEN 1 WHEN 'read' THEN 2 ELSE 3 END LIMIT ?",
                (user, limit),
            ).fetchall()
            return [r[0] for r in rows]

        return [status_from_json(json.loads(d)) for d in await self._call(op)]

    async def finish_statuses(self, keys: Sequence[tuple[str, str]]) -> None:
        rows = list(keys)
        await self._call(
            lambda c: c.executemany(
                "UPDATE statuses SET applied = 1 WHERE wamid = ? AND status = ?", rows
            )
        )

    async def pending_outbox(self, user: str, limit: int) -> list[OutboxEntry]:
        def op(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT data FROM outbox WHERE user = ? AND status = 'pending' "
                "ORDER BY seq LIMIT ?",
                (user, limit),
            ).fetchall()
            return [r[0] for r in rows]

        return [outbox_from_json(json.loads(d)) for d in await self._call(op)]

    async def outbox_by_wamid(self, wamid: str) -> OutboxEntry | None:
        if not wamid:
            return None

        def op(c: sqlite3.Connection) -> str | None:
            row = c.execute(  # the condition lets SQLite use the partial index
                "SELECT data FROM outbox WHERE wamid = ? AND wamid != ''", (wamid,)
            ).fetchone()
            return None if row is None else str(row[0])

        data = await self._call(op)
        return None if data is None else outbox_from_json(json.loads(data))

    async def save_outbox(self, entry: OutboxEntry) -> None:
        # An entry's reply never changes once queued: only its delivery fields are written,
        # so the (large) message body is not encoded again for every send.
        row = (
            entry.status,
            entry.next_attempt_at,
            entry.wamid,
            entry.status,
            entry.attempts,
            entry.next_attempt_at,
            entry.wamid,
            entry.sent_as,
            entry.reason,
            entry.error_code,
            entry.fallback_sent,
            entry.id,
        )
        await self._call(
            lambda c: c.execute(
                "UPDATE outbox SET status = ?, next_attempt_at = ?, wamid = ?, data = json_set("
                "data, '$.status', ?, '$.attempts', ?, '$.next_attempt_at', ?, '$.wamid', ?, "
                "'$.sent_as', ?, '$.reason', ?, '$.error_code', ?, '$.fallback_sent', ?) "
                "WHERE id = ?",
                row,
            )
        )

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


def _apply_progress(c: sqlite3.Connection, wamid: str, name: str) -> None:
    """Move the outbox entry ``wamid`` names forward to ``name``; mark the status applied."""
    lower = PROGRESS[name]
    marks = ",".join("?" * len(lower))
    c.execute(
        "UPDATE outbox SET status = ?, data = json_set(data, '$.status', ?) "
        f"WHERE wamid = ? AND wamid != '' AND status IN ({marks})",
        (name, name, wamid, *lower),
    )
    known = c.execute("SELECT 1 FROM outbox WHERE wamid = ? AND wamid != ''", (wamid,)).fetchone()
    if known:
        c.execute("UPDATE statuses SET applied = 1 WHERE wamid = ? AND status = ?", (wamid, name))


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
