"""Process counters and a latency histogram, exposed as Prometheus text on ``/metrics``."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

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
    latency: Histogram = field(default_factory=Histogram)
    # reminder jobs (bot.jobs)
    jobs_due: int = 0  # gauge: scheduled jobs due now, at the dispatcher's last look
    jobs_claimed: int = 0
    jobs_queued: int = 0
    jobs_sent: int = 0
    jobs_failed: int = 0
    jobs_expired: int = 0
    jobs_waiting: int = 0
    jobs_skipped: dict[str, int] = field(default_factory=dict)  # by reason
    tier_headroom: int = -1  # gauge: new users the messaging limit still allows (-1: none)
    dispatch_lag: Histogram = field(
        default_factory=lambda: Histogram(
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
            counts=[0] * 12,
        )
    )

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
        }
        lines: list[str] = []
        for attr, (name, help_text) in counters.items():
            metric = f"windowbot_{name}_total"
            lines += [
                f"# HELP {metric} {help_text}.",
                f"# TYPE {metric} counter",
                f"{metric} {getattr(self, attr)}",
            ]
        for attr, help_text in (
            ("jobs_claimed", "Reminder jobs claimed by this process's dispatcher"),
            ("jobs_queued", "Reminder jobs handed to their user's outbox"),
            ("jobs_sent", "Reminder jobs the Cloud API accepted"),
            ("jobs_failed", "Reminder jobs the Cloud API refused"),
            ("jobs_expired", "Reminder jobs expired before they could be sent"),
            ("jobs_waiting", "Times a due job was put back to wait (quiet hours, limit)"),
        ):
            metric = f"windowbot_{attr}_total"
            lines += [f"# HELP {metric} {help_text}.", f"# TYPE {metric} counter"]
            lines.append(f"{metric} {getattr(self, attr)}")
        metric = "windowbot_jobs_skipped_total"
        lines += [f"# HELP {metric} Reminder jobs not sent, by reason.", f"# TYPE {metric} counter"]
        for reason, count in sorted(self.jobs_skipped.items()):
            label = reason.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{metric}{{reason="{label}"}} {count}')
        for attr, help_text in (
            ("jobs_due", "Scheduled reminder jobs due now"),
            ("tier_headroom", "New users the messaging limit tier allows in the rolling 24 h"),
        ):
            metric = f"windowbot_{attr}"
            lines += [f"# HELP {metric} {help_text}.", f"# TYPE {metric} gauge"]
            lines.append(f"{metric} {getattr(self, attr)}")
        name = "windowbot_jobs_dispatch_lag_seconds"
        lines += [
            f"# HELP {name} Time from a job's send_at to its hand-over to the outbox.",
            f"# TYPE {name} histogram",
            *self.dispatch_lag.render(name),
        ]
        name = "windowbot_processing_latency_seconds"
        lines += [
            f"# HELP {name} Time from webhook receipt to the message's turn being stored.",
            f"# TYPE {name} histogram",
            *self.latency.render(name),
        ]
        return "\n".join(lines) + "\n"
