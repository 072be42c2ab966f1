"""Hooks of the example flows: plain functions that receive a HookContext.

A real bot would ask a calendar; this one keeps the taken slots in memory so the example
runs anywhere. Times are relative to the day the message arrives (UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime

from bot import HookContext

DAY = 86_400
_taken: set[str] = {"d2_0900"}  # pretend someone already booked this one


def slot_time(slot_id: str, now: float) -> float:
    """Unix time of a slot id like ``d1_1500`` (day offset, then HHMM), counted from ``now``."""
    day, hhmm = slot_id.split("_")
    midnight = now - now % DAY
    return midnight + int(day[1:]) * DAY + int(hhmm[:2]) * 3600 + int(hhmm[2:]) * 60


def slot_available(ctx: HookContext) -> bool:
    """Condition: the slot just picked is not taken."""
    return str(ctx.vars.get("slot_id", "")) not in _taken


def book_slot(ctx: HookContext) -> None:
    """Action: take the slot and keep its time (``vars.slot_at``, for the reminder)."""
    _taken.add(str(ctx.vars["slot_id"]))
    at = slot_time(str(ctx.vars["slot_id"]), ctx.now)
    ctx.vars["slot_at"] = datetime.fromtimestamp(at, UTC).isoformat()


def cancel_booking(ctx: HookContext) -> None:
    """Action: free the slot (``cancel_reminder:`` cancels its reminder)."""
    _taken.discard(str(ctx.vars.get("slot_id", "")))


def opt_out(ctx: HookContext) -> None:
    """Action: the user said stop; no more business-initiated (template) messages."""
    ctx.opt_out()


def opt_in(ctx: HookContext) -> None:
    """Action: the user came back to the menu; reminders and updates may reach them again."""
    ctx.opt_in()
