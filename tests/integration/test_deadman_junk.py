"""Junk on the heartbeat subjects never crashes the deadman nor keeps a silent node green."""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from pydantic import ValidationError

from shared.models import Heartbeat
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, wait_for
from tests.integration.test_deadman_support import LIMIT_SLACK, Beater, alerts, running

VICTIM = "dc1/victim"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
)


def near_heartbeats() -> st.SearchStrategy[dict[str, Any]]:
    """Heartbeat-shaped maps for the victim with one or more fields poisoned."""
    good: dict[str, Any] = {
        "v": 1,
        "site": "dc1",
        "node": "victim",
        "boot": "boot1",
        "seq": 10**6,
        "ts": time.time(),
    }
    return (
        st.dictionaries(
            st.sampled_from([*good, "interval", "rev", "pid", "extra"]),
            scalars,
            min_size=1,
            max_size=8,
        )
        .map(lambda bad: {**good, **bad})
        .filter(_invalid)
    )


def _invalid(d: dict[str, Any]) -> bool:
    try:
        Heartbeat.model_validate(d)
    except ValidationError:
        return True
    return False


def payloads() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        near_heartbeats().map(lambda d: msgpack.packb(d, use_bin_type=True)),
        near_heartbeats().map(lambda d: json.dumps(d).encode()),
        st.recursive(
            scalars,
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
            max_leaves=10,
        ).map(lambda o: msgpack.packb(o, use_bin_type=True)),
    )


def crafted() -> list[bytes]:
    """The classic ways to fake a sign of life."""
    base: dict[str, Any] = {
        "v": 1,
        "site": "dc1",
        "node": "victim",
        "boot": "boot1",
        "seq": 10**6,
        "ts": time.time(),
    }
    out = [
        json.dumps({**base, "ts": "NaN"}).encode(),
        b'{"v":1,"site":"dc1","node":"victim","boot":"b","seq":1,"ts":NaN}',
        msgpack.packb({**base, "ts": math.nan}),
        msgpack.packb({**base, "seq": True}),
        msgpack.packb({**base, "v": 2}),
        msgpack.packb({**base, "node": "other"}),  # wrong subject
        msgpack.packb({**base, "boot": "boot1", "seq": 1}),  # replay of an old seq
        b"{" + b" " * 70000 + b"}",  # oversized
        b"true",
        b"",
    ]
    return out


def generate(n: int) -> list[bytes]:
    found: list[bytes] = []

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(payloads())
    def collect(p: bytes) -> None:
        found.append(p)

    collect()
    return found


async def test_junk_never_keeps_a_silent_node_green(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Hypothesis junk on the victim's subject (and others) during its silence: the page still
    lands on time, every junk message is counted as rejected, the deadman keeps running."""
    junk = crafted() + generate(150)
    col = await Collector.on(nc, subjects.alert_all)
    async with running(nats_server.url, prefix, startup_grace=0.0) as dm:
        victim = Beater(nc, subjects, VICTIM, boot="boot1")
        await victim.beat()
        t0 = victim.sent_at
        subj = subjects.hb(victim.node)
        for i, p in enumerate(junk):
            await nc.publish(subj if i % 3 else f"{subjects.prefix}.hb.dc1.x", p)
            if i % 20 == 0:
                await nc.flush()
                await asyncio.sleep(0.02)
        await nc.flush()
        await wait_for(lambda: alerts(col, VICTIM), timeout=5)
        at, page = alerts(col, VICTIM)[0]
        assert page.state == "firing"
        assert -0.05 <= at - (t0 + 1.5) <= LIMIT_SLACK
        rejected = sum(
            s.value
            for m in dm.registry.collect()
            if m.name == "fleetwatch_deadman_rejected"
            for s in m.samples
            if s.name.endswith("_total")
        )
        # every junk message was refused (a few generated ones may be valid for node x)
        assert rejected >= len(junk) - 5
        assert dm.tracker is not None and dm.tracker.nodes["dc1.victim"].seq == 1


async def test_flood_of_made_up_nodes_is_capped(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Valid heartbeats for ever-new names stop being tracked past --max-unregistered."""
    async with running(nats_server.url, prefix, max_unregistered=3) as dm:
        for i in range(5):
            await Beater(nc, subjects, f"dc1/fake{i}").beat()

        def rejected() -> float:
            return sum(
                s.value
                for m in dm.registry.collect()
                if m.name == "fleetwatch_deadman_rejected"
                for s in m.samples
                if s.labels.get("reason") == "too_many_unregistered" and s.name.endswith("_total")
            )

        await wait_for(lambda: rejected() == 2, timeout=5)
        assert dm.tracker is not None and len(dm.tracker.nodes) == 3
