"""The SQL of the per-user path: aliases, claims, pending work, statuses on the way in."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bot.models import (
    DELIVERY_RANK,
    StatusUpdate,
    delivery_status,
    parse_callback_data,
)
from bot.store.base import (
    Identity,
    Resolved,
    resolve_identities,
)


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


def _users_with_pending(c: sqlite3.Connection, users: Sequence[str]) -> set[str]:
    """Which of ``users`` have pending inbox messages or unapplied status items."""
    found: set[str] = set()
    for start in range(0, len(users), 400):
        chunk = users[start : start + 400]
        marks = ",".join("?" * len(chunk))
        rows = c.execute(
            f"SELECT user FROM inbox WHERE status = 'pending' AND user IN ({marks}) UNION "
            f"SELECT user FROM statuses WHERE applied = 0 AND user IN ({marks})",
            [*chunk, *chunk],
        ).fetchall()
        found.update(row[0] for row in rows)
    return found


#: Whether an older entry of user ``?`` must go out before a new one, at time ``?``: one is
#: pending and due, or has been tried (a reminder not due yet does not count).
_PENDING_OUTBOX = (
    "SELECT 1 FROM outbox WHERE user = ? AND status = 'pending' AND (next_attempt_at <= ?"
    " OR json_extract(data, '$.attempts') > 0)"
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
