"""Times for reminder jobs: ``at`` expressions, durations, time zones and quiet hours (pure).

Nothing here reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.errors import ScheduleError
from bot.models import UserRecord

#: Words that ask for a repeating schedule, and cron's five fields.
_RECURRING = re.compile(
    r"\b(every|each|daily|weekly|monthly|yearly|hourly|recurring|repeat(s|ing)?|cron)\b"
    r"|^\s*[\d*/,-]+(\s+[\d*/,-]+){4}\s*$",
    re.IGNORECASE,
)
RECURRING_REFUSED = (
    "recurring schedules are refused: recurring content and subscription messaging are not an "
    "allowed template use (WhatsApp's rules); schedule one job per event instead, e.g. one "
    "reminder per appointment"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)?", re.IGNORECASE)
_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
_OPERATOR = re.compile(r"\s+([+-])\s+")  # an offset's sign, spaced: ISO times hold '-' too
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def refuse_recurring(text: str) -> None:
    """Raise :class:`ScheduleError` if ``text`` asks for a repeating schedule."""
    if _RECURRING.search(text):
        raise ScheduleError(f"{text!r}: {RECURRING_REFUSED}")


def parse_duration(text: str | float) -> float:
    """Seconds in ``90``, ``30s``, ``5m``, ``1h30m``, ``2d``; raises :class:`ScheduleError`."""
    if isinstance(text, int | float):
        return float(text)
    compact = text.replace(" ", "")
    parts = list(_DURATION.finditer(compact))
    if not compact or "".join(p.group(0) for p in parts) != compact:
        raise ScheduleError(f"{text!r} is not a duration (like 90s, 15m, 1h30m, 2d)")
    return sum(float(p.group(1)) * _UNITS[(p.group(2) or "").lower()] for p in parts)


def parse_time(text: str | float, now: float, zone: ZoneInfo | None = None) -> float:
    """Unix seconds of an ``at`` expression.

    Accepted: unix seconds; an ISO 8601 time (``2026-12-02T10:00:00-03:00``; without an
    offset it is read in ``zone``, else UTC); ``now``; any of these followed by ``+ 1h`` or
    ``- 30m`` (several allowed); ``in 2h`` or ``+2h`` alone (from ``now``). A recurring
    request ("every day at 09:00", a cron line) is refused with the reason.
    """
    if isinstance(text, int | float):
        return float(text)
    expression = text.strip()
    refuse_recurring(expression)
    if expression.lower().startswith("in "):
        return now + parse_duration(expression[3:])
    if expression[:1] in ("+", "-"):
        expression = f"now {expression[0]} {expression[1:].strip()}"
    parts = _OPERATOR.split(expression)  # base, sign, duration, sign, duration...
    offset = 0.0
    for sign, amount in zip(parts[1::2], parts[2::2], strict=True):
        offset += (1.0 if sign == "+" else -1.0) * parse_duration(amount)
    return _base_time(parts[0], now, zone, text) + offset


def _base_time(expression: str, now: float, zone: ZoneInfo | None, text: str) -> float:
    if expression.lower() == "now":
        return now
    try:
        return float(expression)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(expression.replace(" ", "T", 1))
    except ValueError:
        raise ScheduleError(
            f"{text!r} is not a time: give an ISO time (2026-12-02T10:00:00-03:00), unix "
            "seconds, 'now' or 'in 2h', optionally followed by '- 1h' or '+ 30m'"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone or UTC)
    return moment.timestamp()


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raises :class:`ScheduleError` naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"unknown time zone {name!r} (use an IANA name like Europe/Lisbon)"
        ) from None


def user_zone(
    record: UserRecord | None, country_zones: Mapping[str, str], default: str
) -> ZoneInfo:
    """The user's time zone: stored on them (variable ``timezone``), else their calling
    code's (longest prefix of the wa_id), else ``default``."""
    if record is not None:
        stored = str(record.variables.get("timezone") or "")
        if stored:
            try:
                return ZoneInfo(stored)
            except (ZoneInfoNotFoundError, ValueError):
                pass  # a bad value a flow saved: the country decides
        phone = record.wa_id or (record.key if record.key.isdigit() else "")
        for length in range(min(4, len(phone)), 0, -1):
            name = country_zones.get(phone[:length])
            if name:
                return zone(name)
    return zone(default)


def parse_quiet(text: str) -> tuple[int, int] | None:
    """``"21:00-08:00"`` as minutes of the day (start, end); ``None`` for ``""``/``off``."""
    value = text.strip().lower()
    if value in ("", "off", "none"):
        return None
    start, sep, end = value.partition("-")
    a, b = _HHMM.match(start.strip()), _HHMM.match(end.strip())
    if not sep or a is None or b is None or start.strip() == end.strip():
        raise ScheduleError(
            f"quiet hours {text!r}: give local hours as HH:MM-HH:MM (like 21:00-08:00), or off"
        )
    return int(a[1]) * 60 + int(a[2]), int(b[1]) * 60 + int(b[2])


def next_allowed(ts: float, where: ZoneInfo, quiet: tuple[int, int] | None) -> float:
    """``ts`` if it is outside the quiet hours in ``where``, else when they end there."""
    if quiet is None:
        return ts
    local = datetime.fromtimestamp(ts, where)
    minute = local.hour * 60 + local.minute
    start, end = quiet
    inside = start <= minute < end if start < end else minute >= start or minute < end
    if not inside:
        return ts
    day = local.date() if minute < end else local.date() + timedelta(days=1)
    wake = datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=where)
    return max(ts, wake.timestamp())


def iso(ts: float, where: ZoneInfo | None = None) -> str:
    """``2026-12-02T10:00:00Z`` (UTC) or with the zone's offset."""
    if where is None:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.fromtimestamp(ts, where).isoformat(timespec="minutes")
