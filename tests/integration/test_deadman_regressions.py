"""Regressions from the adversarial review against the real nats-server: a skewed sender clock
and a forged huge seq must not make a live node page."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from shared.codec import encode
from shared.models import Heartbeat
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, wait_for
from tests.integration.test_deadman_support import PENDING, WINDOW, Beater, alerts, running

NODE = "dc1/live"


def counter(registry: CollectorRegistry, name: str, reason: str) -> float:
    """The ``_total`` sample of a labelled counter (0 if absent)."""
    return sum(
        s.value
        for m in registry.collect()
        if m.name == name
        for s in m.samples
        if s.name.endswith("_total") and s.labels.get("reason") == reason
    )


def skew_count(registry: CollectorRegistry) -> float:
    """How many samples the clock-skew histogram holds (its +Inf bucket: negative bounds leave
    the family without a _count sample)."""
    return sum(
        s.value
        for m in registry.collect()
        if m.name == "fleetwatch_deadman_clock_skew_seconds"
        for s in m.samples
        if s.name.endswith("_bucket") and s.labels.get("le") == "+Inf"
    )


class SkewedBeater(Beater):
    """A node whose clock is ``offset`` seconds off."""

    def __init__(self, nc: NATS, subjects: Subjects, node: str, offset: float) -> None:
        super().__init__(nc, subjects, node)
        self.offset = offset

    async def beat(self) -> None:
        self.seq += 1
        hb = Heartbeat(
            site=self.node.site,
            node=self.node.node,
            boot=self.boot,
            seq=self.seq,
            ts=max(0.0, time.time() + self.offset),
        )
        await self.nc.publish(self.subjects.hb(self.node), encode(hb))
        await self.nc.flush()
        self.sent_at = time.monotonic()


async def keep_up_for(beater: Beater, seconds: float) -> None:
    """Beat every 0.2 s for ``seconds`` (longer than window+pending)."""
    stop = asyncio.Event()
    task = asyncio.create_task(beater.keep_beating(stop))
    try:
        await asyncio.sleep(seconds)  # the span under test, not a wait for an outcome
    finally:
        stop.set()
        await task


async def test_skewed_sender_clock_is_still_a_sign_of_life(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Heartbeats whose ts is 1000 s off keep the node up, land in the skew histogram and are
    counted as clock_skew anomalies; silence afterwards still pages."""
    col = await Collector.on(nc, subjects.alert_all)
    async with running(nats_server.url, prefix, startup_grace=0.0) as dm:
        behind = SkewedBeater(nc, subjects, NODE, -1000.0)
        ahead = SkewedBeater(nc, subjects, "dc1/ahead", 1000.0)
        await asyncio.gather(*(keep_up_for(b, 2 * (WINDOW + PENDING)) for b in (behind, ahead)))
        assert alerts(col) == [], "a skewed node paged while heartbeating"
        await wait_for(lambda: len(alerts(col)) == 2, timeout=5, what="both pages after silence")
        assert counter(dm.registry, "fleetwatch_deadman_heartbeat_anomalies", "clock_skew") > 10
        assert skew_count(dm.registry) > 10
        assert counter(dm.registry, "fleetwatch_deadman_rejected", "stale_ts") == 0


async def test_forged_huge_seq_does_not_make_a_live_node_page(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """One heartbeat with seq 2**64-1 for a live node: the real ones that follow still count."""
    col = await Collector.on(nc, subjects.alert_all)
    async with running(nats_server.url, prefix, startup_grace=0.0) as dm:
        beater = Beater(nc, subjects, NODE)
        await beater.beat()
        forged = Heartbeat(site="dc1", node="live", boot="boot1", seq=2**64 - 1, ts=time.time())
        await nc.publish(subjects.hb(beater.node), encode(forged))
        await keep_up_for(beater, 2 * (WINDOW + PENDING))
        assert alerts(col, NODE) == []
        assert counter(dm.registry, "fleetwatch_deadman_rejected", "replayed") == 0
        assert counter(dm.registry, "fleetwatch_deadman_heartbeat_anomalies", "seq_regression") == 1
