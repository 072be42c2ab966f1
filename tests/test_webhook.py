"""Signature checks and payload parsing (bot.webhook): pure functions on recorded payloads."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import PayloadError, SignatureError
from bot.webhook import parse_body, sign, verify_challenge, verify_signature

DATA = Path(__file__).parent / "data" / "webhooks"


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
