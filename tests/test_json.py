"""bot/_json.py: orjson's speed, the standard library's results."""

from __future__ import annotations

import enum
import io
import json
import math
from typing import Any

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import _json
from bot.log import configure_logging, get_logger

# Plain data as the store keeps it; text without lone surrogates (a str SQLite can store)
_text = st.text(st.characters(codec="utf-8"))
_plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: orjson refuses those, json writes them
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_plain)
def test_dumps_reads_back_as_the_standard_library_writes_it(value: Any) -> None:
    assert json.loads(_json.dumps(value)) == value


class Level(enum.IntEnum):
    LOW = 1


class Name(str):
    pass


def test_what_orjson_refuses_is_written_by_the_standard_library() -> None:
    value = {"big": 2**70, 3: "int key", "enum": Level.LOW, "sub": Name("x"), "é": "ü"}
    assert _json.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert _json.dumps({"s": "\ud800"}) == '{"s":"\ud800"}'  # json's way: kept as it is


def test_what_no_encoder_can_write_still_raises() -> None:
    for bad in ({1, 2}, object(), {"when": __import__("datetime").date(2026, 1, 1)}):
        try:
            _json.dumps(bad)
        except TypeError:
            continue
        raise AssertionError(f"{bad!r} was written")


def test_nan_and_infinity_are_written_as_json_can_say_them() -> None:
    assert _json.dumps([math.nan, math.inf, -math.inf, 1.5]) == "[null,null,null,1.5]"


def test_log_lines_are_json_with_the_fallbacks() -> None:
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        get_logger(__name__).info("probe", big=2**70, thing=object(), text="ünï")
    finally:
        structlog.reset_defaults()
    line = json.loads(out.getvalue())
    assert line["event"] == "probe" and line["big"] == 2**70 and line["text"] == "ünï"
    assert line["thing"].startswith("<object object at")
