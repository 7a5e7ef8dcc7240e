"""The deadman's KV state: a save/load round trip, and alerts never acknowledged before a
restart are published by the next run."""

from __future__ import annotations

import msgpack
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from services.deadman.publisher import msg_id
from services.deadman.store import EPISODES, StateStore
from services.deadman.tracker import Judgement, Tracker
from shared.bootstrap import ensure_kv
from shared.clock import FakeClock
from shared.codec import encode
from shared.identity import NodeId
from shared.models import Alert
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector
from tests.integration.test_deadman_support import alerts, running


async def test_save_then_load_restores_nodes_and_open_episodes(
    nc: NATS, subjects: Subjects
) -> None:
    """Last-seen times (wall clock), boots, seqs and open episodes survive a save and a load."""
    kv, _ = await ensure_kv(
        nc.jetstream(), KeyValueConfig(bucket=subjects.state_bucket("deadman"), history=1)
    )
    c = FakeClock()
    t = Tracker(
        window=1.0, pending=0.5, grace=0.0, now=c.monotonic(), judgement=Judgement(site_min=10**6)
    )  # plain node pages, no site logic
    for i in range(300):
        t.heartbeat(f"dc{i % 3}.n{i}", c.monotonic(), "b", i + 1)
    c.advance(2.0)
    fired = t.advance(c.monotonic())
    t.heartbeat("dc0.n0", c.monotonic(), "b", 1000)
    offset = c.wall() - c.monotonic()
    await StateStore(kv, instance="a").save(t, to_wall=lambda m: m + offset, wall_now=c.wall())

    c2 = FakeClock(start_wall=c.wall() + 5.0, start_mono=50.0)
    t2 = Tracker(window=1.0, pending=0.5, grace=3.0, now=c2.monotonic())
    offset2 = c2.wall() - c2.monotonic()
    loaded = await StateStore(kv, instance="b").load(t2, to_mono=lambda w: w - offset2)
    assert loaded.nodes == 300 and loaded.saved_at == c.wall() and not loaded.rejected
    rec = t2.nodes["dc1.n1"]
    assert rec.seq == 2 and rec.boot == "b" and rec.last_seen is not None
    assert abs((rec.last_seen + offset2) - (c.wall() - 2.0)) < 1e-6
    assert len(fired) == 300 and len(t2.open) == 299 and "dc0.n0" not in t2.open
    assert t2.nodes["dc1.n1"].episode is not None
    assert t2.nodes["dc1.n1"].episode.alert_id == next(
        f.alert_id for f in fired if f.key == "dc1.n1"
    )


async def test_unacknowledged_alert_is_published_by_the_next_run(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """An alert left in the saved outbox (never acknowledged) goes out at the next start."""
    kv, _ = await ensure_kv(
        nc.jetstream(), KeyValueConfig(bucket=subjects.state_bucket("deadman"), history=1)
    )
    alert = Alert(
        id="silent.dc1.lost.x",
        kind="silent",
        state="firing",
        severity="page",
        site="dc1",
        node="lost",
        ts=1.7e9,
        since=1.7e9,
        last_seen=1.7e9,
        reason="r",
        summary="s",
    )
    subject = subjects.alert_silent(NodeId("dc1", "lost"))
    doc = {
        "v": 1,
        "saved_at": 1.7e9,
        "open": {},
        "sites": {},
        "outbox": [[subject, encode(alert), msg_id(alert), alert.id, "silent", "firing"]],
    }
    await kv.put(EPISODES, msgpack.packb(doc, use_bin_type=True))
    col = await Collector.on(nc, subjects.alert_all)
    async with running(nats_server.url, prefix):
        await col.wait_count(1, timeout=5)
    got = [a for _, a in alerts(col) if a.kind == "silent"]
    assert [(a.id, a.state) for a in got] == [("silent.dc1.lost.x", "firing")]
