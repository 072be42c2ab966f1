"""What Meta says about our templates now, shared by every process through the store.

``templates.yaml`` says what a template was when someone last looked; Meta pauses, disables,
reinstates and re-categorizes templates on its own and says so in webhooks
(``message_template_status_update``, ``template_category_update``). The webhook route stores
them (:func:`record_ledgers`); each process's :class:`LiveTemplates` lays the stored view over
the file's registry, checking the store's cheap version number before every template send, so
a change stored by any process applies to the next template every process sends, and a
restarted process starts from the stored view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import structlog

from bot._when import iso
from bot.metrics import Metrics
from bot.models import Delivery, TemplateEvent
from bot.store.base import LiveVariant, Store, TemplateView
from bot.templates import Template, TemplateRegistry
from bot.window import Decision

log = structlog.get_logger("windowbot.live_templates")

#: Meta's statuses under which a variant still sends (FLAGGED: quality is falling, not paused).
SENDABLE = frozenset({"APPROVED", "REINSTATED", "FLAGGED"})


async def record_ledgers(store: Store, delivery: Delivery, now: float) -> None:
    """Store a delivery's template webhooks and the pricing its statuses carry."""
    if delivery.template_events:
        fresh = await store.add_template_events(delivery.template_events, now)
        for event, new in zip(delivery.template_events, fresh, strict=True):
            if new:
                log_event(event)
    if any(s.pricing is not None for s in delivery.statuses):
        await store.add_pricing(delivery.statuses, now)


def log_event(event: TemplateEvent) -> None:
    """One log line per template webhook; a coming re-categorization is a warning."""
    bound = log.bind(template=event.name, language=event.language, template_id=event.template_id)
    if event.notice:
        bound.warning(
            "template_recategorization_notice",
            category=event.category,
            new_category=event.correct_category,
            on=iso(event.effective_at) if event.effective_at else "unknown",
            effect=f"from then on it is {event.correct_category}"
            + (", which windowbot never sends" if event.correct_category == "MARKETING" else ""),
        )
    elif event.kind == "category":
        bound.warning(
            "template_recategorized",
            previous_category=event.previous_category,
            category=event.category,
        )
    elif event.status in SENDABLE:
        bound.info("template_status_changed", status=event.status, reason=event.reason)
    else:
        bound.warning(
            "template_status_changed", status=event.status, reason=event.reason, sent=False
        )


def blocked_reason(live: LiveVariant) -> str:
    """Why the live view stops a variant ('' when it does not)."""
    if live.status and live.status not in SENDABLE:
        why = f": {live.status_reason}" if live.status_reason not in ("", "NONE") else ""
        return f"{live.status} since {iso(live.status_at)}{why}"
    if live.category == "MARKETING":
        return f"re-categorized MARKETING on {iso(live.category_at)}"
    return ""


def overlay(registry: TemplateRegistry, view: TemplateView) -> TemplateRegistry:
    """``registry`` as Meta has it now: each variant's status as the live view says.

    A variant Meta paused, disabled or rejected gets that status; one re-categorized to
    MARKETING gets the status ``MARKETING``; one Meta approved or reinstated is APPROVED
    (also if the file still says PENDING). Either way :func:`bot.templates.choose_language`
    skips what is not APPROVED and tries the next language of the user's chain.
    """
    if not view.variants:
        return registry
    templates: dict[str, Template] = {}
    for name, template in registry.templates.items():
        variants = dict(template.variants)
        for code, variant in template.variants.items():
            live = view.variants.get((name, code))
            if live is None:
                continue
            status = variant.status
            if live.status:
                status = "APPROVED" if live.status in SENDABLE else live.status
            if status == "APPROVED" and live.category == "MARKETING":
                status = "MARKETING"
            variants[code] = replace(variant, status=status)
        templates[name] = replace(template, variants=variants)
    return replace(registry, templates=templates)


class LiveTemplates:
    """One process's live view: the file's registry with the store's view laid over it.

    Args:
        store: where the webhooks' view is kept.
        registry: the file's registry (``None``: no templates declared).
        metrics: ``templates_skipped_live`` counts sends the live view changed.
    """

    def __init__(
        self, store: Store, registry: TemplateRegistry | None, metrics: Metrics | None = None
    ) -> None:
        self.store = store
        self.base = registry
        self.registry = registry
        self.view = TemplateView(-1, {})
        self.metrics = metrics or Metrics()

    async def refresh(self) -> TemplateRegistry | None:
        """The registry as Meta has it now; re-read only when the store's version moved."""
        if self.base is None:
            return None
        version = await self.store.template_version()
        if version != self.view.version:
            self.view = await self.store.template_view()
            self.registry = overlay(self.base, self.view)
            log.info("template_view_loaded", version=self.view.version)
        return self.registry

    def blocked(self, name: str) -> Mapping[str, str]:
        """Language → why, for the variants of ``name`` the live view stops."""
        out = {}
        for (template, language), live in self.view.variants.items():
            reason = blocked_reason(live) if template == name else ""
            if reason:
                out[language] = reason
        return out

    def note(self, decision: Decision) -> Decision:
        """Log and count a template decision the live view changed; say why in its reason."""
        blocked = self.blocked(decision.template) if decision.template else {}
        if not blocked:
            return decision
        self.metrics.templates_skipped_live += 1
        why = "; ".join(f"{code} {reason}" for code, reason in sorted(blocked.items()))
        if decision.kind == "skip":
            decision = replace(decision, reason=f"{decision.reason} (Meta: {why})")
        log.warning(
            "template_variant_skipped",
            template=decision.template,
            skipped=dict(blocked),
            sent_in=decision.language if decision.kind == "template" else None,
            reason=decision.reason,
        )
        return decision
