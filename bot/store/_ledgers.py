"""Templates' live view and the pricing ledger: the values and pure rules the backends share.

:func:`apply_template_event` decides what a template webhook changes in the live view;
:func:`pricing_row` and :func:`count_pricing` make and count the pricing ledger's rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from bot.models import StatusUpdate, TemplateEvent, parse_callback_data


@dataclass(frozen=True, slots=True)
class LiveVariant:
    """What Meta last said about one template variant (``""``/0: nothing said yet).

    Attributes:
        status, status_reason, status_at: the newest status event, its reason, its time.
        category, previous_category, category_at: the newest completed category change
            (or the category a status event carried), and when.
        notice_category, notice_effective_at, notice_at: the latest advance notice that
            the category will change, and to what.
    """

    name: str
    language: str
    template_id: str = ""
    status: str = ""
    status_reason: str = ""
    status_at: int = 0
    category: str = ""
    previous_category: str = ""
    category_at: int = 0
    notice_category: str = ""
    notice_effective_at: int = 0
    notice_at: int = 0


@dataclass(frozen=True, slots=True)
class TemplateView:
    """Every variant's live state, by (name, language), and the view's version."""

    version: int
    variants: Mapping[tuple[str, str], LiveVariant]


@dataclass(frozen=True, slots=True)
class PricingCount:
    """How many messages Meta priced one way on one UTC day (``day`` is ``YYYY-MM-DD``)."""

    day: str
    category: str
    type: str
    billable: bool
    count: int


def apply_template_event(current: LiveVariant | None, event: TemplateEvent) -> LiveVariant | None:
    """The variant's live state after ``event``; ``None`` when the event changes nothing."""
    old = current or LiveVariant(event.name, event.language)
    new = replace(old, template_id=event.template_id or old.template_id)
    if event.kind == "status":
        if event.time >= old.status_at:
            new = replace(new, status=event.status, status_reason=event.reason)
            new = replace(new, status_at=event.time)
        if event.category and event.time >= old.category_at:
            new = replace(new, category=event.category, category_at=event.time)
    elif event.notice:
        if event.time >= old.notice_at:
            new = replace(
                new,
                notice_category=event.correct_category,
                notice_effective_at=event.effective_at,
                notice_at=event.time,
            )
    elif event.time >= old.category_at:
        new = replace(new, category=event.category, category_at=event.time)
        new = replace(new, previous_category=event.previous_category)
        if new.notice_category and new.notice_category == event.category:
            new = replace(new, notice_category="", notice_effective_at=0)  # it happened
    return None if new == current else new


def live_to_json(variant: LiveVariant) -> dict[str, Any]:
    """A :class:`LiveVariant` as plain JSON data."""
    return {f: getattr(variant, f) for f in LiveVariant.__dataclass_fields__}


def live_from_json(data: Mapping[str, Any]) -> LiveVariant:
    """The inverse of :func:`live_to_json` (unknown fields ignored)."""
    return LiveVariant(**{f: data[f] for f in LiveVariant.__dataclass_fields__ if f in data})


def pricing_row(status: StatusUpdate) -> dict[str, Any] | None:
    """The ledger row of a status carrying ``pricing``, ``None`` for one without."""
    if status.pricing is None:
        return None
    named = parse_callback_data(status.callback_data)
    return {
        "wamid": status.id,
        "entry": named[0] if named else "",
        "user": status.recipient,
        "ts": status.timestamp,
        "day": datetime.fromtimestamp(status.timestamp, UTC).strftime("%Y-%m-%d"),
        "category": status.pricing.category,
        "type": status.pricing.type,
        "billable": status.pricing.billable,
        "pricing_model": status.pricing.pricing_model,
    }


def count_pricing(rows: Sequence[Mapping[str, Any]]) -> list[PricingCount]:
    """Group ledger rows into :class:`PricingCount` items, oldest day first."""
    counts: dict[tuple[str, str, str, bool], int] = {}
    for row in rows:
        key = (str(row["day"]), str(row["category"]), str(row["type"]), bool(row["billable"]))
        counts[key] = counts.get(key, 0) + 1
    return [PricingCount(*key, count=n) for key, n in sorted(counts.items())]
