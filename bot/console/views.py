"""What the console shows, as plain JSON data: pure functions over store records.

A reply is shown as the user's phone shows it (text, buttons, list rows, or the template's
rendered body) with the facts the person replying needs: session or template, the template's
name, category, language and parameters, why (the window decision's reason), and its delivery
status; reminders appear as jobs with the time they are due.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bot.errors import BotError
from bot.models import JSON, InboundMessage, OutboxEntry, TemplateCall, UserRecord
from bot.store.base import InboxItem
from bot.templates import Template, TemplateRegistry, choose_language
from bot.window import WindowPolicy, window_closes_at, window_open

_CHOSEN = re.compile(r"template fallback (\S+) \(([^)]+)\)")


def window_view(record: UserRecord, now: float, policy: WindowPolicy) -> JSON:
    """Whether a session message may go out now, and for how long more."""
    closes = window_closes_at(record)
    return {
        "open": window_open(record, now, margin_seconds=policy.margin_seconds),
        "closes_at": closes,
        "left_seconds": max(0.0, closes - now) if closes else 0.0,
        "now": now,
    }


def user_view(
    record: UserRecord, now: float, policy: WindowPolicy, last: InboxItem | None = None
) -> JSON:
    """One line of the conversation list (and the head of a user's page)."""
    return {
        "key": record.key,
        "wa_id": record.wa_id,
        "profile_name": record.profile_name,
        "flow": record.flow,
        "state": record.state,
        "variables": dict(record.variables),
        "language": record.language,
        "message_count": record.message_count,
        "last_inbound_at": record.last_inbound_at,
        "opted_out": record.opted_out,
        "undeliverable": record.undeliverable,
        "paused": record.paused,
        "paused_reason": record.paused_reason,
        "paused_at": record.paused_at,
        "window": window_view(record, now, policy),
        "last_message": message_summary(last.message) if last is not None else "",
    }


def message_summary(message: InboundMessage) -> str:
    """An inbound message in one line, as a chat list shows it."""
    if message.text:
        return message.text
    if message.interactive is not None:
        return message.interactive.title or message.interactive.id
    if message.button is not None:
        return message.button.text or message.button.payload
    if message.media is not None:
        return f"[{message.type}] {message.media.caption}".rstrip()
    if message.location is not None:
        where = message.location.name or message.location.address
        return f"[location] {message.location.latitude}, {message.location.longitude} {where}"
    if message.reaction is not None:
        return f"[reaction] {message.reaction.emoji}"
    return f"[{message.type}]"


def inbound_view(item: InboxItem, at: float) -> JSON:
    """A message the user sent, with what became of it (done, failed and why)."""
    message = item.message
    return {
        "kind": "in",
        "id": message.id,
        "at": at,
        "written_at": message.timestamp,
        "type": message.type,
        "text": message_summary(message),
        "status": item.status,
        "reason": item.reason,
    }


def outbound_view(
    entry: OutboxEntry,
    record: UserRecord,
    registry: TemplateRegistry | None,
    policy: WindowPolicy,
    sent_body: JSON | None = None,
) -> JSON:
    """A reply (or a reminder job) as the phone shows it, with its badge and status.

    ``sent_body`` is the request the Cloud API received for it, when known (the sandbox's
    fake keeps them): it names the template variant that went out.
    """
    out = entry.outgoing
    as_template = entry.sent_as == "template" or (out.message is None and entry.sent_as != "")
    view: JSON = {
        "kind": "out",
        "id": entry.id,
        "seq": entry.seq,
        "at": entry.created_at,
        "status": entry.status,
        "sent_as": entry.sent_as,
        "reason": entry.reason,
        "error_code": entry.error_code,
        "note": out.note,
        "wamid": entry.wamid,
        "job": out.send_at > 0,
        "due_at": out.send_at,
        "message": None,
        "template": None,
        "fallback": out.fallback.name if out.fallback is not None else "",
    }
    if out.message is not None and not as_template:
        view["message"] = message_view(out.message)
    if out.fallback is not None and (as_template or out.message is None):
        view["template"] = template_view(out.fallback, entry, record, registry, policy, sent_body)
    elif out.message is None:
        view["message"] = {"type": "text", "text": "(no message)"}
    return view


def message_view(message: Mapping[str, Any]) -> JSON:
    """A session message body as the phone lays it out."""
    kind = str(message.get("type", ""))
    body: Mapping[str, Any] = message.get(kind) or {}
    if kind == "text":
        return {"type": "text", "text": body.get("body", "")}
    if kind == "interactive":
        action = body.get("action") or {}
        view: JSON = {
            "type": "interactive",
            "text": (body.get("body") or {}).get("text", ""),
            "header": (body.get("header") or {}).get("text", ""),
            "footer": (body.get("footer") or {}).get("text", ""),
            "buttons": [
                {"id": b["reply"]["id"], "title": b["reply"]["title"]}
                for b in action.get("buttons", [])
                if isinstance(b, Mapping) and "reply" in b
            ],
            "list": None,
        }
        if body.get("type") == "list":
            view["list"] = {
                "button": action.get("button", ""),
                "sections": [
                    {
                        "title": s.get("title", ""),
                        "rows": [
                            {
                                "id": r.get("id", ""),
                                "title": r.get("title", ""),
                                "description": r.get("description", ""),
                            }
                            for r in s.get("rows", [])
                        ],
                    }
                    for s in action.get("sections", [])
                ],
            }
        return view
    if kind == "location":
        where = f"{body.get('name', '')} {body.get('address', '')}".strip()
        return {
            "type": "location",
            "text": f"📍 {body.get('latitude')}, {body.get('longitude')} {where}",
        }
    caption = body.get("caption") or body.get("filename") or ""
    return {"type": kind, "text": f"[{kind}] {caption}".rstrip()}


def template_view(
    call: TemplateCall,
    entry: OutboxEntry,
    record: UserRecord,
    registry: TemplateRegistry | None,
    policy: WindowPolicy,
    sent_body: JSON | None = None,
) -> JSON:
    """A template message: name, category, language, parameters and the rendered body."""
    template = registry.get(call.name) if registry is not None else None
    language = _language(call, entry, record, template, policy, sent_body)
    parameters: Any = (
        dict(call.parameters) if isinstance(call.parameters, Mapping) else list(call.parameters)
    )
    view: JSON = {
        "name": call.name,
        "category": template.category if template is not None else "",
        "language": language,
        "parameters": parameters,
        "text": "",
        "buttons": [],
    }
    if template is not None and language in template.variants:
        variant = template.variants[language]
        try:
            view["text"] = template.render(language, call)
        except BotError as exc:
            view["text"] = f"(cannot render: {exc})"
        view["header"] = variant.header
        view["buttons"] = [
            {
                "title": button.text,
                "payload": call.buttons[i] if i < len(call.buttons) else "",
                "kind": button.kind,
            }
            for i, button in enumerate(variant.buttons)
        ]
    return view


def _language(
    call: TemplateCall,
    entry: OutboxEntry,
    record: UserRecord,
    template: Template | None,
    policy: WindowPolicy,
    sent_body: JSON | None,
) -> str:
    """The variant that went out: as sent, as the decision said, else as it would be chosen."""
    if sent_body is not None and sent_body.get("type") == "template":
        return str(sent_body["template"]["language"]["code"])
    chosen = _CHOSEN.search(entry.reason)
    if chosen and chosen.group(1) == call.name:
        return chosen.group(2)
    if call.language or template is None:
        return call.language
    return (
        choose_language(
            record,
            template,
            country_languages=policy.country_languages,
            default=policy.default_language,
        )
        or ""
    )


def templates_offered(
    record: UserRecord, registry: TemplateRegistry | None, policy: WindowPolicy
) -> list[JSON]:
    """The templates an operator may send this user: APPROVED in their language, not MARKETING."""
    if registry is None:
        return []
    offered = []
    for name in sorted(registry.templates):
        template = registry.templates[name]
        if template.category == "MARKETING":
            continue
        language = choose_language(
            record,
            template,
            country_languages=policy.country_languages,
            default=policy.default_language,
        )
        if language is None:
            continue
        variant = template.variants[language]
        offered.append(
            {
                "name": name,
                "category": template.category,
                "language": language,
                "parameter_format": template.parameter_format,
                "parameters": list(template.parameters),
                "body": variant.body,
                "buttons": [b.text for b in variant.buttons],
            }
        )
    return offered


def timeline(
    inbox: Sequence[InboxItem],
    outbox: Sequence[OutboxEntry],
    record: UserRecord,
    registry: TemplateRegistry | None,
    policy: WindowPolicy,
    *,
    user_time: Callable[[float], float],
    sent: Mapping[str, Any] | None = None,
) -> list[JSON]:
    """The user's messages and replies in the order they happened.

    ``user_time`` maps the wall-clock time a message was stored to the user's clock (the
    sandbox moves it), the clock replies are stamped with; ``sent``: what the Cloud API
    received, by wamid, when known.
    """
    items: list[tuple[float, int, int, JSON]] = []
    for index, item in enumerate(inbox):
        at = user_time(item.received_at)
        items.append((at, 0, index, inbound_view(item, at)))
    for entry in outbox:
        body = getattr((sent or {}).get(entry.wamid), "body", None)
        view = outbound_view(entry, record, registry, policy, body)
        items.append((entry.created_at, 1, entry.seq, view))
    items.sort(key=lambda t: t[:3])
    return [view for *_, view in items]
