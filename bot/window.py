"""The session-or-template decision for one reply: pure, with ``now`` passed in.

WhatsApp delivers a free-form *session* message only inside the customer-service window, which
closes 24 hours after the user's most recent inbound message (our own messages never extend
it). Outside it only an APPROVED template goes out. :func:`decide` answers, for one reply and
one user, which of the two to send, or why nothing is sent, and always says why.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from bot._when import iso
from bot.errors import TemplateError
from bot.models import JSON, Outgoing, UserRecord, value_object
from bot.templates import (
    TemplateRegistry,
    build_template_message,
    choose_language,
    language_chain,
    normalize_language,
)

#: The customer-service window: 24 hours after the user's last inbound message.
WINDOW_SECONDS = 24 * 60 * 60

DecisionKind = Literal["session", "template", "skip"]


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """How the decision treats the clock and languages.

    Attributes:
        margin_seconds: a window closing within this many seconds counts as closed already,
            so a message queued or retried for a moment is not refused with 131047.
        country_languages: calling code → language (``{"55": "pt_BR", "1": "en_US"}``),
            matched on the longest prefix of the user's ``wa_id``.
        default_language: the last language of every user's chain.
    """

    margin_seconds: float = 300.0
    country_languages: Mapping[str, str] = field(default_factory=dict)
    default_language: str = "en_US"


@value_object
class Decision:
    """What to do with one reply.

    Attributes:
        kind: ``session`` (send ``message`` as is), ``template`` (send the built template
            body) or ``skip`` (send nothing; ``reason`` says why).
        message: the Cloud API body without ``messaging_product``/``to``; ``None`` for skip.
        language: the template variant chosen, else the user's stored language (may be empty).
        reason: a readable why, for logs, the outbox and ``bot chat``.
        template: the template's name when one is involved.
    """

    kind: DecisionKind
    message: JSON | None
    language: str
    reason: str
    template: str = ""


def window_closes_at(record: UserRecord) -> float:
    """When the user's window closes (unix seconds); 0 when the user never wrote."""
    return float(record.last_inbound_at + WINDOW_SECONDS) if record.last_inbound_at else 0.0


def window_open(record: UserRecord, now: float, *, margin_seconds: float = 0.0) -> bool:
    """Whether a session message sent at ``now`` still falls inside the window (less margin)."""
    return bool(record.last_inbound_at) and now < window_closes_at(record) - margin_seconds


def decide(
    record: UserRecord,
    outgoing: Outgoing,
    now: float,
    *,
    registry: TemplateRegistry | None,
    policy: WindowPolicy,
) -> Decision:
    """Decide how ``outgoing`` reaches ``record``'s user at ``now``.

    Inside the window (less the margin) the session message goes out as is. A reply without
    a session message (a business-initiated send) always uses its template. Otherwise the
    template fallback is used when it exists, is APPROVED in a language of the user's chain,
    is not MARKETING, the user has not opted out and its parameters are valid; else nothing is
    sent and ``reason`` says why.
    """
    if record.undeliverable:
        reason = "not sent: WhatsApp reported this user cannot receive messages (131026)"
        return _skip(record, reason)
    closes = window_closes_at(record)
    if outgoing.message is not None and window_open(
        record, now, margin_seconds=policy.margin_seconds
    ):
        reason = f"window open until {_iso(closes)}"
        return Decision("session", outgoing.message, record.language, reason)
    if outgoing.message is None:
        why = "business-initiated"
    elif not record.last_inbound_at:
        why = "the user never wrote, so no window is open"
    elif now < closes:
        why = (
            f"window closes in {_span(closes - now)}, inside the"
            f" {_span(policy.margin_seconds)} safety margin"
        )
    else:
        why = f"window closed {_span(now - closes)} ago"
    return _template(record, outgoing, why, registry, policy)


def decide_fallback(
    record: UserRecord,
    outgoing: Outgoing,
    now: float,
    *,
    registry: TemplateRegistry | None,
    policy: WindowPolicy,
    code: int = 131047,
) -> Decision:
    """The template path regardless of the clock, after WhatsApp refused the session message.

    Used once a send failed with 131047 (the window had closed although our clock said
    otherwise, for example because an inbound timestamp arrived late). ``now`` is unused but
    kept so both functions take the same arguments.
    """
    del now
    why = f"WhatsApp reported the window closed ({code})"
    return _template(record, outgoing, why, registry, policy)


def _template(
    record: UserRecord,
    outgoing: Outgoing,
    why: str,
    registry: TemplateRegistry | None,
    policy: WindowPolicy,
) -> Decision:
    call = outgoing.fallback
    if call is None:
        if outgoing.message is None:
            return _skip(record, "not sent: the reply has neither a message nor a template")
        return _skip(
            record, f"not sent: window closed and the reply has no template fallback ({why})"
        )
    if record.opted_out:
        return _skip(record, "not sent: user opted out of business-initiated messages", call.name)
    if registry is None:
        return _skip(record, f"not sent: no template registry is loaded for {call.name}")
    template = registry.get(call.name)
    if template is None:
        return _skip(record, f"not sent: template {call.name} is not in the registry", call.name)
    if template.category == "MARKETING":
        return _skip(record, f"not sent: template {call.name} is MARKETING", call.name)
    if call.language:
        language: str | None = normalize_language(call.language)
        assert language is not None
        status = template.status(language)
        if status != "APPROVED":
            state = f"is {status}" if status else "has no variant"
            return _skip(record, f"not sent: template {call.name} {state} in {language}", call.name)
    else:
        language = choose_language(
            record,
            template,
            country_languages=policy.country_languages,
            default=policy.default_language,
        )
        if language is None:
            statuses = sorted({v.status for v in template.variants.values()})
            if "APPROVED" not in statuses:
                reason = f"not sent: template {call.name} is {'/'.join(statuses)}"
            else:
                chain = language_chain(
                    record,
                    country_languages=policy.country_languages,
                    default=policy.default_language,
                )
                reason = (
                    f"not sent: template {call.name} has no APPROVED variant for {', '.join(chain)}"
                )
            return _skip(record, reason, call.name)
    try:
        message = build_template_message(registry, call, language)
    except TemplateError as exc:
        return _skip(record, f"not sent: {exc}", call.name)
    reason = f"{why}: template fallback {call.name} ({language})"
    return Decision("template", message, language, reason, call.name)


def _skip(record: UserRecord, reason: str, template: str = "") -> Decision:
    return Decision("skip", None, record.language, reason, template)


#: Every reply names its window's end, and users share seconds: formatted once each.
_iso = functools.lru_cache(maxsize=1024)(iso)


def _span(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``3h 20m``, ``2d 4h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        hours, minutes = divmod(s // 60, 60)
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(s // 3600, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"
