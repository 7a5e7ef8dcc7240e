"""The deadman service against a real nats-server (window 1 s, pending 0.5 s)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from nats.aio.client import Client as NATS

from shared.bootstrap import ensure_fleet
from shared.inventory import InventoryEntry
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, wait_for
from tests.integration.test_deadman_support import PENDING, WINDOW, Beater, alerts, running

LIMIT = WINDOW + PENDING


async def test_page_timing_and_resolve_with_same_id(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """An unregistered silent node pages at last_seen+1.5s (±) and resolves with its id."""
    col = await Collector.on(nc, subjects.alert_all)
    async with running(nats_server.url, prefix, startup_grace=0.0) as dm:
        b = Beater(nc, subjects, "dc1/n1")
        await b.beat()
        await wait_for(lambda: alerts(col, "dc1/n1"), timeout=5)
        at, fire = alerts(col, "dc1/n1")[0]
        lateness = at - (b.sent_at + LIMIT)
        assert -0.05 <= lateness <= 0.4, lateness
        assert (fire.kind, fire.state, fire.severity) == ("silent", "firing", "page")
        assert fire.last_seen is not None
        await b.beat()
        await wait_for(lambda: len(alerts(col, "dc1/n1")) >= 2, timeout=5)
        res = alerts(col, "dc1/n1")[1][1]
        assert res.state == "resolved" and res.id == fire.id
        st = dm.status()
        [node] = st["nodes"]
        assert node["registered"] is False and node["pid"] == 4242 and node["rev"] == 3
        # the stream kept both transitions, once each
        js = nc.jetstream()
        info = await js.stream_info(subjects.alerts_stream)
        assert info.state.messages == 2


async def test_never_seen_and_removed(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """An inventory node never heard from pages never_seen after grace; removal closes it."""
    fleet = await ensure_fleet(nc.jetstream(), subjects)
    await fleet.nodes.put("dc1.ghost", InventoryEntry(site="dc1", node="ghost").encode())
    col = await Collector.on(nc, subjects.alert_all)
    started = time.monotonic()
    async with running(nats_server.url, prefix):
        await wait_for(lambda: alerts(col, "dc1/ghost"), timeout=6)
        at, fire = alerts(col, "dc1/ghost")[0]
        assert fire.kind == "never_seen" and fire.last_seen is None
        assert at - started >= LIMIT - 0.05
        await fleet.nodes.delete("dc1.ghost")
        await wait_for(lambda: len(alerts(col, "dc1/ghost")) >= 2, timeout=5)
        res = alerts(col, "dc1/ghost")[1][1]
        assert (res.state, res.reason, res.id) == ("resolved", "removed", fire.id)


async def test_status_request_and_metrics(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """The status subject answers the contract's JSON; /metrics and /healthz answer from now."""
    async with running(nats_server.url, prefix) as dm:
        b = Beater(nc, subjects, "dc2/web-1")
        await b.beat()
        await wait_for(lambda: "dc2.web-1" in (dm.tracker.nodes if dm.tracker else {}))
        reply = await nc.request(subjects.service_status("deadman"), b"", timeout=2)
        st = json.loads(reply.data)
        assert st["service"] == "deadman" and st["blind"] is False
        assert st["window"] == WINDOW and st["pending"] == PENDING
        assert st["metrics_url"].startswith("http://127.0.0.1:")
        [n] = st["nodes"]
        assert n["site"] == "dc2" and n["node"] == "web-1" and n["state"] == "up"
        assert n["boot"] == "boot1" and n["alert_id"] is None and n["maintenance"] is False
        async with aiohttp.ClientSession() as http:
            async with http.get(st["metrics_url"] + "/metrics") as r:
                text = await r.text()
            async with http.get(st["metrics_url"] + "/healthz") as r:
                health = await r.json()
                assert r.status == 200 and health["ok"] is True
        assert 'node_last_heartbeat_timestamp_seconds{node="web-1",site="dc2"}' in text
        assert 'fleetwatch_deadman_nodes{state="up"} 1.0' in text
        assert "fleetwatch_deadman_heartbeats_total 1.0" in text


async def test_restart_contract_in_process(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """After a restart: a healthy node raises nothing, a node that died meanwhile pages once after
    grace, a firing alert is not fired again and resolves with its id; one self info event."""
    col = await Collector.on(nc, subjects.alert_all)
    healthy = Beater(nc, subjects, "dc1/ok")
    dies = Beater(nc, subjects, "dc1/dies")
    firing = Beater(nc, subjects, "dc1/firing")
    stop_ok, stop_dies = asyncio.Event(), asyncio.Event()
    bg = [
        asyncio.create_task(healthy.keep_beating(stop_ok)),
        asyncio.create_task(dies.keep_beating(stop_dies)),
    ]
    async with running(nats_server.url, prefix, startup_grace=0.0):
        await firing.beat()
        await wait_for(lambda: alerts(col, "dc1/firing"), timeout=5)
        first = alerts(col, "dc1/firing")[0][1]
    stop_dies.set()  # dies while the deadman is down
    await asyncio.sleep(0.6)
    restarted = time.monotonic()
    async with running(nats_server.url, prefix, startup_grace=1.0):
        await wait_for(lambda: alerts(col, "dc1/dies"), timeout=5)
        at, page = alerts(col, "dc1/dies")[0]
        assert page.state == "firing" and at >= restarted + 1.0 - 0.05
        await firing.beat()
        await wait_for(lambda: len(alerts(col, "dc1/firing")) >= 2, timeout=5)
        await asyncio.sleep(0.3)
    stop_ok.set()
    await asyncio.gather(*bg)
    assert alerts(col, "dc1/ok") == []
    assert [a.state for _, a in alerts(col, "dc1/dies")] == ["firing"]
    states = [(a.state, a.id) for _, a in alerts(col, "dc1/firing")]
    assert states == [("firing", first.id), ("resolved", first.id)]
    selfs = [a for _, a in alerts(col) if a.kind == "self"]
    assert len(selfs) == 1 and "restarted after a gap" in selfs[0].reason


async def test_maintenance_from_the_inventory(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """A node in maintenance does not page; after the window ends it gets a full window first."""
    fleet = await ensure_fleet(nc.jetstream(), subjects)
    until = time.time() + 1.0
    await fleet.nodes.put(
        "dc1.m", InventoryEntry(site="dc1", node="m", maintenance_until=until).encode()
    )
    col = await Collector.on(nc, subjects.alert_all)
    async with running(nats_server.url, prefix, startup_grace=0.0) as dm:
        b = Beater(nc, subjects, "dc1/m")
        await wait_for(lambda: dm.tracker is not None and "dc1.m" in dm.tracker.nodes)
        await b.beat()
        st = dm.status()
        assert st["nodes"][0]["maintenance"] is True
        await wait_for(lambda: alerts(col, "dc1/m"), timeout=6)
        at_wall = time.time() - (time.monotonic() - alerts(col, "dc1/m")[0][0])
        assert at_wall >= until + LIMIT - 0.05  # not before maintenance end + a full window
