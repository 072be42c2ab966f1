"""A test kit for bots built on windowbot: a flow tester, a fake Cloud API, webhook builders.

``FlowTester`` runs a flows folder in-process, turn by turn, on a fake clock (no HTTP, no
store), for the unit tests of a bot::

    async def test_booking_starts_with_the_menu() -> None:
        bot = FlowTester.load("flows")
        answer = await bot.send("hi")
        assert answer.choices == ["Book", "Hours", "Help"]

``FakeCloudAPI`` is a real HTTP server on a loopback port that answers like Meta's
``/messages`` endpoint, enforces the 24-hour window and posts signed status webhooks back.
The builders produce complete webhook envelopes as Meta sends them::

    body, headers = signed_request(text_message("5511999990000", "hi"), app_secret)
    await client.post("/webhook", data=body, headers=headers)

``python -m bot.testing --port 8081`` runs the fake on its own, for the sandbox and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bot._fake_cloud import FakeCloudAPI, SentMessage
from bot._flow_tester import Answer, FlowTester, visible_text
from bot.models import JSON, is_user_id
from bot.webhook import SIGNATURE_HEADER, sign

__all__ = [
    "DISPLAY_PHONE_NUMBER",
    "PHONE_NUMBER_ID",
    "WABA_ID",
    "Answer",
    "FakeCloudAPI",
    "FlowTester",
    "SentMessage",
    "button_reply",
    "contact",
    "envelope",
    "list_reply",
    "location_message",
    "media_message",
    "message_item",
    "new_wamid",
    "quick_reply",
    "reaction_message",
    "signed_request",
    "status_item",
    "text_message",
    "user_id_update",
    "visible_text",
]

PHONE_NUMBER_ID = "123456789012345"
DISPLAY_PHONE_NUMBER = "15550001111"
WABA_ID = "102290129340398"
MIME_TYPES = {
    "image": "image/jpeg",
    "video": "video/mp4",
    "audio": "audio/ogg; codecs=opus",
    "document": "application/pdf",
    "sticker": "image/webp",
}


def new_wamid(prefix: str = "TEST") -> str:
    """A unique wamid-looking id, ``wamid.TEST…``."""
    return f"wamid.{prefix}{uuid.uuid4().hex.upper()}"


def envelope(
    messages: Iterable[JSON] = (),
    statuses: Iterable[JSON] = (),
    contacts: Iterable[JSON] = (),
    *,
    phone_number_id: str = PHONE_NUMBER_ID,
    display_phone_number: str = DISPLAY_PHONE_NUMBER,
    waba_id: str = WABA_ID,
    extra: Mapping[str, Any] | None = None,
    field: str = "messages",
) -> JSON:
    """A whole webhook body with one entry and one ``messages`` change holding the items.

    ``extra`` adds keys to the change's ``value``; ``field`` names the change.
    """
    value: JSON = {
        "messaging_product": "whatsapp",
        "metadata": {
            "display_phone_number": display_phone_number,
            "phone_number_id": phone_number_id,
        },
    }
    for key, items in (("contacts", contacts), ("messages", messages), ("statuses", statuses)):
        listed = list(items)
        if listed:
            value[key] = listed
    value.update(extra or {})
    change = {"field": field, "value": value}
    return {"object": "whatsapp_business_account", "entry": [{"id": waba_id, "changes": [change]}]}


def _ids(wa_id: str, user_id: str | None) -> tuple[str, str]:
    """(phone number, business-scoped id) of an address that may be either."""
    if is_user_id(wa_id):
        return "", wa_id
    return wa_id, user_id or ""


def contact(wa_id: str, name: str = "Test User", *, user_id: str | None = None) -> JSON:
    """One ``contacts[]`` item: the sender's profile.

    ``wa_id`` may be a business-scoped id (``US.1349…``): a user known by no phone number.
    ``user_id`` adds the business-scoped id next to a phone number, as Meta does since 2026.
    """
    phone, bsuid = _ids(wa_id, user_id)
    item: JSON = {"profile": {"name": name}}
    if phone:
        item["wa_id"] = phone
    if bsuid:
        item["user_id"] = bsuid
    return item


def message_item(
    wa_id: str,
    type: str,
    content: Any,
    *,
    wamid: str | None = None,
    timestamp: float | None = None,
    context: Mapping[str, Any] | None = None,
    user_id: str | None = None,
) -> JSON:
    """One ``messages[]`` item of ``type`` with its ``content`` (``None``: no payload key).

    From a business-scoped ``wa_id`` (``US.1349…``) the item has ``from_user_id`` and no
    ``from``, as from a user who adopted a username; ``user_id`` adds ``from_user_id``.
    """
    phone, bsuid = _ids(wa_id, user_id)
    item: JSON = {}
    if phone:
        item["from"] = phone
    if bsuid:
        item["from_user_id"] = bsuid
    item.update(
        {
            "id": wamid or new_wamid(),
            "timestamp": str(int(time.time() if timestamp is None else timestamp)),
            "type": type,
        }
    )
    if content is not None:
        item[type] = content
    if context is not None:
        item["context"] = dict(context)
    return item


def _single(
    wa_id: str,
    type: str,
    content: Any,
    wamid: str | None,
    timestamp: float | None,
    name: str,
    context: Mapping[str, Any] | None = None,
    user_id: str | None = None,
) -> JSON:
    item = message_item(
        wa_id, type, content, wamid=wamid, timestamp=timestamp, context=context, user_id=user_id
    )
    return envelope(messages=[item], contacts=[contact(wa_id, name, user_id=user_id)])


def text_message(
    wa_id: str,
    body: str,
    *,
    wamid: str | None = None,
    timestamp: float | None = None,
    name: str = "Test User",
    context: Mapping[str, Any] | None = None,
    user_id: str | None = None,
) -> JSON:
    """A webhook carrying one text message from ``wa_id``."""
    return _single(wa_id, "text", {"body": body}, wamid, timestamp, name, context, user_id)


def button_reply(
    wa_id: str,
    id: str,
    title: str,
    *,
    wamid: str | None = None,
    timestamp: float | None = None,
    name: str = "Test User",
    context: Mapping[str, Any] | None = None,
    user_id: str | None = None,
) -> JSON:
    """A webhook carrying a tap on one of our interactive reply buttons."""
    content = {"type": "button_reply", "button_reply": {"id": id, "title": title}}
    return _single(wa_id, "interactive", content, wamid, timestamp, name, context, user_id)


def list_reply(
    wa_id: str,
    id: str,
    title: str,
    description: str = "",
    *,
    wamid: str | None = None,
    timestamp: float | None = None,
    name: str = "Test User",
    context: Mapping[str, Any] | None = None,
    user_id: str | None = None,
) -> JSON:
    """A webhook carrying the choice of a row of one of our list messages."""
    row = {"id": id, "title": title}
    if description:
        row["description"] = description
    content = {"type": "list_reply", "list_reply": row}
    return _single(wa_id, "interactive", content, wamid, timestamp, name, context, user_id)


def quick_reply(
    wa_id: str,
    payload: str,
    text: str | None = None,
    *,
    wamid: str | None = None,
    timestamp: float | None = None,
    name: str = "Test User",
    context: Mapping[str, Any] | None = None,
    user_id: str | None = None,
) -> JSON:
    """A webhook carrying a tap on a template's quick-reply button (message type ``button``)."""
    content = {"payload": payload, "text": payload if text is None else text}
    return _single(wa_id, "button", content, wamid, timestamp, name, context, user_id)


def media_message(
    kind: str,
    wa_id: str,
    *,
    media_id: str | None = None,
    mime_type: str | None = None,
    caption: str = "",
    filename: str = "",
    voice: bool = False,
    wamid: str | None = None,
    timestamp: float | None = None,
    name: str = "Test User",
) -> JSON:
    """A webhook carrying an image, video, audio, document or sticker."""
    if kind not in MIME_TYPES:
        raise ValueError(f"media kind must be one of {', '.join(MIME_TYPES)}, got {kind!r}")
    content: JSON = {
        "id": media_id or uuid.uuid4().hex[:16],
        "mime_type": mime_type or MIME_TYPES[kind],
        "sha256": uuid.uuid4().hex * 2,
    }
    if caption:
        content["caption"] = caption
    if filename:
        content["filename"] = filename
    if voice:
        content["voice"] = True
    return _single(wa_id, kind, content, wamid, timestamp, name)


def location_message(
    wa_id: str,
    latitude: float,
    longitude: float,
    *,
    location_name: str = "",
    address: str = "",
    wamid: str | None = None,
    timestamp: float | None = None,
    name: str = "Test User",
) -> JSON:
    """A webhook carrying a shared location (``location_name`` is the place's name)."""
    content: JSON = {"latitude": latitude, "longitude": longitude}
    if location_name:
        content["name"] = location_name
    if address:
        content["address"] = address
    return _single(wa_id, "location", content, wamid, timestamp, name)


def reaction_message(
    wa_id: str,
    message_id: str,
    emoji: str,
    *,
    wamid: str | None = None,
    timestamp: float | None = None,
    name: str = "Test User",
) -> JSON:
    """A webhook carrying an emoji reaction to ``message_id`` (empty emoji: removed)."""
    content = {"message_id": message_id, "emoji": emoji}
    return _single(wa_id, "reaction", content, wamid, timestamp, name)


def status_item(
    wamid: str,
    status: str,
    recipient: str,
    *,
    timestamp: float | None = None,
    errors: Iterable[Mapping[str, Any]] | None = None,
    category: str | None = None,
    callback: str = "",
    user_id: str | None = None,
) -> JSON:
    """One ``statuses[]`` item about a message we sent.

    ``category`` adds pricing info; ``callback`` is the ``biz_opaque_callback_data`` the
    message was sent with, which Meta echoes in every status of it. A business-scoped
    ``recipient`` (``US.1349…``) gives ``recipient_user_id`` and no ``recipient_id``;
    ``user_id`` adds ``recipient_user_id`` next to the phone number.
    """
    phone, bsuid = _ids(recipient, user_id)
    item: JSON = {
        "id": wamid,
        "status": status,
        "timestamp": str(int(time.time() if timestamp is None else timestamp)),
    }
    if phone or not bsuid:
        item["recipient_id"] = phone
    if bsuid:
        item["recipient_user_id"] = bsuid
    if category is not None:
        item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": category}
    if errors is not None:
        item["errors"] = [dict(e) for e in errors]
    if callback:
        item["biz_opaque_callback_data"] = callback
    return item


def user_id_update(
    previous: str,
    current: str,
    *,
    wa_id: str | None = None,
    timestamp: float | None = None,
    name: str = "Test User",
    phone_number_id: str = PHONE_NUMBER_ID,
) -> JSON:
    """A ``user_id_update`` webhook: the user known as ``previous`` is ``current`` from now on."""
    item: JSON = {
        "detail": f"User id for {name} has been updated.",
        "user_id": {"previous": previous, "current": current},
        "timestamp": str(int(time.time() if timestamp is None else timestamp)),
    }
    contacts: list[JSON] = []
    if wa_id:
        item["wa_id"] = wa_id
        contacts.append(contact(wa_id, name))
    return envelope(
        contacts=contacts,
        phone_number_id=phone_number_id,
        extra={"user_id_update": [item]},
        field="user_id_update",
    )


def signed_request(body: JSON | bytes, app_secret: str) -> tuple[bytes, dict[str, str]]:
    """The body bytes and the headers Meta would send with them, signature included."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return raw, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(raw, app_secret)}


def main(argv: Sequence[str] | None = None) -> None:
    """Run a :class:`FakeCloudAPI` until interrupted (``python -m bot.testing``).

    Standalone, the fake cannot see the users' messages, so the 24-hour rule is off unless
    ``--enforce-window`` is given (then tell it with ``POST /_fake/inbound``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m bot.testing",
        description="Run windowbot's fake WhatsApp Cloud API until interrupted. Standalone, "
        "the fake cannot see the users' messages, so the 24-hour rule is off unless "
        "--enforce-window is given (then tell it with POST /_fake/inbound).",
    )
    parser.add_argument("--port", type=int, default=8081, help="port (default 8081)")
    parser.add_argument("--token", default="test-token", help="access token it accepts")
    parser.add_argument("--phone-number-id", default="*", help="default: accept any")
    parser.add_argument(
        "--enforce-window",
        action="store_true",
        help="refuse session messages (131047) to users the fake was not told about",
    )
    parser.add_argument("--webhook-url", help="post status webhooks to the bot here")
    parser.add_argument("--app-secret", help="sign them with this app secret")
    parser.add_argument(
        "--retry-statuses",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="keep retrying a status webhook the bot did not accept, as Meta does (default 120)",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="answer every send this much later (a slow Cloud API)",
    )
    args = parser.parse_args(argv)
    fake = FakeCloudAPI(
        token=args.token,
        phone_number_id=args.phone_number_id,
        enforce_window=args.enforce_window,
        webhook_url=args.webhook_url,
        app_secret=args.app_secret,
        retry_statuses=args.retry_statuses,
        delay=args.delay,
        port=args.port,
    )

    async def serve() -> None:
        async with fake:
            print(f"fake Cloud API on {fake.url} (token {args.token!r})", flush=True)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
