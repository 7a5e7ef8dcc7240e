"""The agent's Prometheus series; one ``AgentMetrics`` may serve many loops in a process."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class AgentMetrics:
    """Series named ``fleetwatch_agent_*``."""

    cycles: Counter
    errors: Counter
    heartbeats: Counter
    kv_read: Histogram
    cycle_seconds: Histogram
    lateness: Histogram
    applied_revision: Gauge
    last_cycle: Gauge
    health: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AgentMetrics:
        """Register the series in ``registry``."""
        p = "fleetwatch_agent"
        return cls(
            cycles=Counter(
                f"{p}_cycles", "Reconcile cycles by outcome", ["outcome"], registry=registry
            ),
            errors=Counter(
                f"{p}_reconcile_errors", "Reconcile errors by reason", ["reason"], registry=registry
            ),
            heartbeats=Counter(f"{p}_heartbeats", "Heartbeats published", registry=registry),
            kv_read=Histogram(
                f"{p}_kv_read_seconds",
                "Desired-state read round trip",
                buckets=_FAST,
                registry=registry,
            ),
            cycle_seconds=Histogram(
                f"{p}_cycle_seconds",
                "Wall time of one reconcile cycle",
                buckets=_FAST,
                registry=registry,
            ),
            lateness=Histogram(
                f"{p}_cycle_lateness_seconds",
                "How late a cycle started against its schedule",
                buckets=_FAST,
                registry=registry,
            ),
            applied_revision=Gauge(
                f"{p}_applied_revision", "Desired revision last applied", registry=registry
            ),
            last_cycle=Gauge(
                f"{p}_last_cycle_timestamp_seconds",
                "Unix time the last cycle completed",
                registry=registry,
            ),
            health=Counter(
                f"{p}_health_checks", "Health requests by result", ["result"], registry=registry
            ),
        )
