"""The SQLite store's ledgers (templates' live view, pricing) and the console's views."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from bot.models import (
    StatusUpdate,
    TemplateEvent,
    UserRecord,
)
from bot.store._sqlite_core import (
    SQLiteCore,
    T,
)
from bot.store.base import (
    InboxItem,
    PricingCount,
    TemplateView,
    apply_template_event,
    dumps,
    inbound_from_json,
    live_from_json,
    live_to_json,
    pricing_closed_before,
    pricing_day,
    pricing_row,
    user_from_json,
)

#: The oldest ``?`` ledger rows of days closed before ``?``, in a stable order.
_CLOSED_ROWS = "SELECT rowid FROM pricing WHERE ts < ? ORDER BY ts, rowid LIMIT ?"


def _purge_ledgers(c: sqlite3.Connection, before: float, limit: int) -> int:
    """The ledgers' part of the purge: old template events, and closed days' pricing rows."""
    _ledger_tables(c)
    return _purge_events(c, before, limit) + _purge_pricing(c, before, limit)


def _purge_pricing(c: sqlite3.Connection, before: float, limit: int) -> int:
    """Roll up to ``limit`` ledger rows of closed days into their days' counts, and delete
    them, in the one transaction (see :func:`pricing_closed_before`)."""
    closed = (pricing_closed_before(before), limit)
    c.execute(
        "INSERT INTO pricing_days (day, category, type, billable, count) "
        "SELECT day, category, type, billable, COUNT(*) FROM pricing "
        f"WHERE rowid IN ({_CLOSED_ROWS}) GROUP BY day, category, type, billable "
        "ON CONFLICT (day, category, type, billable) DO UPDATE SET count = count + excluded.count",
        closed,
    )
    return c.execute(f"DELETE FROM pricing WHERE rowid IN ({_CLOSED_ROWS})", closed).rowcount


class SQLiteLedgers(SQLiteCore):
    """Template events, pricing rows, and the read-only views the console shows."""

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
            rows = c.execute(  # the rows kept, and the counts of the days rolled up
                "SELECT day, category, type, billable, SUM(n) FROM ("
                "SELECT day, category, type, billable, COUNT(*) AS n FROM pricing WHERE ts >= ? "
                "GROUP BY day, category, type, billable UNION ALL "
                "SELECT day, category, type, billable, count FROM pricing_days WHERE day >= ?) "
                "GROUP BY day, category, type, billable ORDER BY day, category, type, billable",
                (since, pricing_day(since)),
            ).fetchall()
            return [PricingCount(r[0], r[1], r[2], bool(r[3]), int(r[4])) for r in rows]

        return await self._ledger_call(op)

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


_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS template_events (
    key TEXT PRIMARY KEY, received_at REAL NOT NULL, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS template_events_at ON template_events(received_at);
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
-- closed days, rolled up: their counts, once their rows are purged
CREATE TABLE IF NOT EXISTS pricing_days (
    day TEXT NOT NULL, category TEXT NOT NULL, type TEXT NOT NULL, billable INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (day, category, type, billable)
) WITHOUT ROWID;
"""


def _ledger_tables(c: sqlite3.Connection) -> None:
    """Create the live-view and pricing tables (statement by statement: ``executescript``
    would commit the writer's open batch)."""
    for statement in filter(str.strip, _LEDGER_SCHEMA.split(";")):
        c.execute(statement)


def _purge_events(c: sqlite3.Connection, before: float, limit: int) -> int:
    """Delete up to ``limit`` template events received before ``before``.

    They are kept only to recognise Meta's redeliveries (which stop after days, well within
    the retention); the live view they built stays.
    """
    return c.execute(
        "DELETE FROM template_events WHERE rowid IN (SELECT rowid FROM template_events "
        "WHERE received_at < ? LIMIT ?)",
        (before, limit),
    ).rowcount
