"""The store contract for templates' live view and the pricing ledger, on every backend."""

from __future__ import annotations

from typing import Any

from bot.models import TemplateEvent, callback_data
from bot.store.base import PRICING_GRACE_SECONDS, PricingCount, Store
from bot.webhook import parse_status, parse_template_event
from tests.store.conftest import Backend

NOW = 1_764_000_100.0
DAY1 = 1_764_000_000  # 2025-11-24 UTC
DAY2 = DAY1 + 86_400


def status_event(event: str, time: int, language: str = "en_US", reason: str = "") -> TemplateEvent:
    """A message_template_status_update as the webhook parser builds it."""
    change = {
        "field": "message_template_status_update",
        "value": {
            "event": event,
            "message_template_id": 77,
            "message_template_name": "appointment_update",
            "message_template_language": language,
            "reason": reason or None,
            "message_template_category": "UTILITY",
        },
    }
    return parse_template_event(change, time, "change")


def category_event(time: int, *, notice: bool = False, at: int = 0) -> TemplateEvent:
    """A template_category_update: the completed UTILITY → MARKETING change, or its notice."""
    value: dict[str, Any] = {
        "message_template_id": 77,
        "message_template_name": "appointment_update",
        "message_template_language": "en_US",
    }
    if notice:
        value |= {"correct_category": "MARKETING", "new_category": "UTILITY"}
        value["category_update_timestamp"] = at
    else:
        value |= {"previous_category": "UTILITY", "new_category": "MARKETING"}
    return parse_template_event({"field": "template_category_update", "value": value}, time, "c")


class TestTemplateView:
    async def test_empty_view(self, store: Store) -> None:
        """A new store has version 0 and no variant."""
        view = await store.template_view()
        assert (view.version, dict(view.variants)) == (0, {})
        assert await store.template_version() == 0

    async def test_newest_status_wins_whatever_the_arrival_order(self, store: Store) -> None:
        """A PAUSED then a REINSTATED arriving in reverse order leaves it REINSTATED."""
        await store.add_template_events([status_event("REINSTATED", DAY1 + 10)], NOW)
        await store.add_template_events([status_event("PAUSED", DAY1, reason="LOW_QUALITY")], NOW)
        view = await store.template_view()
        live = view.variants[("appointment_update", "en_US")]
        assert (live.status, live.status_at, live.template_id) == ("REINSTATED", DAY1 + 10, "77")
        assert view.version == 1  # the stale PAUSED changed nothing

    async def test_duplicates_are_recognised_and_change_nothing(self, store: Store) -> None:
        """Meta redelivers: the same event is stored once and bumps the version once."""
        event = status_event("PAUSED", DAY1, reason="LOW_QUALITY")
        assert await store.add_template_events([event], NOW) == [True]
        assert await store.add_template_events([event], NOW) == [False]
        assert await store.template_version() == 1
        live = (await store.template_view()).variants[("appointment_update", "en_US")]
        assert (live.status, live.status_reason) == ("PAUSED", "LOW_QUALITY")

    async def test_old_events_are_purged_and_the_view_stays(self, store: Store) -> None:
        """Events past the retention are forgotten (a redelivery then counts again); the
        live view they built is kept."""
        event = status_event("PAUSED", DAY1, reason="LOW_QUALITY")
        assert await store.add_template_events([event], NOW) == [True]
        assert await store.purge(NOW + 1, 100) == 1
        live = (await store.template_view()).variants[("appointment_update", "en_US")]
        assert (live.status, live.status_reason) == ("PAUSED", "LOW_QUALITY")
        assert await store.add_template_events([event], NOW + 2) == [True]
        assert await store.purge(NOW + 1, 100) == 0  # received after the cut-off

    async def test_variants_are_kept_apart(self, store: Store) -> None:
        """Each language variant has its own state."""
        await store.add_template_events(
            [status_event("PAUSED", DAY1), status_event("APPROVED", DAY1, "pt_BR")], NOW
        )
        view = await store.template_view()
        assert view.variants[("appointment_update", "en_US")].status == "PAUSED"
        assert view.variants[("appointment_update", "pt_BR")].status == "APPROVED"

    async def test_notice_then_completed_category_change(self, store: Store) -> None:
        """A notice is kept beside the category; the completed change replaces it."""
        await store.add_template_events([category_event(DAY1, notice=True, at=DAY2)], NOW)
        live = (await store.template_view()).variants[("appointment_update", "en_US")]
        assert (live.category, live.notice_category, live.notice_effective_at) == (
            "",
            "MARKETING",
            DAY2,
        )
        await store.add_template_events([category_event(DAY2)], NOW)
        view = await store.template_view()
        live = view.variants[("appointment_update", "en_US")]
        assert (live.category, live.previous_category, live.notice_category) == (
            "MARKETING",
            "UTILITY",
            "",
        )
        assert view.version == 2

    async def test_view_survives_reopen(self, store: Store, backend: Backend) -> None:
        """What was stored is the view a new process starts from."""
        await store.add_template_events([status_event("DISABLED", DAY1)], NOW)
        await store.close()
        again = backend.make()
        await again.open()
        try:
            view = await again.template_view()
            assert view.variants[("appointment_update", "en_US")].status == "DISABLED"
            assert view.version == 1
        finally:
            await again.close()


def priced(wamid: str, status: str, ts: int, category: str, kind: str, billable: bool) -> Any:
    """A status item with Meta's ``pricing``, echoing the callback data of entry ``ana:0``."""
    item = {
        "id": wamid,
        "status": status,
        "timestamp": str(ts),
        "recipient_id": "5511999990000",
        "biz_opaque_callback_data": callback_data("5511999990000:0", 1),
        "pricing": {
            "billable": billable,
            "pricing_model": "PMP",
            "category": category,
            "type": kind,
        },
    }
    return parse_status(item, phone_number_id="1066")


class TestPricing:
    async def test_counts_by_day_category_type_once_per_message(self, store: Store) -> None:
        """sent and delivered of one message count once; days and kinds are apart."""
        await store.add_pricing(
            [
                priced("w1", "sent", DAY1, "utility", "regular", True),
                priced("w1", "delivered", DAY1 + 1, "utility", "regular", True),
                priced("w2", "sent", DAY1 + 5, "service", "free_customer_service", False),
                priced("w3", "sent", DAY2, "utility", "regular", True),
                parse_status({"id": "w4", "status": "sent", "timestamp": str(DAY2)}),
            ],
            NOW,
        )
        await store.add_pricing([priced("w3", "delivered", DAY2, "utility", "regular", True)], NOW)
        assert await store.pricing_counts() == [
            PricingCount("2025-11-24", "service", "free_customer_service", False, 1),
            PricingCount("2025-11-24", "utility", "regular", True, 1),
            PricingCount("2025-11-25", "utility", "regular", True, 1),
        ]
        assert await store.pricing_counts(since=DAY2) == [
            PricingCount("2025-11-25", "utility", "regular", True, 1)
        ]

    async def test_read_statuses_are_not_counted(self, store: Store) -> None:
        """A priced read (it may come weeks later) adds nothing: delivered counted it."""
        await store.add_pricing([priced("w9", "read", DAY1, "utility", "regular", True)], NOW)
        assert await store.pricing_counts() == []

    async def test_closed_days_are_rolled_up_and_the_counts_stay(self, store: Store) -> None:
        """The purge rolls closed days' rows into their counts; open days keep their rows,
        so a late status of one of their messages still counts once."""
        await store.add_pricing(
            [
                priced("w1", "sent", DAY1, "utility", "regular", True),
                priced("w2", "sent", DAY1 + 60, "utility", "regular", True),
                priced("w3", "sent", DAY1 + 120, "service", "free_customer_service", False),
                priced("w4", "sent", DAY2, "utility", "regular", True),
            ],
            NOW,
        )
        before = await store.pricing_counts()
        day2 = DAY2 - DAY2 % 86_400
        assert await store.purge(day2 + PRICING_GRACE_SECONDS, 100) == 3  # DAY1's rows
        assert await store.pricing_counts() == before
        assert await store.purge(day2 + PRICING_GRACE_SECONDS, 100) == 0
        await store.add_pricing([priced("w4", "delivered", DAY2, "utility", "regular", True)], NOW)
        assert await store.pricing_counts() == before
        assert await store.pricing_counts(since=DAY2) == [
            PricingCount("2025-11-25", "utility", "regular", True, 1)
        ]
        assert await store.purge(day2 + 86_400 + PRICING_GRACE_SECONDS, 100) == 1
        assert await store.pricing_counts() == before

    async def test_the_roll_up_keeps_the_counts_batch_by_batch(self, store: Store) -> None:
        """Purged a few rows at a time, two closed days end up counted exactly once."""
        earlier = DAY1 - 86_400
        await store.add_pricing(
            [priced(f"a{i}", "sent", earlier + i, "utility", "regular", True) for i in range(2)]
            + [priced(f"b{i}", "sent", DAY1 + i, "marketing", "regular", True) for i in range(3)],
            NOW,
        )
        before = await store.pricing_counts()
        assert [c.count for c in before] == [2, 3]
        cut = DAY2 - DAY2 % 86_400 + PRICING_GRACE_SECONDS
        purged = []
        while deleted := await store.purge(cut, 2):
            purged.append(deleted)
            assert await store.pricing_counts() == before
        assert sum(purged) == 5
        assert max(purged) == 2
