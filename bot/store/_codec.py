"""The stored forms of the framework's values: plain JSON data, shared by the backends.

Users, inbox messages, status items, outbox entries and replies to and from JSON, the
compact encoder they are stored with, and the outbox entries a turn appends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bot import _json
from bot.models import InboundMessage, OutboxEntry, Outgoing, StatusUpdate, TemplateCall, UserRecord
from bot.store._identity import filed, filed_status

dumps = _json.dumps
"""Compact JSON for storage (see :mod:`bot._json`)."""


def outgoing_to_json(outgoing: Outgoing) -> dict[str, Any]:
    """An :class:`Outgoing` as plain JSON data."""
    fb = outgoing.fallback
    return {
        "message": outgoing.message,
        "note": outgoing.note,
        "send_at": outgoing.send_at,
        "fallback": None
        if fb is None
        else {
            "name": fb.name,
            "language": fb.language,
            "parameters": dict(fb.parameters)
            if isinstance(fb.parameters, Mapping)
            else list(fb.parameters),
            "header": list(fb.header),
            "buttons": list(fb.buttons),
        },
    }


def outgoing_from_json(data: Mapping[str, Any]) -> Outgoing:
    """The inverse of :func:`outgoing_to_json`."""
    fb = data.get("fallback")
    call = None
    if fb:
        params = fb.get("parameters", [])
        call = TemplateCall(
            name=fb["name"],
            language=fb.get("language", ""),
            parameters=dict(params) if isinstance(params, Mapping) else tuple(params),
            header=tuple(fb.get("header", ())),
            buttons=tuple(fb.get("buttons", ())),
        )
    return Outgoing(
        message=data.get("message"),
        fallback=call,
        note=data.get("note", ""),
        send_at=float(data.get("send_at", 0.0)),
    )


def user_to_json(record: UserRecord) -> dict[str, Any]:
    """A :class:`UserRecord` as plain JSON data (``key`` included)."""
    return {
        "key": record.key,
        "wa_id": record.wa_id,
        "user_id": record.user_id,
        "profile_name": record.profile_name,
        "last_inbound_at": record.last_inbound_at,
        "message_count": record.message_count,
        "flow": record.flow,
        "state": record.state,
        "variables": dict(record.variables),
        "language": record.language,
        "opted_out": record.opted_out,
        "undeliverable": record.undeliverable,
        "version": record.version,
        "paused": record.paused,
        "paused_reason": record.paused_reason,
        "paused_at": record.paused_at,
    }


def user_from_json(data: Mapping[str, Any]) -> UserRecord:
    """The inverse of :func:`user_to_json`; unknown fields are ignored."""
    return UserRecord(
        key=data["key"],
        wa_id=data.get("wa_id", ""),
        user_id=data.get("user_id", ""),
        profile_name=data.get("profile_name", ""),
        last_inbound_at=int(data.get("last_inbound_at", 0)),
        message_count=int(data.get("message_count", 0)),
        flow=data.get("flow", ""),
        state=data.get("state", ""),
        variables=dict(data.get("variables") or {}),
        language=data.get("language", ""),
        opted_out=bool(data.get("opted_out", False)),
        undeliverable=bool(data.get("undeliverable", False)),
        version=int(data.get("version", 0)),
        paused=bool(data.get("paused", False)),
        paused_reason=str(data.get("paused_reason") or ""),
        paused_at=float(data.get("paused_at") or 0.0),
    )


def inbound_to_json(message: InboundMessage) -> dict[str, Any]:
    """What the inbox keeps of a message: Meta's item plus the envelope facts around it."""
    return {
        "raw": dict(message.raw),
        "user": message.user,
        "wa_id": message.wa_id,
        "user_id": message.user_id,
        "profile_name": message.profile_name,
        "phone_number_id": message.phone_number_id,
    }


def inbound_from_json(data: Mapping[str, Any]) -> InboundMessage:
    """Rebuild a message from :func:`inbound_to_json` by parsing Meta's item again."""
    from bot.webhook import parse_message  # the parser is the one source of truth

    message = parse_message(
        data["raw"],
        wa_id=data.get("wa_id", ""),
        user_id=data.get("user_id", ""),
        profile_name=data.get("profile_name", ""),
        phone_number_id=data.get("phone_number_id", ""),
    )
    return filed(message, data.get("user") or message.user)


def status_to_json(status: StatusUpdate) -> dict[str, Any]:
    """What the store keeps of a status item (and the user it is filed under)."""
    return {
        "raw": dict(status.raw),
        "phone_number_id": status.phone_number_id,
        "user": status.recipient,
    }


def status_from_json(data: Mapping[str, Any]) -> StatusUpdate:
    """Rebuild a status item by parsing Meta's item again."""
    from bot.webhook import parse_status

    status = parse_status(data["raw"], phone_number_id=data.get("phone_number_id", ""))
    return filed_status(status, data.get("user") or status.recipient)


def outbox_to_json(entry: OutboxEntry) -> dict[str, Any]:
    """An outbox entry as plain JSON data."""
    return {
        "id": entry.id,
        "user": entry.user,
        "seq": entry.seq,
        "outgoing": outgoing_to_json(entry.outgoing),
        "created_at": entry.created_at,
        "status": entry.status,
        **delivery_fields(entry),
    }


def delivery_fields(entry: OutboxEntry) -> dict[str, Any]:
    """What the sender changes on an entry besides its status (its reply never changes)."""
    return {
        "attempts": entry.attempts,
        "next_attempt_at": entry.next_attempt_at,
        "wamid": entry.wamid,
        "sent_as": entry.sent_as,
        "reason": entry.reason,
        "error_code": entry.error_code,
        "fallback_sent": entry.fallback_sent,
        "inflight_at": entry.inflight_at,
        "inflight_token": entry.inflight_token,
    }


def outbox_from_json(data: Mapping[str, Any]) -> OutboxEntry:
    """The inverse of :func:`outbox_to_json`."""
    return OutboxEntry(
        id=data["id"],
        user=data["user"],
        seq=int(data["seq"]),
        outgoing=outgoing_from_json(data["outgoing"]),
        created_at=float(data["created_at"]),
        status=data.get("status", "pending"),
        attempts=int(data.get("attempts", 0)),
        next_attempt_at=float(data.get("next_attempt_at", 0.0)),
        wamid=data.get("wamid", ""),
        sent_as=data.get("sent_as", ""),
        reason=data.get("reason", ""),
        error_code=int(data.get("error_code", 0)),
        fallback_sent=bool(data.get("fallback_sent", False)),
        inflight_at=float(data.get("inflight_at", 0.0)),
        inflight_token=str(data.get("inflight_token", "")),
    )


def outbox_id(user: str, seq: int) -> str:
    """The deterministic id of a user's ``seq``-th reply (idempotent re-inserts)."""
    return f"{user}:{seq}"


def new_outbox_entries(
    user: str,
    first_seq: int,
    outgoing: Sequence[Outgoing],
    now: float,
    *,
    in_flight: str = "",
) -> list[OutboxEntry]:
    """The outbox entries a turn appends, numbered from ``first_seq``.

    A reminder (``send_at``) is not due before its time; everything else is due at once.
    ``in_flight``: a lease token; the entries due now are stored with their first attempt
    started by it (see :meth:`Store.commit_turn`'s ``start_sending``).
    """
    entries = []
    for seq, out in enumerate(outgoing, start=first_seq):
        due = in_flight and out.send_at <= now
        entries.append(
            OutboxEntry(
                id=outbox_id(user, seq),
                user=user,
                seq=seq,
                outgoing=out,
                created_at=now,
                next_attempt_at=out.send_at,
                attempts=1 if due else 0,
                inflight_at=now if due else 0.0,
                inflight_token=in_flight if due else "",
            )
        )
    return entries
