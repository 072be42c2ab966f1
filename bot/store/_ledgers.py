"""Templates' live view and the pricing ledger: the values and pure rules the backends share.

:func:`apply_template_event` decides what a template webhook changes in the live view;
:func:`pricing_row` and :func:`count_pricing` make and count the pricing ledger's rows;
:func:`pricing_closed_before` says from when on its old days are rolled up into counts.
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


#: How long after a message's first priced status another priced status of it can still
#: reach us: WhatsApp drops a message it could not deliver within 30 days, and Meta
#: redelivers a webhook for up to 7 days; a day more for clocks. A ledger row is kept for
#: that long beyond the retention before it is rolled up into its day's counts.
PRICING_GRACE_SECONDS = 38 * 86400


def pricing_row(status: StatusUpdate) -> dict[str, Any] | None:
    """The ledger row of a status carrying ``pricing``, ``None`` for one without.

    A message counts once, by its wamid, from its first priced ``sent``, ``delivered`` or
    ``failed`` status. A ``read`` status is not counted: it always follows ``delivered``,
    which was counted, and it may come any time later (after its message's row was rolled
    up: see :func:`pricing_closed_before`), where it would count the message again.
    """
    if status.pricing is None or status.status == "read":
        return None
    named = parse_callback_data(status.callback_data)
    return {
        "wamid": status.id,
        "entry": named[0] if named else "",
        "user": status.recipient,
        "ts": status.timestamp,
        "day": pricing_day(status.timestamp),
        "category": status.pricing.category,
        "type": status.pricing.type,
        "billable": status.pricing.billable,
        "pricing_model": status.pricing.pricing_model,
    }


def count_pricing(
    rows: Sequence[Mapping[str, Any]], rolled: Sequence[PricingCount] = ()
) -> list[PricingCount]:
    """Group ledger rows into :class:`PricingCount` items, oldest day first, adding the
    counts of days already ``rolled`` up."""
    counts: dict[tuple[str, str, str, bool], int] = {}
    for row in rows:
        key = (str(row["day"]), str(row["category"]), str(row["type"]), bool(row["billable"]))
        counts[key] = counts.get(key, 0) + 1
    for c in rolled:
        key = (c.day, c.category, c.type, c.billable)
        counts[key] = counts.get(key, 0) + c.count
    return [PricingCount(*key, count=n) for key, n in sorted(counts.items())]


def pricing_closed_before(before: float) -> float:
    """The start of the first UTC day whose ledger rows stay, when the store's retention
    starts at ``before``: every day before it is closed, and its rows are rolled up.

    Closed means no priced status of its messages can still arrive
    (:data:`PRICING_GRACE_SECONDS` past the retention), so rolling it up never lets a
    message count twice.
    """
    cut = before - PRICING_GRACE_SECONDS
    return cut - cut % 86400


def pricing_day(ts: float) -> str:
    """The UTC day (``YYYY-MM-DD``) of unix time ``ts``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
