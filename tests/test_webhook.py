"""Signature checks and payload parsing (bot.webhook): pure functions on recorded payloads."""

from __future__ import annotations

import contextlib
import copy
import json
import re
from pathlib import Path
from typing import Any

import bson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import testing, webhook
from bot.errors import PayloadError, SignatureError
from bot.models import IdentityChange
from bot.store.base import (
    dumps,
    inbound_from_json,
    inbound_to_json,
    status_from_json,
    status_to_json,
)
from bot.testing import text_message, user_id_update
from bot.webhook import (
    parse_body,
    parse_envelope,
    parse_message,
    parse_status,
    sign,
    verify_challenge,
    verify_signature,
)

DATA = Path(__file__).parent / "data" / "webhooks"
TS = 1_764_000_000


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


class TestSignature:
    def test_valid_signature_passes(self) -> None:
        """The HMAC-SHA256 of the raw body with the app secret is accepted."""
        body = load("text.json")
        verify_signature(body, sign(body, "s3cret"), "s3cret")

    def test_missing_header_is_refused(self) -> None:
        """No header at all is a SignatureError that says so."""
        with pytest.raises(SignatureError, match="missing"):
            verify_signature(b"{}", None, "s3cret")

    def test_wrong_secret_is_refused(self) -> None:
        """A signature made with another secret does not match."""
        body = load("text.json")
        with pytest.raises(SignatureError, match="does not match"):
            verify_signature(body, sign(body, "other"), "s3cret")

    def test_signature_is_over_raw_bytes(self) -> None:
        """Re-serialised JSON with the same content fails: the check is over the exact bytes."""
        body = load("text.json")
        reformatted = json.dumps(json.loads(body)).encode()
        with pytest.raises(SignatureError):
            verify_signature(reformatted, sign(body, "s3cret"), "s3cret")

    def test_malformed_header_is_refused(self) -> None:
        """A header without the sha256= prefix is refused with the expected form."""
        with pytest.raises(SignatureError, match="sha256="):
            verify_signature(b"{}", "md5=abc", "s3cret")


class TestChallenge:
    def test_matching_token_echoes_challenge(self) -> None:
        """Mode subscribe and the right token echo the challenge."""
        params = {"hub.mode": "subscribe", "hub.verify_token": "tok", "hub.challenge": "123"}
        assert verify_challenge(params, "tok") == "123"

    @pytest.mark.parametrize(
        "params",
        [
            {"hub.mode": "subscribe", "hub.verify_token": "bad", "hub.challenge": "1"},
            {"hub.mode": "unsubscribe", "hub.verify_token": "tok", "hub.challenge": "1"},
            {"hub.challenge": "1"},
        ],
    )
    def test_wrong_token_or_mode_is_refused(self, params: dict[str, str]) -> None:
        """A wrong token, a wrong mode or missing fields give no challenge."""
        assert verify_challenge(params, "tok") is None

    def test_unconfigured_token_refuses_everything(self) -> None:
        """With no verify token configured, even an empty token does not verify."""
        params = {"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"}
        assert verify_challenge(params, "") is None


class TestParse:
    def test_text_message(self) -> None:
        """A text message carries its body, the sender's profile and the receiving number."""
        (msg,) = parse_body(load("text.json")).messages
        assert (msg.id, msg.user, msg.wa_id, msg.profile_name) == (
            "wamid.HBgM1",
            "5511999990000",
            "5511999990000",
            "Ana",
        )
        assert (msg.type, msg.text, msg.timestamp) == ("text", "hi", 1764000000)
        assert msg.phone_number_id == "106540352242922"

    def test_button_reply_with_context(self) -> None:
        """An interactive button reply gives its id and title, and the message it answers."""
        (msg,) = parse_body(load("button_reply.json")).messages
        assert msg.interactive is not None
        assert (msg.interactive.kind, msg.interactive.id, msg.interactive.title) == (
            "button_reply",
            "book",
            "Book",
        )
        assert msg.context is not None and msg.context.id == "wamid.OUT1"

    def test_list_reply(self) -> None:
        """A list reply gives row id, title and description."""
        (msg,) = parse_body(load("list_reply.json")).messages
        assert msg.interactive is not None
        assert (msg.interactive.id, msg.interactive.description) == ("slot-1", "Dr. Lee")

    def test_nfm_reply_keeps_response_json(self) -> None:
        """A WhatsApp Flow reply keeps its response_json string."""
        (msg,) = parse_body(load("nfm_reply.json")).messages
        assert msg.interactive is not None and msg.interactive.response_json == '{"a":1}'

    def test_quick_reply_button(self) -> None:
        """A template quick-reply press gives its payload."""
        (msg,) = parse_body(load("quick_reply.json")).messages
        assert msg.button is not None and msg.button.payload == "CONFIRM"

    @pytest.mark.parametrize(
        ("name", "kind"),
        [
            ("image.json", "image"),
            ("audio_voice.json", "audio"),
            ("document.json", "document"),
            ("video.json", "video"),
            ("sticker.json", "sticker"),
        ],
    )
    def test_media(self, name: str, kind: str) -> None:
        """Media messages carry id, mime type and (when sent) caption, filename, voice flag."""
        (msg,) = parse_body(load(name)).messages
        assert msg.type == kind and msg.media is not None and msg.media.kind == kind
        assert msg.media.id and msg.media.mime_type
        if kind == "document":
            assert msg.media.filename == "invoice.pdf" and msg.text == "invoice"
        if kind == "audio":
            assert msg.media.voice

    def test_location(self) -> None:
        """A location gives numeric coordinates, name and address."""
        (msg,) = parse_body(load("location.json")).messages
        assert msg.location is not None
        assert (msg.location.latitude, msg.location.name) == (-23.55, "Paulista")

    def test_contacts_reaction_order_system(self) -> None:
        """Contacts, reactions, orders and system messages parse with their own types."""
        (contacts,) = parse_body(load("contacts.json")).messages
        assert contacts.type == "contacts" and contacts.contacts[0]["name"]["first_name"] == "Bob"
        (reaction,) = parse_body(load("reaction.json")).messages
        assert reaction.reaction is not None and reaction.reaction.message_id == "wamid.OUT1"
        (order,) = parse_body(load("order.json")).messages
        assert order.type == "order" and order.raw["order"]["catalog_id"] == "c1"
        (system,) = parse_body(load("system.json")).messages
        assert system.type == "system" and system.text == "User changed number"

    def test_unsupported_keeps_errors(self) -> None:
        """An unsupported message keeps Meta's error details."""
        (msg,) = parse_body(load("unsupported.json")).messages
        assert msg.type == "unsupported" and msg.errors[0].code == 131051

    def test_unknown_type_is_unsupported_not_an_error(self) -> None:
        """A type this version does not know becomes unsupported, with the raw item kept."""
        (msg,) = parse_body(load("unknown_type.json")).messages
        assert msg.type == "unsupported" and msg.raw["type"] == "hologram"

    def test_forwarded_context(self) -> None:
        """Forwarded flags are kept."""
        (msg,) = parse_body(load("forwarded.json")).messages
        assert msg.context is not None and msg.context.frequently_forwarded

    def test_business_scoped_user_id(self) -> None:
        """A payload with only a business-scoped user_id keys the user by it."""
        (msg,) = parse_body(load("user_id_only.json")).messages
        assert (msg.user, msg.user_id, msg.wa_id) == (
            "US.13491208655302741918",
            "US.13491208655302741918",
            "",
        )
        assert msg.profile_name == "Bea"

    def test_statuses(self) -> None:
        """Status items give wamid, status, recipient and errors."""
        statuses = parse_body(load("statuses.json")).statuses
        assert [s.status for s in statuses] == ["sent", "delivered", "failed"]
        assert statuses[2].errors[0].code == 131047
        assert statuses[0].recipient == "5511999990000"

    def test_batch_iterates_every_entry_change_and_item(self) -> None:
        """Every entry, change, message and status of a batch is returned, in order."""
        delivery = parse_body(load("batch.json"))
        assert [m.id for m in delivery.messages] == [
            "wamid.HBgM20",
            "wamid.HBgM21",
            "wamid.HBgM22",
            "wamid.HBgM23",
        ]
        assert [m.profile_name for m in delivery.messages] == ["Ana", "Ana", "Bob", "Cy"]
        assert [s.id for s in delivery.statuses] == ["wamid.OUT9"]


class TestMalformed:
    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"", "not JSON"),
            (b'{"object": "whatsapp_business_acc', "not JSON"),
            (b"\xff\xfe", "not JSON"),
            (b"[]", "JSON object"),
            (b'{"object": "page", "entry": []}', "whatsapp_business_account"),
            (b'{"object": "whatsapp_business_account"}', "entry must be a list"),
            (b'{"object": "whatsapp_business_account", "entry": [1]}', "entry[0]"),
            (
                b'{"object": "whatsapp_business_account", "entry": [{"changes": '
                b'[{"field": "messages", "value": {"messages": [{"id": "w", "from": "1",'
                b' "timestamp": "soon", "type": "text"}]}}]}]}',
                "timestamp",
            ),
            (
                b'{"object": "whatsapp_business_account", "entry": [{"changes": '
                b'[{"field": "messages", "value": {"messages": [{"from": "1"}]}}]}]}',
                "messages[0]: message has no 'id'",
            ),
        ],
    )
    def test_bad_bodies_name_the_problem(self, body: bytes, reason: str) -> None:
        """Each malformed body raises PayloadError with a reason naming the spot."""
        with pytest.raises(PayloadError, match=reason.replace("[", r"\[").replace("]", r"\]")):
            parse_body(body)

    @given(st.binary(max_size=200))
    def test_arbitrary_bytes_never_crash(self, body: bytes) -> None:
        """Any byte string either parses or raises PayloadError, nothing else."""
        with contextlib.suppress(PayloadError):
            parse_body(body)

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda children: (
                st.lists(children, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        [
                            "object",
                            "entry",
                            "changes",
                            "value",
                            "field",
                            "messages",
                            "statuses",
                            "id",
                            "from",
                            "type",
                            "timestamp",
                            "text",
                        ]
                    ),
                    children,
                    max_size=4,
                )
            ),
            max_leaves=20,
        )
    )
    def test_arbitrary_json_never_crashes(self, data: object) -> None:
        """Any JSON shape either parses or raises PayloadError, never another exception."""
        with contextlib.suppress(PayloadError):
            parse_body(
                json.dumps({"object": "whatsapp_business_account", "entry": [data]}).encode()
            )


class Raw(str):
    """JSON text that :func:`dump` writes as is (what ``json.dumps`` would refuse or fix)."""


RAW_JSON = [
    "1e400",
    "-1e400",
    "Infinity",
    "-Infinity",
    "NaN",
    str(2**63),
    str(-(2**63) - 1),
    "9" * 30,
    '"\\ud800"',
    '"x\\uDFFF"',
    '"\\ud83d\\ude00"',
    '{"a\\u0000": 1}',
    '"a\\u0000"',
    '"253402300800"',
    '"1000000000000"',
    '"999999999"',
    "4102444801",
    '"1764000000"',
]
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
TEXT = st.text(st.characters(exclude_categories=()) | SURROGATES, max_size=6)
KEYS = ["object", "entry", "changes", "field", "value", "messages", "statuses", "id", "from"]
KEYS += ["type", "timestamp", "text", "body", "status", "recipient_id", "errors", "code"]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()  # NaN and infinities included, written as JSON's non-standard words
    | TEXT
    | st.tuples(TEXT, SURROGATES).map("".join)  # a lone surrogate for certain
    | st.sampled_from(["1764000000", "wamid.X", "text", "messages", "whatsapp_business_account"])
    | st.sampled_from(RAW_JSON).map(Raw)
    | st.integers(55, 1100).map(lambda n: Raw("[" * n + "]" * n)),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS) | TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
PLACES: list[tuple[str | int, ...]] = [
    (),
    ("entry",),
    ("entry", 0),
    ("entry", 0, "changes"),
    ("entry", 0, "changes", 0),
    ("entry", 0, "changes", 0, "value"),
    ("entry", 0, "changes", 0, "value", "metadata"),
    ("entry", 0, "changes", 0, "value", "contacts"),
    ("entry", 0, "changes", 0, "value", "messages"),
    ("entry", 0, "changes", 0, "value", "messages", 0),
    ("entry", 0, "changes", 0, "value", "statuses", 0),
]
FIELDS = ["id", "from", "timestamp", "type", "text", "context", "errors", "interactive"]
PLACES += [("entry", 0, "changes", 0, "value", "messages", 0, key) for key in FIELDS]
PLACES += [("entry", 0, "changes", 0, "value", "messages", 0, "text", "body")]
PLACES += [
    ("entry", 0, "changes", 0, "value", "statuses", 0, key)
    for key in ("id", "status", "timestamp", "recipient_id", "errors")
]


def valid_envelope(wamid: str) -> dict[str, Any]:
    """A delivery with one text message ``wamid`` and one status, as Meta sends them."""
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": "1065"},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": "5511999990000"}],
        "messages": [
            {
                "from": "5511999990000",
                "id": wamid,
                "timestamp": "1764000000",
                "type": "text",
                "text": {"body": "hi"},
            }
        ],
        "statuses": [
            {
                "id": "wamid.OUT1",
                "status": "delivered",
                "timestamp": "1764000001",
                "recipient_id": "5511999990000",
            }
        ],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }


def dump(value: Any, *, ascii_only: bool) -> str:
    """JSON text by hand: :class:`Raw` verbatim, NaN/Infinity as words, surrogates kept."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        items = (
            f"{dump(k, ascii_only=ascii_only)}:{dump(v, ascii_only=ascii_only)}"
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only=ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


@st.composite
def hostile_bodies(draw: st.DrawFn, wamid: str = "wamid.P") -> bytes:
    """A valid envelope with random JSON put at one level (or none), as signed bytes would be.

    Surrogates are written as ``\\u`` escapes or, a quarter of the time, as raw (invalid)
    UTF-8.
    """
    envelope: Any = copy.deepcopy(valid_envelope(wamid))
    place = draw(st.sampled_from([None, *PLACES]))
    junk = draw(JSON_VALUES)
    if place == ():
        envelope = junk
    elif place is not None:
        *parents, last = place
        node: Any = envelope
        for step in parents:
            node = node[step]
        node[last] = junk
    ascii_only = draw(st.sampled_from([True, True, True, False]))
    return dump(envelope, ascii_only=ascii_only).encode("utf-8", "surrogatepass")


def envelope(message: str = "", status: str = "") -> bytes:
    """A one-item envelope around hand-written JSON text for a message and/or a status item."""
    value = ",".join(
        part
        for part in (
            f'"messages": [{message}]' if message else "",
            f'"statuses": [{status}]' if status else "",
        )
        if part
    )
    return (
        '{"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": '
        f'[{{"field": "messages", "value": {{{value}}}}}]}}]}}'
    ).encode("utf-8", "surrogatepass")


def text_item(body: str = '"hi"', *, wamid: str = '"wamid.A"', ts: str = '"1764000000"') -> str:
    """A text message item as JSON text, with its body, id and timestamp as given."""
    return (
        f'{{"from": "5511999990000", "id": {wamid}, "timestamp": {ts}, "type": "text", '
        f'"text": {{"body": {body}}}}}'
    )


def status_item(ts: str) -> str:
    """A delivered status item as JSON text, with the timestamp as given."""
    return f'{{"id": "wamid.OUT1", "status": "delivered", "timestamp": {ts}, "recipient_id": "1"}}'


def nested(depth: int) -> str:
    """A text body that brings the whole envelope to ``depth`` levels of nesting."""
    inner = depth - 9  # object, entry, entry[0], changes, change, value, messages, item, text
    return "[" * inner + "]" * inner


class TestHostileBodies:
    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (envelope(text_item(wamid='"wamid.\\ud800"')), "lone surrogate"),
            (envelope(text_item('"\\uDFFF tail"')), "messages[0].text.body"),
            (envelope(text_item('{"\\ud83d": 1}')), "key with a lone surrogate"),
            (envelope(text_item('"\ud800"')), "not UTF-8"),  # raw surrogate bytes ED A0 80
            (envelope(text_item('{"a\\u0000": 1}')), "key with NUL"),
            (envelope(text_item(str(2**63))), "beyond signed 64 bits"),
            (envelope(text_item(str(-(2**63) - 1))), "beyond signed 64 bits"),
            (envelope(text_item("9" * 5000)), "beyond signed 64 bits"),
            (envelope(text_item(ts="1" + "0" * 30)), "beyond signed 64 bits"),
            (envelope(text_item("1e400")), "too large for a float"),
            (envelope(text_item("-1e400")), "too large for a float"),
            (envelope(text_item("Infinity")), "Infinity is not a JSON number"),
            (envelope(text_item("-Infinity")), "-Infinity is not a JSON number"),
            (envelope(text_item("NaN")), "NaN is not a JSON number"),
            (envelope(text_item(nested(65))), "deeper than 64 levels at entry[0]"),
            (envelope(text_item("[" * 1200 + "]" * 1200)), "deeper than 64 levels"),
            (envelope(text_item("[" * 100_000 + "]" * 100_000)), "deeper than 64 levels"),
            (
                envelope(text_item(ts='"253402300800"')),
                "messages[0].timestamp must be unix seconds from 1000000000 to 4102444800",
            ),
            (envelope(text_item(ts='"1000000000000"')), "got '1000000000000'"),
            (envelope(text_item(ts='"999999999"')), "messages[0].timestamp"),
            (envelope(text_item(ts="4102444801")), "messages[0].timestamp"),
            (envelope(status=status_item('"1"')), "statuses[0].timestamp must be unix seconds"),
        ],
        ids=[
            "lone-surrogate-in-id",
            "lone-low-surrogate",
            "lone-surrogate-in-key",
            "surrogate-as-utf8",
            "nul-in-key",
            "int-2**63",
            "int-below-min",
            "int-5000-digits",
            "timestamp-10**30",
            "1e400",
            "-1e400",
            "Infinity",
            "-Infinity",
            "NaN",
            "65-levels",
            "1200-levels",
            "100000-levels",
            "year-9999",
            "milliseconds",
            "before-2001",
            "after-2100",
            "status-timestamp-1",
        ],
    )
    def test_refused_with_a_precise_reason(self, body: bytes, reason: str) -> None:
        """Valid-looking JSON that no store can keep or that is out of range is a PayloadError."""
        with pytest.raises(PayloadError) as info:
            parse_body(body)
        assert reason in str(info.value)
        assert str(info.value).isascii()  # the reason is answered over HTTP as is

    @pytest.mark.parametrize(
        "body",
        [
            envelope(text_item('"\\ud83d\\ude00 \\u00e9"')),  # an emoji as Meta escapes it
            envelope(text_item('"a\\u0000b"')),  # NUL in a value is text like any other
            envelope(text_item(nested(64))),
            envelope(text_item(str(2**63 - 1))),
            envelope(text_item(str(-(2**63)))),
            envelope(text_item("1.5e308")),
            envelope(text_item(ts='"1000000000"')),
            envelope(text_item(ts='"4102444800"')),
            envelope(status=status_item("1764000000")),
        ],
        ids=[
            "emoji-pair",
            "nul-in-value",
            "64-levels",
            "int64-max",
            "int64-min",
            "1.5e308",
            "range-start",
            "range-end",
            "status-int-timestamp",
        ],
    )
    def test_the_edges_still_parse(self, body: bytes) -> None:
        """Emoji pairs, NUL in values, 64 levels, 64-bit ints and the range's ends are kept."""
        delivery = parse_body(body)
        assert len(delivery.messages) + len(delivery.statuses) == 1

    @pytest.mark.parametrize("field", ["[]", "{}", "1", "null"])
    def test_a_change_of_no_known_field_is_skipped(self, field: str) -> None:
        """A ``field`` that is not one we handle, even one that is no string, is skipped
        like Meta's other fields (found by the property test below: ``[]`` raised)."""
        change = f'{{"field": {field}, "value": {{}}}}'
        body = f'{{"object": "whatsapp_business_account", "entry": [{{"changes": [{change}]}}]}}'
        assert parse_body(body.encode()) == parse_body(envelope())

    def test_stored_items_out_of_range_still_read_back(self) -> None:
        """parse_message/parse_status re-read stored items, so they do not apply the range."""
        item = {"id": "wamid.old", "from": "1", "timestamp": "1", "type": "text"}
        assert parse_message(item).timestamp == 1
        assert parse_status({"id": "w", "status": "sent", "timestamp": "1"}).timestamp == 1

    def test_a_normal_body_is_not_walked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The surrogate and depth walk only runs for bodies that could need it."""

        def walked(data: object, *, strings: bool) -> None:
            raise AssertionError("walked a normal body")

        monkeypatch.setattr(webhook, "_check_tree", walked)
        for name in ("text.json", "batch.json", "statuses.json", "order.json"):
            parse_body(load(name))
        with pytest.raises(AssertionError):
            parse_body(envelope(text_item('"\\ud83d\\ude00"')))

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def test_whatever_is_accepted_is_storable_and_reads_back(self, data: st.DataObject) -> None:
        """Anything parse_body accepts encodes to UTF-8 and BSON and re-parses to the same."""
        body = data.draw(hostile_bodies())
        try:
            delivery = parse_body(body)
        except PayloadError:
            return
        for message in delivery.messages:
            stored = dumps(inbound_to_json(message))
            stored.encode("utf-8")
            bson.encode({"data": inbound_to_json(message), "ts": message.timestamp})
            assert inbound_from_json(json.loads(stored)) == message
        for status in delivery.statuses:
            stored = dumps(status_to_json(status))
            bson.encode({"data": status_to_json(status), "ts": status.timestamp})
            assert status_from_json(json.loads(stored)) == status


class TestHostileSignature:
    @pytest.mark.parametrize(
        "header",
        [
            "sha256=\udcff\udcfe",  # how aiohttp hands over undecodable header bytes
            "sha256=é" + "0" * 63,
            "sha256=" + "\u0661" * 64,  # Arabic-Indic digits
        ],
    )
    def test_non_ascii_header_is_refused(self, header: str) -> None:
        """A header that is not ASCII is a SignatureError that says so, not a crash."""
        with pytest.raises(SignatureError, match="ASCII"):
            verify_signature(b"{}", header, "s3cret")


def _template_change(field: str, value: dict[str, Any], time: int = 1_764_000_000) -> bytes:
    body = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "time": time, "changes": [{"field": field, "value": value}]}],
    }
    return json.dumps(body).encode()


class TestTemplateWebhooks:
    def test_status_update(self) -> None:
        """message_template_status_update becomes a status event with Meta's reason."""

        delivery = parse_body(
            _template_change(
                "message_template_status_update",
                {
                    "event": "PAUSED",
                    "message_template_id": 12,
                    "message_template_name": "hours",
                    "message_template_language": "en_US",
                    "reason": "LOW_QUALITY",
                    "message_template_category": "UTILITY",
                },
            )
        )
        [event] = delivery.template_events
        assert (event.kind, event.name, event.language, event.status, event.reason) == (
            "status",
            "hours",
            "en_US",
            "PAUSED",
            "LOW_QUALITY",
        )
        assert (event.time, event.template_id, event.category) == (1_764_000_000, "12", "UTILITY")
        assert not delivery.messages and not delivery.statuses

    def test_category_notice_and_completed_change(self) -> None:
        """The notice carries correct_category and its time; the change previous/new."""

        base = {"message_template_name": "hours", "message_template_language": "en_US"}
        notice = parse_body(
            _template_change(
                "template_category_update",
                {
                    **base,
                    "correct_category": "MARKETING",
                    "new_category": "UTILITY",
                    "category_update_timestamp": 1_764_086_400,
                },
            )
        ).template_events[0]
        assert notice.notice and (notice.correct_category, notice.effective_at) == (
            "MARKETING",
            1_764_086_400,
        )
        done = parse_body(
            _template_change(
                "template_category_update",
                {**base, "previous_category": "UTILITY", "new_category": "MARKETING"},
            )
        ).template_events[0]
        assert not done.notice and (done.previous_category, done.category) == (
            "UTILITY",
            "MARKETING",
        )
        assert done.key != notice.key

    def test_malformed_template_change_is_a_clear_payload_error(self) -> None:
        """A change without a name names what is missing and where."""

        with pytest.raises(PayloadError, match=r"changes\[0\]\.value needs message_template_name"):
            parse_body(_template_change("message_template_status_update", {"event": "PAUSED"}))

    def test_status_pricing(self) -> None:
        """A status's pricing is kept: billable, model, category and type."""

        status = parse_status(
            {
                "id": "wamid.X",
                "status": "sent",
                "timestamp": "1764000000",
                "recipient_id": "1",
                "pricing": {
                    "billable": True,
                    "pricing_model": "PMP",
                    "category": "utility",
                    "type": "regular",
                },
            }
        )
        assert status.pricing is not None
        assert (status.pricing.billable, status.pricing.category, status.pricing.type) == (
            True,
            "utility",
            "regular",
        )
        assert parse_status({"id": "w", "status": "sent", "timestamp": "1"}).pricing is None


class TestIdentityFields:
    def test_phone_and_business_scoped_id_together(self) -> None:
        """``from``, ``from_user_id`` and the contact's ``user_id`` all land on the message."""
        body = text_message("5511999990000", "hi", user_id="BR.1349")
        (msg,) = parse_envelope(body).messages
        assert (msg.user, msg.wa_id, msg.user_id) == ("5511999990000", "5511999990000", "BR.1349")

    def test_from_user_id_without_contacts(self) -> None:
        """A message with ``from_user_id`` alone (no ``from``, no contacts) keys by the id."""
        body = text_message("US.ENT.1181", "hi")
        body["entry"][0]["changes"][0]["value"].pop("contacts")
        (msg,) = parse_envelope(body).messages
        assert (msg.user, msg.wa_id, msg.user_id) == ("US.ENT.1181", "", "US.ENT.1181")

    def test_status_with_only_recipient_user_id(self) -> None:
        """A status naming its recipient by ``recipient_user_id`` alone is filed under it."""
        item = testing.status_item("wamid.o", "read", "US.1349")
        assert "recipient_id" not in item
        (status,) = parse_envelope(testing.envelope(statuses=[item])).statuses
        assert (status.recipient, status.recipient_user_id) == ("US.1349", "US.1349")

    def test_user_id_update(self) -> None:
        """A ``user_id_update`` change gives the previous and current ids (and the phone)."""
        delivery = parse_envelope(user_id_update("BR.1", "BR.2", wa_id="5511", timestamp=TS))
        assert delivery.identity_changes == (IdentityChange("BR.1", "BR.2", "5511", TS),)
        assert delivery.messages == () and delivery.statuses == ()

    @pytest.mark.parametrize(
        ("path", "value", "reason"),
        [
            (("messages", 0, "from_user_id"), 12, "messages[0].from_user_id must be a business"),
            (("contacts", 0, "user_id"), "US 1", "contacts[].user_id must be a business"),
            (("messages", 0, "from_user_id"), {"id": "x"}, "from_user_id must be"),
        ],
    )
    def test_bad_ids_are_refused_with_the_place(
        self, path: tuple[str, int, str], value: object, reason: str
    ) -> None:
        """An id that is not a business-scoped user id is a PayloadError naming where."""
        body = text_message("5511999990000", "hi", user_id="BR.1349")
        key, index, name = path
        body["entry"][0]["changes"][0]["value"][key][index][name] = value
        with pytest.raises(PayloadError, match=re.escape(reason)):
            parse_envelope(body)

    @pytest.mark.parametrize(
        ("item", "reason"),
        [
            ({"user_id": "BR.2"}, "user_id must be an object {previous, current}"),
            ({"user_id": {"previous": "BR.1"}}, "needs both 'previous' and 'current'"),
            ({"user_id": {"previous": "BR.1", "current": 7}}, "user_id.current must be"),
            (
                {"user_id": {"previous": "BR.1", "current": "BR.2"}, "wa_id": "+55"},
                "wa_id must be a phone number",
            ),
            (
                {"user_id": {"previous": "BR.1", "current": "BR.2"}, "timestamp": "1"},
                "timestamp must be unix seconds",
            ),
            ("BR.2", "user_id_update[0] must be an object"),
        ],
    )
    def test_bad_user_id_updates_are_refused(self, item: object, reason: str) -> None:
        """A malformed ``user_id_update`` item is a PayloadError with the reason."""
        body = user_id_update("BR.1", "BR.2")
        body["entry"][0]["changes"][0]["value"]["user_id_update"] = [item]
        with pytest.raises(PayloadError, match=re.escape(reason)):
            parse_envelope(body)


class TestSystemRekey:
    def test_user_changed_user_id_without_from_is_a_rekey(self) -> None:
        """Meta's ``user_changed_user_id`` system message (no ``from``, no contacts) parses,
        filed under the new id, and carries the re-key from ``previous_user_id``."""
        item = {
            "id": "wamid.sys",
            "timestamp": str(TS),
            "type": "system",
            "system": {
                "body": "User changed from BR.1 to BR.2",
                "type": "user_changed_user_id",
                "user_id": "BR.2",
                "previous_user_id": "BR.1",
            },
        }
        delivery = parse_envelope(testing.envelope(messages=[item]))
        (msg,) = delivery.messages
        assert (msg.user, msg.type, msg.text) == (
            "BR.2",
            "system",
            "User changed from BR.1 to BR.2",
        )
        assert delivery.identity_changes == (IdentityChange("BR.1", "BR.2"),)
