"""JSON text for storage, logs and the Cloud API: orjson where it can, the standard library
where it cannot.

orjson writes plain data about ten times faster than :mod:`json` (a message's inbox row, user
record and outbox entry took ~30 µs of the ~1 ms the bot spends per message). What orjson
refuses is written by :mod:`json` instead, so every value the standard library could write
still can be, to the same JSON: an integer beyond 64 bits, a key that is not a string, an
instance of a ``str``/``int``/``dict`` subclass (an ``IntEnum``, say), a string with a lone
surrogate. Two differences remain: orjson also writes a few types :mod:`json` rejects (a
``UUID``, an ``Enum``: their value), and writes ``NaN`` and the infinities, which JSON has
no words for, as ``null`` (the standard library's ``NaN`` is not JSON: SQLite's ``json_*``
functions and every other reader refuse it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

# dataclasses, datetimes and subclasses go to the standard library: it decides, as before
_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(value: Any) -> str:
    """Compact JSON text of ``value`` (``TypeError`` for what no JSON encoder can write)."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError included
        return _COMPACT.encode(value)


def render(value: Any, default: Callable[[Any], Any] | None = None, **_: Any) -> str:
    """A log line's JSON (structlog's ``JSONRenderer`` serializer): ``default`` turns what
    is not JSON into something that is (structlog's ``repr`` fallback)."""
    try:
        return orjson.dumps(value, default=default).decode()
    except TypeError:
        return json.dumps(value, default=default)


loads = orjson.loads
"""Parse a Cloud API answer (``ValueError`` for what is not JSON, ``NaN`` included).

Not for stored data: an integer beyond 64 bits comes back as a float."""
