"""The MongoDB store's per-user outbox: entries queued outside a turn, fenced sends and saves.

Also :func:`_turn`, the ``_turn`` a user document carries between a turn's steps, which the
turns in :mod:`bot.store._mongo_turns` write (the other helpers on the user document are in
:mod:`bot.store._mongo_core`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from bot.errors import LeaseLost
from bot.models import (
    OutboxEntry,
    Outgoing,
    StatusUpdate,
    parse_callback_data,
)
from bot.store._mongo_core import _NO_LEASE, Doc, _blank_user, _MongoCore, _token, _version_is
from bot.store.base import (
    Lease,
    delivery_fields,
    merge_saved,
    new_outbox_entries,
    outbox_from_json,
    outbox_to_json,
    user_to_json,
)


class _MongoOutbox(_MongoCore):
    """Outbox entries as documents of ``outbox``, fenced by a lease (see :mod:`bot.store.mongo`)."""

    # --- the outbox ---------------------------------------------------------------------

    async def enqueue(
        self, user: str, outgoing: Sequence[Outgoing], now: float, *, entry_id: str = ""
    ) -> list[OutboxEntry]:
        with self._translate("enqueue"):
            while True:  # each retry means another writer's turn succeeded
                current = await self._users.find_one({"_id": user})
                if current is not None:
                    await self._finish_turn(current)
                doc = await self._write_enqueued(user, current, outgoing, now, entry_id)
                if doc is not None:
                    break
            entries = [outbox_from_json(e) for e in doc["_turn"]["entries"]]
            await self._finish_turn(doc)
        return entries

    async def _write_enqueued(
        self,
        user: str,
        current: Doc | None,
        outgoing: Sequence[Outgoing],
        now: float,
        entry_id: str = "",
    ) -> Doc | None:
        """The turn of :meth:`enqueue` as one conditional write; ``None`` if it lost a race.

        Its entries are fenced by the lease held at that moment (the write is conditioned on
        it), so that lease's owner may send them and a later claim re-fences them.
        """
        seq = int((current or {}).get("next_seq", 0))
        held = (current or {}).get("lease") or {}
        new = new_outbox_entries(user, seq, outgoing, now)
        if entry_id:  # a job's entry: its id, so a second hand-over inserts nothing
            new = [replace(e, id=entry_id) for e in new]
        version = int((current or {}).get("version", 0)) + 1
        fields: Doc = {"version": version}
        if current is None or "key" not in current:  # the record is born here
            fields = user_to_json(_blank_user(user, version))
        fields["next_seq"] = seq + len(new)
        fields["_turn"] = _turn(now, None, "", new, held.get("token") or "")
        if current is None:
            try:
                await self._users.insert_one(
                    {"_id": user, **fields, "lease": dict(_NO_LEASE), "adopted": []}
                )
            except DuplicateKeyError:
                return None
            return {"_id": user, **fields}
        token = held.get("token", {"$exists": False})
        query = {"_id": user, "lease.token": token, **_version_is(current)}
        if (await self._users.update_one(query, {"$set": fields})).matched_count != 1:
            return None
        return {**current, **fields}

    async def begin_send(self, lease: Lease, entry: OutboxEntry, now: float) -> OutboxEntry | None:
        with self._translate("begin_send"):
            written, doc = await self._fenced(
                lease,
                entry.id,
                {"status": "pending", "wamid": ""},
                {
                    "$inc": {"attempts": 1},
                    "$set": {"inflight_at": now, "inflight_token": lease.token},
                },
            )
        if not written or doc is None:
            return None
        return replace(
            entry, attempts=int(doc["attempts"]), inflight_at=now, inflight_token=lease.token
        )

    async def save_outbox(self, lease: Lease, entry: OutboxEntry) -> None:
        # An entry's reply never changes once queued: only its delivery fields are written.
        fields = delivery_fields(entry)
        # Over another wamid the entry's own status is stored whatever the stored one is
        # (merge_saved); over the same wamid the stored status is read and merged. An
        # attempt in flight without its wamid is only written over none (a status may have
        # settled it meanwhile).
        match: Doc = {}
        if entry.wamid:
            match = {"wamid": {"$ne": entry.wamid}}
        elif entry.inflight_at:
            match = {"wamid": ""}
        status: str | None = entry.status
        with self._translate("save_outbox"):
            while status is not None:
                written, stored = await self._fenced(
                    lease, entry.id, match, {"$set": {**fields, "status": status}}
                )
                if written or stored is None:
                    return
                match = {"status": stored.get("status"), "wamid": stored.get("wamid")}
                status = merge_saved(str(match["status"]), str(match["wamid"]), entry)

    async def _fenced(
        self, lease: Lease, entry_id: str, match: Doc, update: Doc
    ) -> tuple[bool, Doc | None]:
        """Update the entry if the lease's token fences it and ``match`` holds.

        Returns ``(True, the entry after the update)``, or ``(False, the stored entry)`` when
        ``match`` does not hold (``None``: no such entry of the lease's user). An entry fenced
        by an earlier lease is adopted first (see the module docstring).

        Raises:
            LeaseLost: the lease no longer holds the user.
        """
        user, token = lease.user, lease.token
        while True:
            doc = await self._outbox.find_one_and_update(
                {"_id": entry_id, "user": user, "fence": token, **match},
                update,
                return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                return True, doc
            held, stored = await asyncio.gather(
                self._users.find_one({"_id": user}, {"lease": 1}),
                self._outbox.find_one({"_id": entry_id, "user": user}),
            )
            if _token(held) != token:
                raise LeaseLost(f"user {user}: the lease was taken over; write refused")
            if stored is None or not _matches(stored, match):
                return False, stored
            if stored.get("fence") == token:
                continue  # it changed in between: try again
            adopting = await self._users.update_one(
                {"_id": user, "lease.token": token}, {"$addToSet": {"adopted": entry_id}}
            )
            if adopting.matched_count != 1:
                raise LeaseLost(f"user {user}: the lease was taken over; write refused")
            await self._outbox.update_one(
                {"_id": entry_id, "user": user, "fence": stored.get("fence")},
                {"$set": {"fence": token}},
            )

    async def outbox_for_status(self, status: StatusUpdate) -> OutboxEntry | None:
        if not status.id:
            return None
        user = status.recipient
        with self._translate("outbox_for_status"):
            doc = await self._outbox.find_one({"user": user, "wamid": status.id})
            named = parse_callback_data(status.callback_data)
            if doc is None and named is not None:
                doc = await self._outbox.find_one({"_id": named[0], "user": user})
        return None if doc is None else outbox_from_json(doc)

    async def outbox_of(self, user: str, limit: int = 100) -> list[OutboxEntry]:
        with self._translate("outbox_of"):
            turn = await self._users.find_one({"_id": user, "_turn.at": {"$exists": True}})
            if turn is not None:  # a turn left by a crash: its entries first
                await self._finish_turn(turn)
            cursor = self._outbox.find({"user": user}).sort("seq", DESCENDING).limit(limit)
            docs = await cursor.to_list(None)
        return [outbox_from_json(doc) for doc in reversed(docs)]


def _turn(
    now: float, message_id: str | None, failed: str, entries: list[OutboxEntry], fence: str
) -> Doc:
    """The ``_turn`` a user document carries until its steps are done."""
    docs = [{"_id": e.id, **outbox_to_json(e), "fence": fence} for e in entries]
    return {"at": now, "message_id": message_id, "failed": failed, "entries": docs}


def _matches(doc: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    """Whether ``doc`` satisfies ``match`` (equality and ``$ne`` only)."""
    for field, want in match.items():
        if isinstance(want, dict):
            if doc.get(field) == want["$ne"]:
                return False
        elif doc.get(field) != want:
            return False
    return True
