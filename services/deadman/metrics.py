"""The deadman's Prometheus series. Values that describe current state (nodes by state, each
node's last heartbeat) are computed at scrape time by a collector, never kept up to date on the
hot path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.deadman.tracker import Tracker

SKEW_BUCKETS = (-60.0, -10.0, -2.0, -0.5, -0.1, 0.1, 0.5, 2.0, 10.0, 60.0)


@dataclass(frozen=True)
class DeadmanMetrics:
    """Counters the service increments; the state gauges come from ``StateCollector``."""

    heartbeats: Counter
    rejected: Counter
    alerts: Counter
    skew: Histogram
    publish_errors: Counter
    handler_errors: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DeadmanMetrics:
        """Register the series in ``registry``."""
        p = "fleetwatch_deadman"
        return cls(
            heartbeats=Counter(f"{p}_heartbeats", "Valid heartbeats processed",
                               registry=registry),
            rejected=Counter(f"{p}_rejected", "Heartbeats rejected, by reason", ["reason"],
                             registry=registry),
            alerts=Counter(f"{p}_alerts", "Alert transitions queued, by kind and state",
                           ["kind", "state"], registry=registry),
            skew=Histogram(f"{p}_clock_skew_seconds",
                           "Sender ts minus deadman receive time (wall clock)",
                           buckets=SKEW_BUCKETS, registry=registry),
            publish_errors=Counter(f"{p}_publish_errors", "Alert publishes not acknowledged",
                                   ["reason"], registry=registry),
            handler_errors=Counter(f"{p}_errors", "Unexpected handler failures, by reason",
                                   ["reason"], registry=registry),
        )


class StateCollector(Collector):
    """Per-node last heartbeat and nodes-by-state, computed when scraped."""

    def __init__(self, tracker: Callable[[], Tracker | None], *,
                 monotonic: Callable[[], float], wall: Callable[[], float],
                 extra: Callable[[], dict[str, float]] | None = None) -> None:
        self._tracker = tracker
        self._mono = monotonic
        self._wall = wall
        self._extra = extra

    def collect(self) -> Iterator[GaugeMetricFamily]:
        tracker = self._tracker()
        if tracker is None:
            return
        now = self._mono()
        offset = self._wall() - now
        last = GaugeMetricFamily(
            "node_last_heartbeat_timestamp_seconds",
            "Unix time the deadman last received a valid heartbeat from the node",
            labels=["site", "node"],
        )
        for key, rec in tracker.nodes.items():
            if rec.last_seen is not None:
                site, _, node = key.partition(".")
                last.add_metric([site, node], rec.last_seen + offset)
        yield last
        states = GaugeMetricFamily("fleetwatch_deadman_nodes", "Tracked nodes by state",
                                   labels=["state"])
        for state, n in tracker.counts(now).items():
            states.add_metric([state], n)
        yield states
        firing = GaugeMetricFamily("fleetwatch_deadman_alerts_firing", "Open node alerts")
        firing.add_metric([], sum(1 for r in tracker.nodes.values() if r.episode is not None))
        yield firing
        blind = GaugeMetricFamily("fleetwatch_deadman_blind", "1 while the deadman cannot see")
        blind.add_metric([], 1.0 if tracker.blind else 0.0)
        yield blind
        if self._extra is not None:
            for name, value in self._extra().items():
                g = GaugeMetricFamily(f"fleetwatch_deadman_{name}", name.replace("_", " "))
                g.add_metric([], value)
                yield g
