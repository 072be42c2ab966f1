"""The MongoDB store's turns: the user document as the commit point, then the turn's steps.

Step 1 writes the record and a ``_turn`` in one fenced, version-checked update; steps 2-4
(:meth:`_MongoTurns._finish_turn`) insert the outbox documents, mark the message and remove
``_turn``, and any reader repeats them after a crash (see :mod:`bot.store.mongo`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

from bot.errors import LeaseLost, VersionConflict
from bot.models import Outgoing, UserRecord
from bot.store._mongo_core import Doc, _MongoCore, _token, _version_is
from bot.store._mongo_outbox import _turn
from bot.store.base import (
    Committed,
    Lease,
    new_outbox_entries,
    outbox_from_json,
    user_from_json,
    user_to_json,
)


class _MongoTurns(_MongoCore):
    """A turn's write of the user document and the steps it records (see :mod:`bot.store.mongo`)."""

    # --- turns --------------------------------------------------------------------------

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
        with self._translate("commit_turn"):
            doc, backlog = await self._write_turn(
                lease, message_id, record, outgoing, now, failed=failed, sending=start_sending
            )
            entries = tuple(outbox_from_json(e) for e in doc["_turn"]["entries"])
            await self._finish_turn(doc)
        return Committed(user_from_json(doc), entries, backlog)

    async def _write_turn(
        self,
        lease: Lease,
        message_id: str | None,
        record: UserRecord,
        outgoing: Sequence[Outgoing],
        now: float,
        *,
        failed: str = "",
        sending: bool = False,
    ) -> tuple[Doc, bool]:
        """Step 1: the fenced, version-checked write of the user document, carrying the turn.

        Returns the user document as written (``_turn`` included) and the backlog flag.
        """
        key, read = record.key, record.version
        current, older = await asyncio.gather(
            self._users.find_one({"_id": key}),
            self._outbox.find_one(  # an older entry goes first; a reminder not due does not
                {
                    "user": key,
                    "status": "pending",
                    "$or": [{"next_attempt_at": {"$lte": now}}, {"attempts": {"$gt": 0}}],
                },
                {"_id": 1},
            )
            if outgoing
            else _none(),
        )
        current = _checked(current, lease, read)
        left = (current.get("_turn") or {}).get("entries")  # pending too, once finished
        await self._finish_turn(current)  # the write below replaces the previous ``_turn``
        backlog = bool(outgoing) and (older is not None or bool(left))
        seq = int(current.get("next_seq", 0))
        new = new_outbox_entries(
            key, seq, outgoing, now, in_flight=lease.token if sending and not backlog else ""
        )
        turn = _turn(now, message_id, failed, new, lease.token)
        fields: Doc = {
            **user_to_json(record),
            "version": read + 1,
            "next_seq": seq + len(new),
            "_turn": turn,
        }
        result = await self._users.update_one(
            {"_id": key, "lease.token": lease.token, **_version_is(current)}, {"$set": fields}
        )
        if result.matched_count != 1:
            _checked(await self._users.find_one({"_id": key}), lease, read)
            raise VersionConflict(f"user {key}: version {read} was overwritten meanwhile")
        return {**current, **fields}, backlog

    async def _finish_turn(self, doc: Doc) -> None:
        """Steps 2-4: apply what the user document's ``_turn`` (if any) recorded; idempotent."""
        turn = doc.pop("_turn", None)
        if turn is None:
            return
        steps: list[Awaitable[Any]] = [
            self._insert_new(self._outbox, list(turn.get("entries") or []))
        ]
        if turn.get("message_id") is not None:
            reason = turn.get("failed") or ""
            mark = {
                "status": "failed" if reason else "done",
                "finished_at": turn["at"],
                "reason": reason or None,
            }
            steps.append(
                self._inbox.update_one(
                    {"_id": turn["message_id"], "user": doc["_id"]}, {"$set": mark}
                )
            )
        await asyncio.gather(*steps)
        await self._users.update_one(
            {"_id": doc["_id"], "version": doc["version"]}, {"$unset": {"_turn": ""}}
        )


def _checked(doc: Doc | None, lease: Lease, read: int) -> Doc:
    """``doc``, if a turn that read version ``read`` may be written over it under ``lease``.

    Raises:
        LeaseLost: the lease no longer holds the user (checked first).
        VersionConflict: the stored version is not ``read``.
    """
    if doc is None or _token(doc) != lease.token:
        raise LeaseLost(f"user {lease.user}: the lease was taken over; turn not stored")
    stored = int(doc.get("version", 0))
    if stored != read:
        raise VersionConflict(f"user {lease.user}: read version {read}, stored {stored}")
    return doc


async def _none() -> None:
    return None
