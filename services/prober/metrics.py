"""The prober's Prometheus series, registered on a registry the caller owns (tests use a fresh one).

Per-target series follow the blackbox exporter's names (``probe_success``,
``probe_duration_seconds``) so existing dashboards and rules read them; the duration histogram
has no per-node label, so a thousand targets cost a thousand gauges, not a thousand histograms.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics import BusMetrics

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class ProberMetrics:
    """Every series the prober exports."""

    success: Gauge
    body_age: Gauge
    duration: Histogram
    verdicts: Counter
    timeout: Gauge
    interval: Gauge
    targets: Gauge
    blind: Gauge
    skipped: Counter
    alerts: Counter
    publish_retries: Counter
    errors: Counter
    bus: BusMetrics

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ProberMetrics:
        """Register the series on ``registry``."""
        p = "fleetwatch_prober"
        return cls(
            success=Gauge(
                "probe_success",
                "1 if the last probe was fresh",
                ["site", "node"],
                registry=registry,
            ),
            body_age=Gauge(
                "probe_body_age_seconds",
                "now minus the body timestamp of the last probe (NaN if none)",
                ["site", "node"],
                registry=registry,
            ),
            duration=Histogram(
                "probe_duration_seconds",
                "Whole-request time of each probe",
                buckets=_BUCKETS,
                registry=registry,
            ),
            verdicts=Counter(
                f"{p}_verdicts", "Probe results by verdict", ["verdict"], registry=registry
            ),
            timeout=Gauge(
                f"{p}_timeout_seconds", "Effective whole-request probe deadline", registry=registry
            ),
            interval=Gauge(
                f"{p}_interval_seconds", "Time between two probes of one target", registry=registry
            ),
            targets=Gauge(f"{p}_targets", "Targets being probed", registry=registry),
            blind=Gauge(
                f"{p}_blind",
                "1 while every target fails at once (we suspect ourselves)",
                registry=registry,
            ),
            skipped=Counter(
                f"{p}_skipped_slots",
                "Probe slots missed (started late by a slot)",
                registry=registry,
            ),
            alerts=Counter(
                f"{p}_alerts",
                "Alerts published by kind and state",
                ["kind", "state"],
                registry=registry,
            ),
            publish_retries=Counter(
                f"{p}_alert_publish_retries",
                "Alert publishes or state writes retried, by reason",
                ["reason"],
                registry=registry,
            ),
            errors=Counter(
                f"{p}_errors",
                "Errors the prober survived, by reason",
                ["reason"],
                registry=registry,
            ),
            bus=BusMetrics.create(registry, "prober"),
        )
