"""Webhook signature checks and payload parsing: pure functions on bytes and plain data.

Nothing here imports aiohttp or reads a clock; the HTTP layer (``bot.app``) calls these and
turns their exceptions into 401/400 answers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
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
    IdentityChange,
    InboundMessage,
    Interactive,
    Location,
    Media,
    Pricing,
    Reaction,
    StatusUpdate,
    TemplateEvent,
)

SIGNATURE_HEADER = "X-Hub-Signature-256"

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays a body may have (Meta's go about 12 levels deep)."""

TIMESTAMP_RANGE = (1_000_000_000, 4_102_444_800)
"""Unix seconds a message or status may carry: 2001-09-09 to 2100-01-01 UTC, both included.

Fixed rather than relative to now, so that parsing reads no clock; it still catches
milliseconds sent as seconds, and values no store column or date library can hold.
"""

_INT64 = (-(2**63), 2**63 - 1)


def sign(body: bytes, app_secret: str) -> str:
    """The ``X-Hub-Signature-256`` header value Meta sends for ``body``."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(body: bytes, header: str | None, app_secret: str) -> None:
    """Raise :class:`SignatureError` unless ``header`` is the HMAC-SHA256 of the raw ``body``.

    The comparison is constant-time. A header that is not ASCII is refused before comparing:
    aiohttp hands undecodable header bytes over as lone surrogates, which cannot be encoded.
    """
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if not header.isascii():
        raise SignatureError(
            f"{SIGNATURE_HEADER} must be ASCII, 'sha256=<hex>'; this one has other characters"
        )
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

    Whatever this accepts can be stored and parsed again (the store keeps each item's JSON and
    re-runs :func:`parse_message` on it), so JSON that Python reads but a store cannot keep is
    refused here: lone surrogates, NUL in keys, integers beyond 64 bits, NaN and infinities,
    nesting deeper than :data:`MAX_DEPTH`, and timestamps outside :data:`TIMESTAMP_RANGE`.
    """
    try:
        text = body.decode("utf-8-sig")  # strict: json.loads(bytes) would let surrogates in
        data = _DECODER.decode(text)
    except UnicodeDecodeError as exc:
        raise PayloadError(f"body is not JSON: not UTF-8 ({exc})") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(f"body is not JSON: {exc}") from None
    except RecursionError:
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels") from None
    # Fast paths: a normal body has few brackets and no surrogate or NUL escapes; only
    # bodies that could hold what the stores refuse are walked.
    strings = _SUSPECT_ESCAPE.search(text) is not None
    if strings or text.count("[") + text.count("{") > MAX_DEPTH:
        _check_tree(data, strings=strings)
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
    events: list[TemplateEvent] = []
    changes: list[IdentityChange] = []
    for i, entry in enumerate(entries):
        where = f"entry[{i}]"
        if not isinstance(entry, dict):
            raise PayloadError(f"{where} must be an object")
        for j, change in enumerate(_list(entry, "changes", where)):
            cwhere = f"{where}.changes[{j}]"
            if not isinstance(change, dict):
                raise PayloadError(f"{cwhere} must be an object")
            field = change.get("field")
            if field != "messages" and field != "user_id_update":
                if isinstance(field, str) and field in TEMPLATE_FIELDS:
                    events.append(parse_template_event(change, entry.get("time"), cwhere))
                continue
            value = change.get("value")
            if not isinstance(value, dict):
                raise PayloadError(f"{cwhere}.value must be an object")
            if field == "user_id_update":
                changes.extend(_identity_changes(value, cwhere + ".value"))
                continue
            _parse_value(value, cwhere + ".value", messages, statuses, changes)
    return Delivery(
        messages=tuple(messages),
        statuses=tuple(statuses),
        template_events=tuple(events),
        identity_changes=tuple(changes),
    )


def _parse_value(
    value: dict[str, Any],
    where: str,
    messages: list[InboundMessage],
    statuses: list[StatusUpdate],
    changes: list[IdentityChange],
) -> None:
    metadata = value.get("metadata") or {}
    pnid = str(metadata.get("phone_number_id", "")) if isinstance(metadata, dict) else ""
    profiles: dict[str, tuple[str, str, str]] = {}
    for contact in _list(value, "contacts", where, required=False):
        if not isinstance(contact, dict):
            continue
        wa_id = str(contact.get("wa_id", ""))
        user_id = _user_id(contact.get("user_id"), where, "contacts[].user_id")
        profile = contact.get("profile")
        name = str(profile.get("name", "")) if isinstance(profile, dict) else ""
        for key in (wa_id, user_id):
            if key:
                profiles[key] = (wa_id, user_id, name)
    for k, item in enumerate(_list(value, "messages", where, required=False)):
        iwhere = f"{where}.messages[{k}]"
        if not isinstance(item, dict):
            raise PayloadError(f"{iwhere} must be an object")
        from_user_id = _user_id(item.get("from_user_id"), iwhere, "from_user_id")
        sender = str(item.get("from", "") or from_user_id)
        wa_id, user_id, name = profiles.get(sender, ("", "", ""))
        if not wa_id and not user_id:
            wa_id = str(item.get("from", ""))
        user_id = user_id or from_user_id
        if item.get("type") == "system":
            wa_id, user_id = _system_ids(item, iwhere, wa_id, user_id, changes)
        try:
            message = parse_message(
                item, wa_id=wa_id, user_id=user_id, profile_name=name, phone_number_id=pnid
            )
        except PayloadError as exc:
            raise PayloadError(f"{iwhere}: {exc}") from None
        _check_timestamp(message.timestamp, item, iwhere)
        messages.append(message)
    for k, item in enumerate(_list(value, "statuses", where, required=False)):
        swhere = f"{where}.statuses[{k}]"
        if not isinstance(item, dict):
            raise PayloadError(f"{swhere} must be an object")
        try:
            status = parse_status(item, phone_number_id=pnid)
        except PayloadError as exc:
            raise PayloadError(f"{swhere}: {exc}") from None
        _check_timestamp(status.timestamp, item, swhere)
        statuses.append(status)


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
    user_id = _user_id(item.get("recipient_user_id"), "", "recipient_user_id")
    recipient = str(item.get("recipient_id", "") or user_id)
    return StatusUpdate(
        id=wamid,
        status=status,
        timestamp=_timestamp(item.get("timestamp")),
        recipient=recipient,
        phone_number_id=phone_number_id,
        errors=_errors(item.get("errors")),
        callback_data=_callback(item.get("biz_opaque_callback_data")),
        recipient_user_id=user_id,
        raw=dict(item),
        pricing=_pricing(item.get("pricing")),
    )


def _pricing(value: Any) -> Pricing | None:
    """A status's ``pricing`` object; ``None`` when absent or not an object."""
    if not isinstance(value, dict):
        return None
    billable = value.get("billable", False)
    return Pricing(
        billable=billable is True or str(billable).lower() == "true",
        category=str(value.get("category", "")),
        type=str(value.get("type", "")),
        pricing_model=str(value.get("pricing_model", "")),
    )


TEMPLATE_FIELDS = frozenset({"message_template_status_update", "template_category_update"})
"""The webhook ``field`` values that report on templates (see :func:`parse_template_event`)."""


def parse_template_event(change: Mapping[str, Any], time: Any, where: str) -> TemplateEvent:
    """Parse one template change (``field`` in :data:`TEMPLATE_FIELDS`); ``time`` is the entry's.

    Raises :class:`PayloadError` naming what is missing: a name and a language, and for a
    status update its ``event``, for a category update its ``new_category``.
    """
    value = change.get("value")
    if not isinstance(value, dict):
        raise PayloadError(f"{where}.value must be an object")
    name, language = value.get("message_template_name"), value.get("message_template_language")
    if not isinstance(name, str) or not name or not isinstance(language, str) or not language:
        raise PayloadError(
            f"{where}.value needs message_template_name and message_template_language"
        )
    when = _timestamp(time) if time is not None else 0
    template_id = str(value.get("message_template_id", ""))
    if change.get("field") == "message_template_status_update":
        event = value.get("event")
        if not isinstance(event, str) or not event:
            raise PayloadError(f"{where}.value.event must name the template's new status")
        return TemplateEvent(
            "status",
            name,
            language,
            when,
            template_id,
            status=event.upper(),
            reason=str(value.get("reason") or ""),
            category=str(value.get("message_template_category") or "").upper(),
            raw=dict(value),
        )
    new = value.get("new_category")
    if not isinstance(new, str) or not new:
        raise PayloadError(f"{where}.value.new_category must name a category")
    effective = value.get("category_update_timestamp")
    return TemplateEvent(
        "category",
        name,
        language,
        when,
        template_id,
        category=new.upper(),
        previous_category=str(value.get("previous_category") or "").upper(),
        correct_category=str(value.get("correct_category") or "").upper(),
        effective_at=_timestamp(effective) if effective is not None else 0,
        raw=dict(value),
    )


_USER_ID = re.compile(r"[A-Za-z0-9._-]{1,256}")
"""What a business-scoped user id may look like (``US.13491208655302741918``,
``US.ENT.…``): it becomes a store key and a send address, so nothing else is taken."""


def _user_id(value: Any, where: str, key: str) -> str:
    """A business-scoped user id as Meta sends it ('' for none), else a :class:`PayloadError`.

    ``where`` and ``key`` name the place for the reason (joined only when it is raised).
    """
    if value is None or value == "":
        return ""
    if isinstance(value, str) and _USER_ID.fullmatch(value):
        return value
    place = f"{where}.{key}" if where else key
    raise PayloadError(
        f"{place} must be a business-scoped user id like 'US.13491208655302741918' "
        f"(letters, digits and dots), got {_show(value)}"
    )


def _system_ids(
    item: dict[str, Any], where: str, wa_id: str, user_id: str, changes: list[IdentityChange]
) -> tuple[str, str]:
    """A system message's user (it has no contacts, and may have no ``from``).

    ``user_changed_user_id`` and ``user_changed_number`` name the new ids in ``system`` and,
    since August 2026, the previous business-scoped id as ``previous_user_id``: that is a
    re-key, as a ``user_id_update`` is.
    """
    system = item.get("system")
    if not isinstance(system, dict):
        return wa_id, user_id
    new_id = _user_id(system.get("user_id"), where, "system.user_id")
    previous = _user_id(system.get("previous_user_id"), where, "system.previous_user_id")
    new_phone = system.get("wa_id")
    new_phone = new_phone if isinstance(new_phone, str) and new_phone.isdigit() else ""
    if previous and new_id:
        changes.append(IdentityChange(previous, new_id, new_phone))
    if not wa_id and not user_id:  # filed under the user's new id (the re-key links it)
        return new_phone, new_id
    return wa_id, user_id


def _identity_changes(value: dict[str, Any], where: str) -> list[IdentityChange]:
    """The items of a ``user_id_update`` change: ``{wa_id?, user_id: {previous, current}}``."""
    out = []
    for k, item in enumerate(_list(value, "user_id_update", where)):
        iwhere = f"{where}.user_id_update[{k}]"
        if not isinstance(item, dict):
            raise PayloadError(f"{iwhere} must be an object")
        ids = item.get("user_id")
        if not isinstance(ids, dict):
            raise PayloadError(f"{iwhere}.user_id must be an object {{previous, current}}")
        previous = _user_id(ids.get("previous"), iwhere, "user_id.previous")
        current = _user_id(ids.get("current"), iwhere, "user_id.current")
        if not previous or not current:
            raise PayloadError(f"{iwhere}.user_id needs both 'previous' and 'current'")
        wa_id = item.get("wa_id", "")
        if not isinstance(wa_id, str) or not (wa_id == "" or wa_id.isdigit()):
            raise PayloadError(f"{iwhere}.wa_id must be a phone number, got {_show(wa_id)}")
        timestamp = 0
        if item.get("timestamp") is not None:
            timestamp = _timestamp(item.get("timestamp"))
            _check_timestamp(timestamp, item, iwhere)
        out.append(IdentityChange(previous, current, wa_id, timestamp))
    return out


def _callback(value: Any) -> str:
    """The echoed ``biz_opaque_callback_data`` (ours are short; anything else is not ours)."""
    return value if isinstance(value, str) and len(value) <= 512 else ""


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


_SUSPECT_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")
"""A ``\\u`` escape of a surrogate (half of an emoji's pair, or a lone one) or of NUL."""


def _timestamp(value: Any) -> int:
    try:
        ts = int(value)
    except (TypeError, ValueError):
        raise PayloadError(f"'timestamp' must be unix seconds, got {_show(value)}") from None
    if ts < 0:
        raise PayloadError(f"'timestamp' must be unix seconds, got {_show(value)}")
    return ts


def _check_timestamp(ts: int, item: Mapping[str, Any], where: str) -> None:
    """Refuse a timestamp outside :data:`TIMESTAMP_RANGE` (at the wire only).

    :func:`parse_message` and :func:`parse_status` do not check the range: they also re-read
    what the store kept, and an item stored under older rules must still read back.
    """
    low, high = TIMESTAMP_RANGE
    if not low <= ts <= high:
        raise PayloadError(
            f"{where}.timestamp must be unix seconds from {low} to {high} (2001-09-09 to "
            f"2100-01-01 UTC), got {_show(item.get('timestamp'))}"
        )


def _show(value: Any) -> str:
    """``value`` for an error message: ASCII (an HTTP answer carries it) and at most 40 chars."""
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        return "an integer beyond 64 bits"  # its repr could be slow or refused (4300 digits)
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _no_constant(name: str) -> Any:
    """``json.loads`` hook for ``NaN``, ``Infinity`` and ``-Infinity``: never accepted."""
    raise PayloadError(f"body is not JSON: {name} is not a JSON number (RFC 8259)")


def _int64(digits: str) -> int:
    """``json.loads`` hook for integers: only what a signed 64-bit store column can hold."""
    value = int(digits) if len(digits) <= 20 else None  # a longer one cannot fit; skip int()
    if value is None or not _INT64[0] <= value <= _INT64[1]:
        shown = digits if len(digits) <= 24 else digits[:21] + "..."
        raise PayloadError(f"body has an integer beyond signed 64 bits ({shown})")
    return value


def _finite_float(digits: str) -> float:
    """``json.loads`` hook for numbers with a fraction or exponent: finite ones only."""
    value = float(digits)
    if not math.isfinite(value):
        shown = digits if len(digits) <= 24 else digits[:21] + "..."
        raise PayloadError(f"body has a number too large for a float ({shown})")
    return value


_DECODER = json.JSONDecoder(
    parse_constant=_no_constant, parse_int=_int64, parse_float=_finite_float
)
"""One decoder with the hooks, built once (``json.loads`` with hooks builds one per call)."""


def _check_tree(data: Any, *, strings: bool) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH`; with ``strings``, also text no store keeps.

    That is strings or keys with a lone surrogate (not Unicode: neither UTF-8 nor BSON can
    encode it) and keys with NUL (a BSON key is NUL-terminated). Iterative, so that depth
    costs no recursion.
    """
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict | list):
            if len(path) >= MAX_DEPTH:
                raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels at {_path(path)}")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if strings and isinstance(key, str):
                    _check_text(key, path, what="key")
                    if "\x00" in key:
                        raise PayloadError(f"body has a key with NUL at {_path(path)}")
                stack.append((child, (*path, key)))
        elif strings and isinstance(node, str):
            _check_text(node, path, what="string")


def _check_text(text: str, path: tuple[str | int, ...], *, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError(
            f"body has a {what} with a lone surrogate (not Unicode) at {_path(path)}"
        ) from None


def _path(path: tuple[str | int, ...]) -> str:
    """``entry[0].changes[0]``-style, as the other reasons name places (the first 12 steps)."""
    out = ""
    for part in path[:12]:
        out += f"[{part}]" if isinstance(part, int) else f".{ascii(part)[1:-1][:40]}"
    if len(path) > 12:
        out += f"... ({len(path)} levels down)"
    return out.lstrip(".") or "the top level"


def _list(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> list[Any]:
    value = obj.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"{where}.{key} must be a list")
    return value
