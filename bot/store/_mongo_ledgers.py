"""The MongoDB store's template live view, pricing ledger and the console's read-only views."""

from __future__ import annotations

from collections.abc import Sequence

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
    # ``pricing`` (``_id`` = wamid: one row per message).

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
        with self._translate("pricing_counts"):
            await self._db["pricing"].create_index([("ts", ASCENDING)])  # idempotent, cheap
            rows = await (
                self._db["pricing"]
                .find({"ts": {"$gte": since}}, {"day": 1, "category": 1, "type": 1, "billable": 1})
                .to_list(None)
            )
        return count_pricing(rows)
