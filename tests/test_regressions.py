"""Regression tests, each named for the bug it keeps fixed."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.models import Outgoing, StatusUpdate, UserRecord
from bot.store.sqlite import SQLiteStore
from bot.webhook import parse_status

REPLY = Outgoing(message={"type": "text", "text": {"body": "x", "preview_url": False}})


async def test_status_lookups_by_wamid_use_the_partial_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status webhooks once scanned the whole outbox: ``WHERE wamid = ?`` alone cannot use the
    partial index ``WHERE wamid != ''``, so every status cost a full table scan and the
    status-heavy benchmark fell to 160 messages/s. Every statement the store runs on the
    outbox by wamid must be index-backed."""
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    store = SQLiteStore(tmp_path / "bot.db")
    await store.open()
    work = await store.claim("1555", "w1", 30.0, 0.0)
    assert work is not None
    await store.commit_turn(work.lease, None, UserRecord(key="1555"), [REPLY], 0.0)
    item = {"id": "wamid.x", "status": "delivered", "timestamp": "1", "recipient_id": "1555"}
    await store.add_statuses([parse_status(item)], 0.0)
    await store.outbox_for_status(parse_status(item))
    await store.close()
    monkeypatch.undo()
    by_wamid = [s for s in statements if "FROM outbox WHERE wamid" in s or "outbox SET" in s]
    assert len(by_wamid) >= 3
    conn = sqlite3.connect(tmp_path / "bot.db")
    for statement in by_wamid:
        plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}"))
        assert "SCAN outbox" not in plan, (statement, plan)
    conn.close()


async def test_empty_wamid_never_finds_an_unsent_entry(tmp_path: Path) -> None:
    """A lookup by an empty wamid once returned some unsent entry (they all have wamid '')."""
    store = SQLiteStore(tmp_path / "bot.db")
    await store.open()
    work = await store.claim("1555", "w1", 30.0, 0.0)
    assert work is not None
    await store.commit_turn(work.lease, None, UserRecord(key="1555"), [REPLY], 0.0)
    empty = StatusUpdate(id="", status="sent", timestamp=1, recipient="1555")
    assert await store.outbox_for_status(empty) is None
    await store.close()
