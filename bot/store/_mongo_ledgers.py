"""The MongoDB store's template live view, pricing ledger and the console's read-only views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import DuplicateKeyError

from bot.models import (
    StatusUpdate,
    TemplateEvent,
    UserRecord,
)
from bot.store._mongo_core import _MongoCore
from bot.store.base import (
    InboxItem,
    PricingCount,
    TemplateView,
    apply_template_event,
    count_pricing,
    inbound_from_json,
    live_from_json,
    live_to_json,
    pricing_closed_before,
    pricing_day,
    pricing_row,
    user_from_json,
)


class _MongoLedgers(_MongoCore):
    """Templates' events and live view, the pricing ledger, and what the console lists."""

    # --- read-only views for the console ----------------------------------------------------

    async def list_users(self, limit: int = 100) -> list[UserRecord]:
        with self._translate("list_users"):
            cursor = self._users.find({"key": {"$exists": True}}).sort(
                [("last_inbound_at", DESCENDING), ("_id", ASCENDING)]
            )
            docs = await cursor.limit(limit).to_list(None)
        return [user_from_json(doc) for doc in docs]

    async def inbox_of(self, user: str, limit: int = 100) -> list[InboxItem]:
        with self._translate("inbox_of"):
            cursor = self._inbox.find({"user": user}).sort("arrival", DESCENDING).limit(limit)
            docs = await cursor.to_list(None)
        return [
            InboxItem(
                inbound_from_json(doc["data"]),
                str(doc.get("status", "pending")),
                str(doc.get("reason") or ""),
                float(doc.get("received_at", 0.0)),
            )
            for doc in reversed(docs)
        ]

    # --- templates' live view and the pricing ledger ------------------------------------
    # Collections: ``template_events`` (``_id`` = the event's key: a redelivery is a
    # duplicate), ``template_live`` (``_id`` = "name:language", the variant's state and a
    # ``rev`` for compare-and-set), ``template_version`` (one document, ``version``), and
    # ``pricing`` (``_id`` = wamid: one row per message) and ``pricing_days`` (``_id`` = a
    # closed day, ``counts``: that day's rows rolled up, written once before they go).

    async def _purge_events(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` template events received before ``before`` (kept only to
        recognise Meta's redeliveries; the live view they built stays)."""
        old = {"received_at": {"$lt": before}}
        return await self._delete_some(self._db["template_events"], old, limit)

    async def add_template_events(self, events: Sequence[TemplateEvent], now: float) -> list[bool]:
        docs = [
            {"_id": e.key, "received_at": now, "time": e.time, "raw": dict(e.raw)} for e in events
        ]
        with self._translate("add_template_events"):
            fresh = await self._insert_new(self._db["template_events"], docs)
            changed = False
            for event, new in zip(events, fresh, strict=True):
                if new:
                    changed = await self._apply_template_event(event) or changed
            if changed:
                await self._db["template_version"].update_one(
                    {"_id": "templates"}, {"$inc": {"version": 1}}, upsert=True
                )
        return fresh

    async def _apply_template_event(self, event: TemplateEvent) -> bool:
        """Compare-and-set the variant's document until the event is applied (or is stale)."""
        live = self._db["template_live"]
        key = f"{event.name}:{event.language}"
        while True:
            doc = await live.find_one({"_id": key})
            current = live_from_json(doc["state"]) if doc else None
            new = apply_template_event(current, event)
            if new is None:
                return False
            state = {"state": live_to_json(new)}
            if doc is None:
                try:
                    await live.insert_one({"_id": key, "rev": 1, **state})
                    return True
                except DuplicateKeyError:
                    continue  # another process wrote it first: apply on top of that
            done = await live.update_one(
                {"_id": key, "rev": doc["rev"]}, {"$set": {**state, "rev": doc["rev"] + 1}}
            )
            if done.matched_count:
                return True

    async def template_view(self) -> TemplateView:
        with self._translate("template_view"):
            version = await self.template_version()
            docs = await self._db["template_live"].find({}).to_list(None)
        variants = [live_from_json(doc["state"]) for doc in docs]
        return TemplateView(version, {(v.name, v.language): v for v in variants})

    async def template_version(self) -> int:
        with self._translate("template_version"):
            doc = await self._db["template_version"].find_one({"_id": "templates"})
        return int(doc["version"]) if doc else 0

    async def add_pricing(self, statuses: Sequence[StatusUpdate], now: float) -> None:
        rows = [row for row in map(pricing_row, statuses) if row is not None]
        docs = [{"_id": row.pop("wamid"), **row} for row in rows]
        with self._translate("add_pricing"):
            await self._insert_new(self._db["pricing"], docs)

    async def pricing_counts(self, since: float = 0.0) -> list[PricingCount]:
        # Rows first, then the rolled-up days, leaving out the rows of a day whose counts
        # exist (a purge may be deleting them): a day rolled up in between is counted once.
        with self._translate("pricing_counts"):
            rows = await self._db["pricing"].find({"ts": {"$gte": since}}, _COUNTED).to_list(None)
            days = self._db["pricing_days"].find({"_id": {"$gte": pricing_day(since)}})
            rolled = {doc["_id"]: doc["counts"] for doc in await days.to_list(None)}
        kept = [row for row in rows if row["day"] not in rolled]
        counts = [_count_from_json(day, c) for day, cs in rolled.items() for c in cs]
        return count_pricing(kept, counts)

    async def _purge_pricing(self, before: float, limit: int) -> int:
        """Roll up the ledger rows of closed days, a whole day at a time, then delete up to
        ``limit`` of them (see :func:`pricing_closed_before`).

        Without a transaction, a day is counted once: its counts are inserted (a duplicate
        ``_id`` means another pass already counted it) before any of its rows is deleted,
        and a day whose counts exist is not counted again. No new row can join a closed day.
        """
        pricing, closed = self._db["pricing"], pricing_closed_before(before)
        deleted = 0
        while deleted < limit:
            oldest = pricing.find({"ts": {"$lt": closed}}, {"ts": 1}).sort("ts").limit(1)
            found = await oldest.to_list(None)
            if not found:
                break
            start = found[0]["ts"] - found[0]["ts"] % 86400
            day, rows = pricing_day(start), {"ts": {"$gte": start, "$lt": start + 86400}}
            if await self._db["pricing_days"].find_one({"_id": day}) is None:
                counted = count_pricing(await pricing.find(rows, _COUNTED).to_list(None))
                counts = [_count_to_json(c) for c in counted]
                await self._insert_new(self._db["pricing_days"], [{"_id": day, "counts": counts}])
            gone = await self._delete_some(pricing, rows, limit - deleted)
            if not gone:
                break  # another process deleted them meanwhile: the next pass goes on
            deleted += gone
        return deleted


#: The fields of a ledger row that it is counted by.
_COUNTED = {"day": 1, "category": 1, "type": 1, "billable": 1}


def _count_to_json(count: PricingCount) -> dict[str, object]:
    """A day's count as stored in its ``pricing_days`` document (the day is its ``_id``)."""
    return {k: v for k, v in asdict(count).items() if k != "day"}


def _count_from_json(day: str, data: dict[str, Any]) -> PricingCount:
    return PricingCount(
        day, str(data["category"]), str(data["type"]), bool(data["billable"]), int(data["count"])
    )
