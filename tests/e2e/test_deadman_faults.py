"""The deadman under faults, end to end with real processes: a stopped broker (blind), two
replicas with one killed, and a partitioned site of 50 simulated nodes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from shared.models import Alert
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.e2e.test_deadman_kill import ready, start
from tests.harness import Collector, wait_for
from tests.integration.test_deadman_support import Beater, alerts


async def stream_alerts(nc: NATS, subjects: Subjects) -> list[Alert]:
    """Every alert FLEET_ALERTS holds, in order."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(subjects.alerts_stream)
    except NotFoundError:
        return []
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        m = await js.get_msg(subjects.alerts_stream, seq)
        assert m.data is not None
        out.append(Alert.model_validate(msgpack.unpackb(m.data)))
    return out


async def instances_ready(nc: NATS, subjects: Subjects, names: set[str]) -> None:
    """Wait until every named replica answers the status subject (each one, not just any)."""
    seen: set[str] = set()

    async def cb(msg: Msg) -> None:
        if msg.data:  # an empty reply is the broker's "no responders" status
            seen.add(json.loads(msg.data)["instance"])

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=cb)

    async def ask() -> bool:
        await nc.publish(subjects.service_status("deadman"), b'{"limit": 0}', reply=inbox)
        await nc.flush()
        return names <= seen

    await wait_for(ask, timeout=20, interval=0.2, what=f"replicas {names} ready")
    await sub.unsubscribe()


def stop_all(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


async def test_blind_when_the_broker_stops(
    dedicated_server: EmbeddedServer, subjects: Subjects, prefix: str, tmp_path: Path
) -> None:
    """Broker down: one self page then its resolve; no node pages for the blind stretch; a node
    that really died during it pages one full window after sight returns."""
    srv = dedicated_server
    nc = await nats.connect(srv.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    proc = start(srv.url, prefix, tmp_path / "dm.log", "0", "--blind-after", "1.5")
    alive = Beater(nc, subjects, "dc1/alive")
    dies = Beater(nc, subjects, "dc1/dies")
    stop_alive, stop_dies = asyncio.Event(), asyncio.Event()
    bg = [
        asyncio.create_task(alive.keep_beating(stop_alive)),
        asyncio.create_task(dies.keep_beating(stop_dies)),
    ]
    try:
        await ready(nc, subjects, proc)
        await asyncio.sleep(0.3)
        stop_dies.set()
        srv.stop()
        await asyncio.sleep(3.0)  # a stretch far longer than window + pending
        srv.start()
        back = time.monotonic()
        await wait_for(lambda: nc.is_connected, timeout=10)
        await ready(nc, subjects, proc)

        async def dies_paged() -> bool:
            return any(
                a.node == "dies" and a.state == "firing" for a in await stream_alerts(nc, subjects)
            )

        await wait_for(dies_paged, timeout=10, what="page for the node that died")
        paged_after = time.monotonic() - back
        await asyncio.sleep(0.5)
        got = await stream_alerts(nc, subjects)
    finally:
        stop_alive.set()
        await asyncio.gather(*bg)
        stop_all(proc)
        await nc.close()
    log = (tmp_path / "dm.log").read_text()
    assert [a for a in got if a.node == "alive"] == [], log
    assert [(a.state, a.kind) for a in got if a.node == "dies"] == [("firing", "silent")]
    selfs = [(a.kind, a.state) for a in got if a.kind == "self"]
    assert selfs == [("self", "firing"), ("self", "resolved")], got
    assert paged_after >= 1.5 - 0.3  # a full window after sight returned (broker restart ~0.3s)


async def test_two_replicas_one_stream_and_a_kill(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str, tmp_path: Path
) -> None:
    """Two replicas: identical ids and Nats-Msg-Ids, so the stream holds each transition once;
    after kill -9 of one, the other still pages, resolves and pages again, nothing lost or
    doubled."""
    col = await Collector.on(nc, subjects.alert_all)
    r1 = start(nats_server.url, prefix, tmp_path / "r1.log", "0", instance="r1")
    r2 = start(nats_server.url, prefix, tmp_path / "r2.log", "0", instance="r2")
    x = Beater(nc, subjects, "dc1/x")
    y = Beater(nc, subjects, "dc1/y")
    stop_y = asyncio.Event()
    try:
        await instances_ready(nc, subjects, {"r1", "r2"})
        bg = asyncio.create_task(y.keep_beating(stop_y))
        await x.beat()
        # both replicas page x: two core messages, one stored
        await wait_for(lambda: len(alerts(col, "dc1/x")) >= 2, timeout=8)
        ids = {a.id for _, a in alerts(col, "dc1/x")}
        sources = {a.source for _, a in alerts(col, "dc1/x")}
        assert len(ids) == 1 and sources == {"deadman/r1", "deadman/r2"}
        r1.kill()
        r1.wait(5)
        await x.beat()  # resolve, from r2 alone
        stop_y.set()  # y dies after the kill: r2 must still page it
        await bg
        await wait_for(lambda: any(a.state == "firing" for _, a in alerts(col, "dc1/y")), timeout=8)
        await asyncio.sleep(0.3)
        got = await stream_alerts(nc, subjects)
    finally:
        stop_y.set()
        stop_all(r1, r2)
    node_alerts = [(a.node, a.state, a.id) for a in got if a.kind == "silent"]
    [xid] = ids
    assert node_alerts[:2] == [("x", "firing", xid), ("x", "resolved", xid)]
    # x is silent again after its resolve: a new episode pages (it must not wait for re-notify)
    later = sorted(node_alerts[2:])
    assert [(n, s) for n, s, _ in later] == [("x", "firing"), ("y", "firing")]
    assert later[0][2] != xid


async def test_partitioned_site_pages_once(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str, tmp_path: Path
) -> None:
    """50 nodes of one site go silent together: one site page, 50 warnings (not 50 pages); when
    the site returns, one site resolve and one resolve per node."""
    col = await Collector.on(nc, subjects.alert_all)
    proc = start(nats_server.url, prefix, tmp_path / "dm.log", "0")
    site = [Beater(nc, subjects, f"dc1/n{i}") for i in range(50)]
    other = [Beater(nc, subjects, f"dc2/n{i}") for i in range(5)]
    stop_site, stop_other = asyncio.Event(), asyncio.Event()

    async def beat_group(group: list[Beater], stop: asyncio.Event) -> None:
        while not stop.is_set():
            for b in group:
                b.seq += 1
                await b.beat()
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass

    try:
        await ready(nc, subjects, proc)
        t_site = asyncio.create_task(beat_group(site, stop_site))
        t_other = asyncio.create_task(beat_group(other, stop_other))
        await asyncio.sleep(0.5)
        stop_site.set()
        await t_site
        await wait_for(
            lambda: len([a for _, a in alerts(col) if a.kind == "silent"]) >= 50, timeout=8
        )
        fired = alerts(col)
        stop_site.clear()
        t_site = asyncio.create_task(beat_group(site, stop_site))
        await wait_for(
            lambda: sum(1 for _, a in alerts(col) if a.state == "resolved") >= 51, timeout=8
        )
        await asyncio.sleep(0.3)
        stop_site.set()
        stop_other.set()
        await asyncio.gather(t_site, t_other)
    finally:
        stop_all(proc)
    site_alerts = [(a.state, a.site) for _, a in alerts(col) if a.kind == "site"]
    assert site_alerts == [("firing", "dc1"), ("resolved", "dc1")]
    nodes = [a for _, a in fired if a.kind == "silent"]
    assert len(nodes) == 50 and {a.severity for a in nodes} == {"warning"}
    assert {a.site for a in nodes} == {"dc1"}
    resolves = [a for _, a in alerts(col) if a.kind == "silent" and a.state == "resolved"]
    assert len(resolves) == 50 and {a.id for a in resolves} == {a.id for a in nodes}


async def test_frozen_deadman_judges_nobody_for_the_stall(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str, tmp_path: Path
) -> None:
    """SIGSTOP the deadman longer than window+pending while a node keeps beating: after SIGCONT
    its backlog makes it blind first (canary late), so the live node never pages."""
    col = await Collector.on(nc, subjects.alert_all)
    proc = start(nats_server.url, prefix, tmp_path / "dm.log", "0", "--blind-after", "1.5")
    alive = Beater(nc, subjects, "dc1/alive")
    stop = asyncio.Event()
    bg = asyncio.create_task(alive.keep_beating(stop))
    try:
        await ready(nc, subjects, proc)
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGSTOP)
        await asyncio.sleep(2.5)
        proc.send_signal(signal.SIGCONT)
        await wait_for(
            lambda: any(a.kind == "self" and a.state == "resolved" for _, a in alerts(col)),
            timeout=10,
        )
        await asyncio.sleep(2.0)  # past a full window after sight returned
    finally:
        stop.set()
        await bg
        stop_all(proc)
    assert alerts(col, "dc1/alive") == [], (tmp_path / "dm.log").read_text()
    assert [(a.kind, a.state) for _, a in alerts(col)] == [("self", "firing"), ("self", "resolved")]
