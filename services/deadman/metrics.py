"""The deadman's Prometheus series. Values that describe current state (nodes by state, each
node's last heartbeat) are computed at scrape time by a collector, never kept up to date on the
hot path."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from services.deadman.tracker import Tracker

SKEW_BUCKETS = (
    -3600.0,
    -300.0,
    -60.0,
    -10.0,
    -2.0,
    -0.5,
    -0.1,
    0.1,
    0.5,
    2.0,
    10.0,
    60.0,
    300.0,
    3600.0,
)  # out to an hour: a skewed clock is still life, and how far off it is shows here


class HotCounters:
    """Plain numbers the heartbeat callback bumps (no locks, no label lookups); exported as a
    counter and a histogram at scrape time by ``HotCollector``."""

    __slots__ = ("heartbeats", "skew_buckets", "skew_count", "skew_sum")

    def __init__(self) -> None:
        self.heartbeats = 0
        self.skew_buckets = [0] * (len(SKEW_BUCKETS) + 1)
        self.skew_count = 0
        self.skew_sum = 0.0

    def observe_skew(self, skew: float) -> None:
        """Count one clock-skew sample."""
        self.skew_buckets[bisect.bisect_left(SKEW_BUCKETS, skew)] += 1
        self.skew_count += 1
        self.skew_sum += skew


class HotCollector(Collector):
    """Exports ``HotCounters``."""

    def __init__(self, hot: HotCounters) -> None:
        self.hot = hot

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        hb = CounterMetricFamily("fleetwatch_deadman_heartbeats", "Valid heartbeats processed")
        hb.add_metric([], self.hot.heartbeats)
        yield hb
        cumulative, buckets = 0, []
        for bound, n in zip([*SKEW_BUCKETS, float("inf")], self.hot.skew_buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        skew = HistogramMetricFamily(
            "fleetwatch_deadman_clock_skew_seconds",
            "Sender ts minus deadman receive time (wall clock), valid heartbeats",
        )
        skew.add_metric([], buckets, sum_value=self.hot.skew_sum)
        yield skew


@dataclass(frozen=True)
class DeadmanMetrics:
    """Counters the service increments; the state gauges come from ``StateCollector``."""

    rejected: Counter
    anomalies: Counter
    alerts: Counter
    publish_errors: Counter
    handler_errors: Counter
    hot: HotCounters

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DeadmanMetrics:
        """Register the series in ``registry``."""
        p = "fleetwatch_deadman"
        hot = HotCounters()
        registry.register(HotCollector(hot))
        return cls(
            rejected=Counter(
                f"{p}_rejected", "Heartbeats rejected, by reason", ["reason"], registry=registry
            ),
            anomalies=Counter(
                f"{p}_heartbeat_anomalies",
                "Heartbeats accepted despite something odd (clock_skew, seq_regression)",
                ["reason"],
                registry=registry,
            ),
            alerts=Counter(
                f"{p}_alerts",
                "Alert transitions queued, by kind and state",
                ["kind", "state"],
                registry=registry,
            ),
            publish_errors=Counter(
                f"{p}_publish_errors",
                "Alert publishes not acknowledged",
                ["reason"],
                registry=registry,
            ),
            handler_errors=Counter(
                f"{p}_errors",
                "Unexpected handler failures, by reason",
                ["reason"],
                registry=registry,
            ),
            hot=hot,
        )


class StateCollector(Collector):
    """Per-node last heartbeat and nodes-by-state, computed when scraped."""

    def __init__(
        self,
        tracker: Callable[[], Tracker | None],
        *,
        monotonic: Callable[[], float],
        wall: Callable[[], float],
        extra: Callable[[], dict[str, float]] | None = None,
    ) -> None:
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
        states = GaugeMetricFamily(
            "fleetwatch_deadman_nodes", "Tracked nodes by state", labels=["state"]
        )
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
