"""What one process has done, exposed on ``/metrics`` through ``prometheus-client``.

Each :class:`Metrics` has its own ``CollectorRegistry`` (two apps in one process, as in
tests, never mix their numbers) holding the process and platform collectors, the latency
histogram and a collector that reads the counters. The counters are plain integers that
the hot path increments (``metrics.received += 1``): prometheus-client reads them only when
``/metrics`` is scraped, so a message costs an addition, not a lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.store.base import PricingCount

__all__ = ["CONTENT_TYPE", "Metrics", "render_pricing"]

#: The ``Content-Type`` of :meth:`Metrics.render`'s bytes (prometheus-client's text format).
CONTENT_TYPE = CONTENT_TYPE_LATEST

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: attribute → (metric name without ``windowbot_`` and ``_total``, help text)
COUNTERS = {
    "received": ("messages_received", "Inbound messages accepted into the inbox."),
    "duplicates": ("messages_duplicate", "Inbound messages already in the inbox."),
    "statuses": ("statuses_received", "Status items accepted."),
    "processed": ("messages_processed", "Inbound messages handled by a flow."),
    "failed": ("messages_failed", "Inbound messages whose handling failed."),
    "replies_sent": ("replies_sent", "Replies accepted by the Cloud API."),
    "replies_as_template": ("replies_template", "Replies sent as template fallbacks."),
    "replies_not_sent": ("replies_not_sent", "Replies not sent (window, template)."),
    "send_failures": ("send_failures", "Replies the Cloud API refused."),
    "rejected_requests": ("webhook_rejected", "Webhook requests answered 4xx."),
    "templates_skipped_live": (
        "template_variants_skipped",
        "Template sends where Meta's live view skipped a variant (paused, re-categorized).",
    ),
    "jobs_claimed": ("jobs_claimed", "Reminder jobs claimed by this process's dispatcher."),
    "jobs_queued": ("jobs_queued", "Reminder jobs handed to their user's outbox."),
    "jobs_sent": ("jobs_sent", "Reminder jobs the Cloud API accepted."),
    "jobs_failed": ("jobs_failed", "Reminder jobs the Cloud API refused."),
    "jobs_expired": ("jobs_expired", "Reminder jobs expired before they could be sent."),
    "jobs_waiting": ("jobs_waiting", "Times a due job was put back to wait (quiet hours, limit)."),
}


class Metrics:
    """Counters and the processing latency of one app, with their registry."""

    __slots__ = (
        *COUNTERS,
        "dispatch_lag",
        "jobs_due",
        "jobs_skipped",
        "latency",
        "registry",
        "tier_headroom",
    )

    def __init__(self) -> None:
        self.received = 0
        self.duplicates = 0
        self.statuses = 0
        self.processed = 0
        self.failed = 0
        self.replies_sent = 0
        self.replies_as_template = 0
        self.replies_not_sent = 0
        self.send_failures = 0
        self.rejected_requests = 0
        self.templates_skipped_live = 0
        # reminder jobs (bot.jobs)
        self.jobs_claimed = 0
        self.jobs_queued = 0
        self.jobs_sent = 0
        self.jobs_failed = 0
        self.jobs_expired = 0
        self.jobs_waiting = 0
        self.jobs_skipped: dict[str, int] = {}  # by reason
        self.jobs_due = 0  # gauge: scheduled jobs due now, at the dispatcher's last look
        self.tier_headroom = -1  # gauge: new users the messaging limit still allows (-1: none)
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(_Counters(self))
        self.latency = Histogram(
            "windowbot_processing_latency_seconds",
            "Time from webhook receipt to the message's turn being stored.",
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.dispatch_lag = Histogram(
            "windowbot_jobs_dispatch_lag_seconds",
            "Time from a job's send_at to its hand-over to the outbox.",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of everything in the registry."""
        return generate_latest(self.registry)


class _Counters(Collector):
    """The :class:`Metrics` integers as Prometheus counters, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for attr, (name, help_text) in COUNTERS.items():
            yield CounterMetricFamily(
                f"windowbot_{name}", help_text, value=getattr(self.metrics, attr)
            )
        skipped = CounterMetricFamily(
            "windowbot_jobs_skipped", "Reminder jobs not sent, by reason.", labels=["reason"]
        )
        for reason, count in sorted(self.metrics.jobs_skipped.items()):
            skipped.add_metric([reason], count)
        yield skipped
        yield GaugeMetricFamily(
            "windowbot_jobs_due", "Scheduled reminder jobs due now.", value=self.metrics.jobs_due
        )
        yield GaugeMetricFamily(
            "windowbot_tier_headroom",
            "New users the messaging limit tier allows in the rolling 24 h (-1: no limit).",
            value=self.metrics.tier_headroom,
        )


def render_pricing(counts: Sequence[PricingCount]) -> str:
    """The pricing ledger as Prometheus gauges: messages by pricing category and type, and
    billable messages per UTC day (what Meta's status webhooks said, never a price)."""
    by_kind: dict[tuple[str, str, bool], int] = {}
    by_day: dict[str, int] = {}
    for c in counts:
        key = (c.category, c.type, c.billable)
        by_kind[key] = by_kind.get(key, 0) + c.count
        if c.billable:
            by_day[c.day] = by_day.get(c.day, 0) + c.count
    name, day = "windowbot_priced_messages", "windowbot_billable_messages"
    lines = [
        f"# HELP {name} Messages Meta priced, by pricing category and type (status webhooks).",
        f"# TYPE {name} gauge",
    ]
    for (category, kind, billable), n in sorted(by_kind.items()):
        labels = f'category="{category}",type="{kind}",billable="{str(billable).lower()}"'
        lines.append(f"{name}{{{labels}}} {n}")
    lines += [f"# HELP {day} Billable messages per UTC day.", f"# TYPE {day} gauge"]
    lines += [f'{day}{{day="{d}"}} {n}' for d, n in sorted(by_day.items())]
    return "\n".join(lines) + "\n"
