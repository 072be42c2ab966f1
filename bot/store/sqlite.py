"""The embedded store: one SQLite file in WAL mode, with group commit.

The store is assembled from parts, one concern each: :mod:`bot.store._sqlite_core` (the file
and its group commit, explained there), :mod:`bot.store._sqlite_jobs` (reminder jobs, send
slots), :mod:`bot.store._sqlite_ledgers` (templates' live view, pricing, the console's
views) and :mod:`bot.store._sqlite_rows` (the per-user path's SQL). This module holds the
inbox, leases and turns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from bot.errors import LeaseLost, VersionConflict
from bot.models import (
    IdentityChange,
    InboundMessage,
    OutboxEntry,
    Outgoing,
    StatusUpdate,
    UserRecord,
    parse_callback_data,
)
from bot.store._sqlite_core import (
    _append,
    _check_lease,
    _insert_outbox,
    _run_many,
)
from bot.store._sqlite_jobs import SQLiteJobs, _purge_jobs
from bot.store._sqlite_ledgers import SQLiteLedgers, _purge_ledgers
from bot.store._sqlite_rows import (
    _PENDING_OUTBOX,
    _apply_status,
    _claim,
    _read_pending,
    _resolve_aliases,
    _Rows,
    _users_with_pending,
)
from bot.store.base import (
    Added,
    Committed,
    Identity,
    Lease,
    PreTurn,
    Resolved,
    Work,
    change_identity,
    dumps,
    filed,
    filed_status,
    inbound_to_json,
    merge_saved,
    message_identity,
    new_outbox_entries,
    outbox_from_json,
    outbox_to_json,
    report_conflicts,
    status_from_json,
    status_identity,
    status_to_json,
    user_from_json,
    user_to_json,
)

#: A turn's fence, version and sequence, and whether an older reply must go out first: one
#: statement (the backlog is only used when the turn queues replies).
_TURN_READ = (
    f"SELECT version, next_seq, lease_token, EXISTS ({_PENDING_OUTBOX}) FROM users WHERE key = ?"
)


#: Given the users a webhook's messages are filed under, which messages to insert as done.
Settle = Callable[[Sequence[str]], Collection[str]]

#: What a turn run before its message was stored needs to know, in one statement: the
#: record's version and sequence, the lease, and whether the user has anything pending.
_PRE_TURN_READ = (
    "SELECT version, next_seq, lease_owner, lease_token, lease_until,"
    " EXISTS (SELECT 1 FROM inbox WHERE user = ?1 AND status = 'pending'),"
    " EXISTS (SELECT 1 FROM statuses WHERE user = ?1 AND applied = 0),"
    " EXISTS (SELECT 1 FROM outbox WHERE user = ?1 AND status = 'pending')"
    " FROM users WHERE key = ?1"
)

#: The inbox row of a new message, pending (``?4`` is when it was received)...
_INSERT_PENDING = (
    "INSERT OR IGNORE INTO inbox (wamid, user, ts, status, received_at, data) "
    "VALUES (?1, ?2, ?3, 'pending', ?4, ?5)"
)
#: ... or handled by a turn committed in the same write.
_INSERT_DONE = (
    "INSERT OR IGNORE INTO inbox (wamid, user, ts, status, received_at, finished_at, data) "
    "VALUES (?1, ?2, ?3, 'done', ?4, ?4, ?5)"
)


def _pre_turn_base(c: sqlite3.Connection, lease: Lease, pre: PreTurn, now: float) -> int | None:
    """The user's next outbox ``seq`` if ``pre`` can be committed for ``lease``, before its
    message is inserted: the stored record has the version the turn read, no other owner
    holds the user, and nothing of theirs is pending."""
    row = c.execute(_PRE_TURN_READ, (lease.user,)).fetchone()
    if row is None:
        return None
    version, next_seq, held_by, held_token, held_until, inbox, statuses, outbox = row
    if version != pre.record.version or inbox or statuses or outbox:
        return None
    if held_token and held_by != lease.owner and held_until >= now:
        return None
    return int(next_seq)


def _commit_pre_turn(
    c: sqlite3.Connection, lease: Lease, pre: PreTurn, next_seq: int
) -> tuple[Committed, str]:
    """Claim ``lease.user`` and store ``pre`` as :meth:`SQLiteStore.commit_turn` would, with
    its replies in flight for ``lease`` (its message was inserted as done); the commit and
    the record's JSON."""
    stored = replace(pre.record, version=pre.record.version + 1)
    data = dumps(user_to_json(stored))
    entries = new_outbox_entries(lease.user, next_seq, pre.outgoing, pre.now, in_flight=lease.token)
    _insert_outbox(c, entries)
    c.execute(
        "UPDATE users SET version = ?, next_seq = ?, data = ?, lease_owner = ?,"
        " lease_token = ?, lease_until = ? WHERE key = ?",
        (
            stored.version,
            next_seq + len(entries),
            data,
            lease.owner,
            lease.token,
            lease.until,
            lease.user,
        ),
    )
    return Committed(stored, tuple(entries)), data


class SQLiteStore(SQLiteJobs, SQLiteLedgers):
    """The :class:`~bot.store.base.Store` on a local SQLite file.

    Args:
        path: the database file (created with its folder if missing).
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` (default) survives power loss,
            ``NORMAL`` survives a killed process only.
        max_batch: the most operations one commit may carry.
        busy_timeout: seconds a write waits for another process's lock on the file before
            it fails (the webhook then answers 503 and Meta retries).
    """

    # --- inbox and statuses -------------------------------------------------------------

    async def add_inbound(self, messages: Sequence[InboundMessage], now: float) -> Added:
        insert = self._insert(messages, now)
        added, learned = await self._call(insert)
        self._learn(*learned)
        return added

    def _insert(
        self, messages: Sequence[InboundMessage], now: float
    ) -> Callable[..., tuple[Added, tuple[dict[str, str], Resolved]]]:
        """The operation that inserts ``messages`` under their users' canonical keys.

        When this process has seen every id before (the usual case) the keys come from its
        cache and the rows are encoded (and remembered decoded for :meth:`_work`) here;
        otherwise the aliases are read and the new ones written inside the operation. It
        returns the flags and what to teach the cache once the write is committed.

        Its ``settle``, given the users the messages are filed under, names the messages to
        insert as done (their turns are committed in the same write).
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

        def op(
            c: sqlite3.Connection, settle: Settle | None = None
        ) -> tuple[Added, tuple[dict[str, str], Resolved]]:
            learned: tuple[dict[str, str], Resolved] = ({}, Resolved())
            if cached is None:
                resolved, known = _resolve_aliases(c, identities)
                users, todo, learned = resolved.users, rows(resolved.users), (known, resolved)
            else:
                users, todo = cached, ready
            done = settle(users) if settle is not None else ()
            out = []
            for row in todo:
                cur = c.execute(_INSERT_DONE if row[0] in done else _INSERT_PENDING, row)
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
        turns: Mapping[str, PreTurn] | None = None,
    ) -> tuple[Added, list[Work]]:
        insert = self._insert(messages, now)
        tokens = {user: self._token() for user in users}
        turns = turns or {}

        def op(c: sqlite3.Connection) -> tuple[Added, Any, list[Any], list[Any]]:
            ready: dict[str, int] = {}  # the users whose turn can be committed: next seq

            def settle(filed: Sequence[str]) -> set[str]:
                for message, user in zip(messages, filed, strict=True):
                    pre = turns.get(user)
                    if pre is None or pre.message_id != message.id or user not in tokens:
                        continue
                    lease = Lease(user, owner, tokens[user], until)
                    next_seq = _pre_turn_base(c, lease, pre, now)
                    if next_seq is not None:
                        ready[user] = next_seq
                return {turns[user].message_id for user in ready}

            fresh, learned = insert(c, settle if turns else None)
            filed_under = set(fresh.users)
            new = {m.id for m, is_new in zip(messages, fresh, strict=True) if is_new}
            claimed, handled = [], []
            for user, token in tokens.items():
                if user not in filed_under:  # its messages went to the user's canonical key
                    continue
                lease = Lease(user, owner, token, until)
                if user in ready and turns[user].message_id in new:
                    handled.append((lease, *_commit_pre_turn(c, lease, turns[user], ready[user])))
                    continue
                got = _claim(c, user, owner, token, until, now, limit)
                if got is not None:
                    claimed.append((lease, *got))
            return fresh, learned, claimed, handled

        fresh, learned, claimed, handled = await self._call(op)
        self._learn(*learned)
        works = [self._work(lease, data, rows) for lease, data, rows in claimed]
        for lease, committed, data in handled:
            self._decoded.remember_record(data, committed.record)
            works.append(Work(lease, committed.record, handled=committed))
        return fresh, works

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

    def known_record(self, user: str) -> UserRecord | None:
        return self._decoded.last_record(user)

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

    async def release(self, leases: Sequence[Lease]) -> set[str]:
        rows = [(lease.user, lease.token) for lease in leases]

        def op(c: sqlite3.Connection) -> set[str]:
            c.executemany(
                "UPDATE users SET lease_owner = '', lease_token = '', lease_until = 0 "
                "WHERE key = ? AND lease_token = ?",
                rows,
            )
            return _users_with_pending(c, [user for user, _ in rows])

        return await self._call(op) if rows else set()

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
            row = c.execute(_TURN_READ, (record.key, now, record.key)).fetchone()
            if row is None or row[2] != lease.token:
                raise LeaseLost(f"user {record.key}: the lease was taken over; turn not stored")
            current, next_seq = row[0], row[1]
            if current != read_version:
                raise VersionConflict(
                    f"user {record.key}: read version {read_version}, stored {current}"
                )
            backlog = bool(payloads) and bool(row[3])
            entries = new_outbox_entries(
                record.key,
                next_seq,
                payloads,
                now,
                in_flight=lease.token if start_sending and not backlog else "",
            )
            _insert_outbox(c, entries)
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
        # The stored JSON is written whole: an entry's reply never changes once queued, and
        # what a status webhook may have changed meanwhile is merged (merge_saved).
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
            if status is None:
                return
            saved = entry if status == entry.status else replace(entry, status=status)
            c.execute(
                "UPDATE outbox SET status = ?, next_attempt_at = ?, wamid = ?, data = ? "
                "WHERE id = ?",
                (
                    status,
                    entry.next_attempt_at,
                    entry.wamid,
                    dumps(outbox_to_json(saved)),
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
            # after the outbox: a job whose entry was just purged is over too
            return deleted + _purge_jobs(c, before, limit) + _purge_ledgers(c, before, limit)

        return await self._call(op)

    async def inbox_counts(self) -> dict[str, int]:
        def op(c: sqlite3.Connection) -> dict[str, int]:
            rows = c.execute("SELECT status, COUNT(*) FROM inbox GROUP BY status").fetchall()
            counts = {"pending": 0, "done": 0, "failed": 0}
            counts.update({r[0]: r[1] for r in rows})
            return counts

        return await self._call(op)
