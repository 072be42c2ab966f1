"""Metrics: prometheus-client's exposition of the counters, the histogram and the process."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bot.metrics import CONTENT_TYPE, Metrics


def families(metrics: Metrics) -> dict[str, dict[str, float]]:
    """Metric family → {sample name with labels: value}, parsed by prometheus-client."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        out[family.name] = {
            s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
            for s in family.samples
        }
    return out


class TestMetrics:
    def test_counters_histogram_and_process_metrics_parse(self) -> None:
        """Counters keep their names, the histogram is cumulative, process metrics are there."""
        metrics = Metrics()
        metrics.received += 3
        metrics.replies_sent += 2
        for seconds in (0.004, 0.2, 40.0):
            metrics.latency.observe(seconds)
        parsed = families(metrics)
        assert parsed["windowbot_messages_received"] == {"windowbot_messages_received_total": 3}
        assert parsed["windowbot_replies_sent"] == {"windowbot_replies_sent_total": 2}
        latency = parsed["windowbot_processing_latency_seconds"]
        assert latency["windowbot_processing_latency_seconds_bucket{le=0.005}"] == 1
        assert latency["windowbot_processing_latency_seconds_bucket{le=0.25}"] == 2
        assert latency["windowbot_processing_latency_seconds_bucket{le=+Inf}"] == 3
        assert latency["windowbot_processing_latency_seconds_count"] == 3
        assert "process_resident_memory_bytes" in parsed and "python_info" in parsed
        assert CONTENT_TYPE.startswith("text/plain; version=")

    def test_two_apps_never_share_numbers(self) -> None:
        """Each Metrics has its own registry: one's counts do not show in the other's."""
        one, two = Metrics(), Metrics()
        one.processed += 5
        one.latency.observe(0.1)
        parsed = families(two)
        assert parsed["windowbot_messages_processed"] == {"windowbot_messages_processed_total": 0}
        assert (
            parsed["windowbot_processing_latency_seconds"][
                "windowbot_processing_latency_seconds_count"
            ]
            == 0
        )
