"""Process counters and a latency histogram, exposed as Prometheus text on ``/metrics``."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from bot.store.base import PricingCount

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class Histogram:
    """A cumulative Prometheus histogram with fixed buckets (seconds)."""

    buckets: tuple[float, ...] = _BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        """Record one observation."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str) -> list[str]:
        """The exposition lines for this histogram."""
        lines, running = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{name}_bucket{{le="{le}"}} {running}')
        lines.append(f"{name}_sum {self.total}")
        lines.append(f"{name}_count {self.count}")
        return lines


@dataclass(slots=True)
class Metrics:
    """What one process has done since it started."""

    received: int = 0
    duplicates: int = 0
    statuses: int = 0
    processed: int = 0
    failed: int = 0
    replies_sent: int = 0
    replies_as_template: int = 0
    replies_not_sent: int = 0
    send_failures: int = 0
    rejected_requests: int = 0
    templates_skipped_live: int = 0
    latency: Histogram = field(default_factory=Histogram)

    def render(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        counters = {
            "received": ("messages_received", "Inbound messages accepted into the inbox"),
            "duplicates": ("messages_duplicate", "Inbound messages already in the inbox"),
            "statuses": ("statuses_received", "Status items accepted"),
            "processed": ("messages_processed", "Inbound messages handled by a flow"),
            "failed": ("messages_failed", "Inbound messages whose handling failed"),
            "replies_sent": ("replies_sent", "Replies accepted by the Cloud API"),
            "replies_as_template": ("replies_template", "Replies sent as template fallbacks"),
            "replies_not_sent": ("replies_not_sent", "Replies not sent (window, template)"),
            "send_failures": ("send_failures", "Replies the Cloud API refused"),
            "rejected_requests": ("webhook_rejected", "Webhook requests answered 4xx"),
            "templates_skipped_live": (
                "template_variants_skipped",
                "Template sends where Meta's live view skipped a variant (paused, re-categorized)",
            ),
        }
        lines: list[str] = []
        for attr, (name, help_text) in counters.items():
            metric = f"windowbot_{name}_total"
            lines += [
                f"# HELP {metric} {help_text}.",
                f"# TYPE {metric} counter",
                f"{metric} {getattr(self, attr)}",
            ]
        name = "windowbot_processing_latency_seconds"
        lines += [
            f"# HELP {name} Time from webhook receipt to the message's turn being stored.",
            f"# TYPE {name} histogram",
            *self.latency.render(name),
        ]
        return "\n".join(lines) + "\n"


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
