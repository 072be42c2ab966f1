"""Reading and writing a store the way a test needs to, through the public protocol only."""

from __future__ import annotations

from collections.abc import Sequence

from bot.models import OutboxEntry, Outgoing, StatusUpdate, UserRecord
from bot.store.base import Committed, Store


async def pending_outbox(store: Store, user: str) -> list[OutboxEntry]:
    """The user's outbox entries still pending, in ``seq`` order."""
    return [e for e in await store.outbox_of(user) if e.status == "pending"]


async def pending_statuses(store: Store, user: str, now: float = 0.0) -> list[StatusUpdate]:
    """The user's status items not applied yet (claims the user for the read)."""
    work = await store.claim(user, "test-reader", now + 30, now)
    assert work is not None, f"user {user} is held by a worker"
    await store.release([work.lease])
    return list(work.statuses)


async def commit(
    store: Store,
    record: UserRecord,
    outgoing: Sequence[Outgoing] = (),
    now: float = 0.0,
    *,
    owner: str = "test-writer",
) -> Committed:
    """Store ``record`` (with ``record.version`` read) and queue ``outgoing``, as a worker does."""
    work = await store.claim(record.key, owner, now + 30, now)
    assert work is not None, f"user {record.key} is held by a worker"
    try:
        return await store.commit_turn(work.lease, None, record, outgoing, now)
    finally:
        await store.release([work.lease])
