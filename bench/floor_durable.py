"""The durable floor: the floor plus the three writes windowbot's promise needs, and no more.

    python bench/floor_durable.py PORT

What ``bench/floor.py`` does, with each message written to a SQLite file before its 200 and
its reply recorded around the send, through windowbot's own group commit
(:class:`bot.store._sqlite_core.SQLiteCore`, ``synchronous=FULL``):

1. the webhook's messages are inserted (a duplicate wamid is ignored), then acknowledged;
2. the message is marked handled and its reply queued, in one write;
3. the echo is POSTed, and the answer's wamid is recorded.

No lease, no flow, no user record, no ordering, no retry: the least any implementation of
"acknowledged means answered once, across crashes" writes on this stack. ``bench_pipeline.py``
shows it beside the floor, so the cost of durability and the cost of the rest of the bot can
be told apart. Configured like ``bench/floor.py``, plus ``BOT_STORE_URL`` (``sqlite:///PATH``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from floor import Floor, serve

from bot.models import InboundMessage
from bot.store._sqlite_core import SQLiteCore

#: Tables of their own: the file also holds the store's schema (``SQLiteCore`` makes it).
_TABLES = """
CREATE TABLE IF NOT EXISTS floor_inbox (wamid TEXT PRIMARY KEY, user TEXT NOT NULL,
    status TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS floor_outbox (id TEXT PRIMARY KEY, user TEXT NOT NULL,
    status TEXT NOT NULL, wamid TEXT NOT NULL, data TEXT NOT NULL);
"""


class DurableFloor(Floor):
    """The floor, with the inbox and outbox writes of a bot that loses and repeats nothing."""

    def __init__(self, app_secret: str, messages_url: str, token: str, path: str) -> None:
        super().__init__(app_secret, messages_url, token)
        self.store = SQLiteCore(path)

    async def session_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.store.open()
        await self.store._call(lambda c: c.executescript(_TABLES))
        async for _ in super().session_ctx(app):
            yield
        await self.store.close()

    async def accept(self, messages: Sequence[InboundMessage]) -> None:
        """Store the messages (the 200 waits for the commit), then answer the new ones."""
        rows = [(m.id, m.wa_id, json.dumps(dict(m.raw))) for m in messages]
        fresh = await self.store._call(lambda c: [_insert(c, row) for row in rows])
        for message, new in zip(messages, fresh, strict=True):
            if new and message.type == "text":
                self.spawn(self.answer(message)).add_done_callback(_report)

    async def answer(self, message: InboundMessage) -> None:
        """Queue the echo with the message marked handled, send it, record its wamid."""
        entry = f"{message.id}:0"
        reply = json.dumps({"type": "text", "text": {"body": message.text}})

        def queue(c: sqlite3.Connection) -> None:
            c.execute("UPDATE floor_inbox SET status = 'done' WHERE wamid = ?", (message.id,))
            c.execute(
                "INSERT INTO floor_outbox (id, user, status, wamid, data) "
                "VALUES (?, ?, 'pending', '', ?)",
                (entry, message.wa_id, reply),
            )

        await self.store._call(queue)
        wamid = await self.send_echo(message.wa_id, message.text)
        await self.store._call(
            lambda c: c.execute(
                "UPDATE floor_outbox SET status = 'sent', wamid = ? WHERE id = ?", (wamid, entry)
            )
        )


def _report(task: asyncio.Task[Any]) -> None:
    """Print what an answer failed with (the bench keeps what the server printed)."""
    if not task.cancelled() and task.exception() is not None:
        print(f"durable floor: answer failed: {task.exception()!r}", file=sys.stderr)


def _insert(c: sqlite3.Connection, row: tuple[str, str, str]) -> bool:
    """Insert one inbox row; whether it was new."""
    return bool(
        c.execute(
            "INSERT OR IGNORE INTO floor_inbox (wamid, user, status, data) "
            "VALUES (?, ?, 'pending', ?)",
            row,
        ).rowcount
    )


if __name__ == "__main__":
    plain = Floor.from_env(os.environ)
    store = os.environ.get("BOT_STORE_URL", "sqlite:///durable-floor.db").removeprefix("sqlite:///")
    floor = DurableFloor(plain.app_secret, plain.messages_url, plain.token, store)
    serve(floor.app(), int(sys.argv[1]))
