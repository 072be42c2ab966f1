"""Webhook signature checks and payload parsing: pure functions on bytes and plain data.

Nothing here imports aiohttp or reads a clock; the HTTP layer (``bot.app``) calls these and
turns their exceptions into 401/400 answers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from bot.errors import PayloadError, SignatureError
from bot.models import (
    MEDIA_TYPES,
    MESSAGE_TYPES,
    ButtonPress,
    Context,
    Delivery,
    ErrorInfo,
    InboundMessage,
    Interactive,
    Location,
    Media,
    Reaction,
    StatusUpdate,
)

SIGNATURE_HEADER = "X-Hub-Signature-256"


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` header value Meta sends for ``body``."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(body: bytes, header: str | None, app_secret: str) -> None:
    """Raise :class:`SignatureError` unless ``header`` is the HMAC-SHA256 of the raw ``body``.

    The comparison is constant-time.
    """
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if not header.startswith("sha256="):
        raise SignatureError(f"{SIGNATURE_HEADER} must look like 'sha256=<hex>'")
    if not hmac.compare_digest(sign(body, app_secret).encode(), header.strip().encode()):
        raise SignatureError(f"{SIGNATURE_HEADER} does not match the body (check the app secret)")


def verify_challenge(params: Mapping[str, str], verify_token: str) -> str | None:
    """The challenge to echo for a valid subscription handshake, else ``None``."""
    if params.get("hub.mode") != "subscribe" or not verify_token:
        return None
    token = params.get("hub.verify_token", "")
    if not hmac.compare_digest(token.encode(), verify_token.encode()):
        return None
    return params.get("hub.challenge", "")


def parse_body(body: bytes) -> Delivery:
    """Parse a webhook body into a :class:`Delivery`.

    Raises :class:`PayloadError` with a short reason for non-JSON bodies and for JSON that is
    not a WhatsApp Business Account envelope. Changes of fields other than ``messages`` are
    ignored; unknown message types are kept as ``unsupported``.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
    return parse_envelope(data)


def parse_envelope(data: Any) -> Delivery:
    """Parse an already-decoded envelope; see :func:`parse_body`."""
    if not isinstance(data, dict):
        raise PayloadError("body must be a JSON object")
    if data.get("object") != "whatsapp_business_account":
        raise PayloadError("'object' must be 'whatsapp_business_account'")
    entries = _list(data, "entry", "body")
    messages: list[InboundMessage] = []
    statuses: list[StatusUpdate] = []
    for i, entry in enumerate(entries):
        where = f"entry[{i}]"
        if not isinstance(entry, dict):
            raise PayloadError(f"{where} must be an object")
        for j, change in enumerate(_list(entry, "changes", where)):
            cwhere = f"{where}.changes[{j}]"
            if not isinstance(change, dict):
                raise PayloadError(f"{cwhere} must be an object")
            if change.get("field") != "messages":
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                raise PayloadError(f"{cwhere}.value must be an object")
            _parse_value(value, cwhere + ".value", messages, statuses)
    return Delivery(messages=tuple(messages), statuses=tuple(statuses))


def _parse_value(
    value: dict[str, Any],
    where: str,
    messages: list[InboundMessage],
    statuses: list[StatusUpdate],
) -> None:
    metadata = value.get("metadata") or {}
    pnid = str(metadata.get("phone_number_id", "")) if isinstance(metadata, dict) else ""
    profiles: dict[str, tuple[str, str, str]] = {}
    for contact in _list(value, "contacts", where, required=False):
        if not isinstance(contact, dict):
            continue
        wa_id = str(contact.get("wa_id", ""))
        user_id = str(contact.get("user_id", ""))
        profile = contact.get("profile")
        name = str(profile.get("name", "")) if isinstance(profile, dict) else ""
        for key in (wa_id, user_id):
            if key:
                profiles[key] = (wa_id, user_id, name)
    for k, item in enumerate(_list(value, "messages", where, required=False)):
        iwhere = f"{where}.messages[{k}]"
        if not isinstance(item, dict):
            raise PayloadError(f"{iwhere} must be an object")
        sender = str(item.get("from", "") or item.get("from_user_id", ""))
        wa_id, user_id, name = profiles.get(sender, ("", "", ""))
        if not wa_id and not user_id:
            wa_id = str(item.get("from", ""))
            user_id = str(item.get("from_user_id", ""))
        try:
            messages.append(
                parse_message(
                    item, wa_id=wa_id, user_id=user_id, profile_name=name, phone_number_id=pnid
                )
            )
        except PayloadError as exc:
            raise PayloadError(f"{iwhere}: {exc}") from None
    for k, item in enumerate(_list(value, "statuses", where, required=False)):
        swhere = f"{where}.statuses[{k}]"
        if not isinstance(item, dict):
            raise PayloadError(f"{swhere} must be an object")
        try:
            statuses.append(parse_status(item, phone_number_id=pnid))
        except PayloadError as exc:
            raise PayloadError(f"{swhere}: {exc}") from None


def parse_message(
    item: Mapping[str, Any],
    *,
    wa_id: str = "",
    user_id: str = "",
    profile_name: str = "",
    phone_number_id: str = "",
) -> InboundMessage:
    """Parse one ``messages[]`` item (the envelope facts are passed in)."""
    wamid = item.get("id")
    if not isinstance(wamid, str) or not wamid:
        raise PayloadError("message has no 'id'")
    wa_id = wa_id or str(item.get("from", ""))
    user = wa_id or user_id
    if not user:
        raise PayloadError("message has neither 'from' nor a contact wa_id/user_id")
    timestamp = _timestamp(item.get("timestamp"))
    mtype = str(item.get("type", "unsupported"))
    if mtype not in MESSAGE_TYPES:
        mtype = "unsupported"
    body = item.get(mtype) if isinstance(item.get(mtype), dict) else {}
    assert isinstance(body, dict)
    text = ""
    interactive = button = media = location = reaction = None
    contacts: tuple[dict[str, Any], ...] = ()
    if mtype == "text":
        text = str(body.get("body", ""))
    elif mtype == "interactive":
        kind = str(body.get("type", ""))
        reply = body.get(kind) if isinstance(body.get(kind), dict) else {}
        assert isinstance(reply, dict)
        interactive = Interactive(
            kind=kind,
            id=str(reply.get("id", "")),
            title=str(reply.get("title", "") or reply.get("name", "")),
            description=str(reply.get("description", "")),
            response_json=str(reply.get("response_json", "")),
        )
        text = interactive.title
    elif mtype == "button":
        button = ButtonPress(payload=str(body.get("payload", "")), text=str(body.get("text", "")))
        text = button.text
    elif mtype in MEDIA_TYPES:
        media = Media(
            kind=mtype,
            id=str(body.get("id", "")),
            mime_type=str(body.get("mime_type", "")),
            sha256=str(body.get("sha256", "")),
            caption=str(body.get("caption", "")),
            filename=str(body.get("filename", "")),
            voice=bool(body.get("voice", False)),
        )
        text = media.caption
    elif mtype == "location":
        try:
            location = Location(
                latitude=float(body["latitude"]),
                longitude=float(body["longitude"]),
                name=str(body.get("name", "")),
                address=str(body.get("address", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise PayloadError("location needs numeric 'latitude' and 'longitude'") from None
    elif mtype == "reaction":
        reaction = Reaction(
            message_id=str(body.get("message_id", "")), emoji=str(body.get("emoji", ""))
        )
    elif mtype == "contacts":
        raw_contacts = item.get("contacts")
        if isinstance(raw_contacts, list):
            contacts = tuple(c for c in raw_contacts if isinstance(c, dict))
    elif mtype == "system":
        text = str(body.get("body", ""))
    context = None
    ctx = item.get("context")
    if isinstance(ctx, dict):
        context = Context(
            from_=str(ctx.get("from", "")),
            id=str(ctx.get("id", "")),
            forwarded=bool(ctx.get("forwarded", False)),
            frequently_forwarded=bool(ctx.get("frequently_forwarded", False)),
        )
    return InboundMessage(
        id=wamid,
        user=user,
        timestamp=timestamp,
        type=mtype,
        wa_id=wa_id,
        user_id=user_id,
        profile_name=profile_name,
        phone_number_id=phone_number_id,
        text=text,
        interactive=interactive,
        button=button,
        media=media,
        location=location,
        reaction=reaction,
        contacts=contacts,
        context=context,
        errors=_errors(item.get("errors")),
        raw=dict(item),
    )


def parse_status(item: Mapping[str, Any], *, phone_number_id: str = "") -> StatusUpdate:
    """Parse one ``statuses[]`` item."""
    wamid = item.get("id")
    if not isinstance(wamid, str) or not wamid:
        raise PayloadError("status has no 'id'")
    status = item.get("status")
    if not isinstance(status, str) or not status:
        raise PayloadError("status has no 'status'")
    recipient = str(item.get("recipient_id", "") or item.get("recipient_user_id", ""))
    return StatusUpdate(
        id=wamid,
        status=status,
        timestamp=_timestamp(item.get("timestamp")),
        recipient=recipient,
        phone_number_id=phone_number_id,
        errors=_errors(item.get("errors")),
        raw=dict(item),
    )


def _errors(value: Any) -> tuple[ErrorInfo, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for err in value:
        if not isinstance(err, dict):
            continue
        data = err.get("error_data")
        details = str(data.get("details", "")) if isinstance(data, dict) else ""
        try:
            code = int(err.get("code", 0))
        except (TypeError, ValueError):
            code = 0
        out.append(
            ErrorInfo(
                code=code,
                title=str(err.get("title", "")),
                message=str(err.get("message", "")),
                details=details,
            )
        )
    return tuple(out)


def _timestamp(value: Any) -> int:
    try:
        ts = int(value)
    except (TypeError, ValueError):
        raise PayloadError(f"'timestamp' must be unix seconds, got {value!r}") from None
    if ts < 0:
        raise PayloadError(f"'timestamp' must be unix seconds, got {value!r}")
    return ts


def _list(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> list[Any]:
    value = obj.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"{where}.{key} must be a list")
    return value
