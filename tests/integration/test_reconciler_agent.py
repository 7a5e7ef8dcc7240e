"""The agent wired up in-process (run_agent) against real nats-servers: the truthful /healthz,
registration, a broker restart, the --apply-cmd actuator, and the SDK when a worker thread dies."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from services.reconciler.actuators import CommandActuator
from services.reconciler.sdk import HeartbeatPublisher, Liveness, liveness_health
from services.reconciler.service import AgentHandle, run_agent
from services.reconciler.settings import AgentSettings
from shared.bootstrap import ensure_fleet
from shared.bus import connect
from shared.clock import SystemClock
from shared.codec import decode
from shared.identity import NodeId
from shared.inventory import decode_entry, read_desired
from shared.metrics import bound_port, metrics_app, serve_http
from shared.models import Heartbeat, ReconcileReport
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, wait_for

NODE = NodeId.parse("dc1/n1")


@asynccontextmanager
async def agent(settings: AgentSettings) -> AsyncIterator[AgentHandle]:
    """Run the agent in this event loop until the block ends."""
    stop = asyncio.Event()
    ready: list[AgentHandle] = []
    task = asyncio.create_task(run_agent(settings, stop=stop, on_ready=ready.append))
    try:
        await wait_for(lambda: ready or task.done(), timeout=15, what="agent ready")
        if task.done():
            task.result()
        yield ready[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def settings_for(url: str, prefix: str, state: Path, **extra: Any) -> AgentSettings:
    return AgentSettings(
        nats=url, prefix=prefix, node=str(NODE), health_port=0, state_dir=state, **extra
    )


async def get(url: str, limit: float = 2.0) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit)) as s:
        async with s.get(url) as r:
            return r.status, await r.json()


async def test_healthz_is_computed_in_each_request_and_the_agent_registers(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, tmp_path: Path
) -> None:
    """/healthz is 200 with a ts and KV round trip fresh per request; --register writes the URL."""
    s = settings_for(nats_server.url, subjects.prefix, tmp_path, interval=0.2, register=True)
    async with agent(s) as handle:
        await wait_for(lambda: handle.loop.last_cycle_mono is not None, timeout=5)
        status, body = await get(handle.health_url)
        assert status == 200 and body["ok"] is True, body
        assert abs(body["ts"] - time.time()) < 1.0
        assert body["node"] == str(NODE) and body["kv_rtt"] > 0 and body["age"] < 1.0
        assert body["outcome"] == "unknown_desired"  # no desired key: reported, still alive
        _, again = await get(handle.health_url)
        assert again["ts"] > body["ts"] and again["kv_rtt"] != body["kv_rtt"]
        store = await ensure_fleet(nc.jetstream(), subjects)
        entry = decode_entry(NODE.key, (await store.nodes.get(NODE.key)).value)
        assert entry.health_url == handle.health_url
        async with aiohttp.ClientSession() as sess:
            async with sess.get(handle.health_url.replace("/healthz", "/metrics")) as r:
                text = await r.text()
        assert 'fleetwatch_agent_cycles_total{outcome="unknown_desired"}' in text
        assert "fleetwatch_agent_kv_read_seconds_bucket" in text


async def test_broker_restart_resumes_and_applies_changes_in_order(
    dedicated_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    """Broker restart: 503 and silence when down; then changes land in order, never rolled back."""
    subjects = Subjects(prefix)
    watcher = await connect(dedicated_server.url, name="test-watcher", ping_interval=1)
    hbs = await Collector.on(watcher, subjects.hb(NODE))
    reports = await Collector.on(watcher, subjects.reconcile(NODE))
    store = await ensure_fleet(watcher.jetstream(), subjects)

    async def put(doc: dict[str, Any]) -> int:
        return await store.desired.put(NODE.key, json.dumps(doc).encode())

    await put({"files": {"v": "1"}})
    s = settings_for(dedicated_server.url, prefix, tmp_path, interval=0.3, read_timeout=0.5)
    try:
        async with agent(s) as handle:
            await wait_for(lambda: (tmp_path / "v").exists(), timeout=5, what="rev 1 applied")
            await asyncio.to_thread(dedicated_server.stop)
            down_at = len(hbs.messages)
            status, body = await get(handle.health_url)
            assert status == 503 and "unreachable" in body["reason"]
            await asyncio.sleep(1.0)  # absence of heartbeats takes some waiting to see
            assert len(hbs.messages) == down_at
            await asyncio.to_thread(dedicated_server.start)
            # Written as soon as the broker is back, before the agent's client has reconnected.
            await wait_for(lambda: watcher.is_connected, timeout=10)
            rev2 = await put({"files": {"v": "2"}})
            rev3 = await put({"files": {"v": "3"}})
            await wait_for(
                lambda: (tmp_path / "v").read_text() == "3",
                timeout=10,
                what="rev 3 applied after the restart",
            )
            await wait_for(lambda: len(hbs.messages) > down_at + 2, timeout=5)
            status, body = await get(handle.health_url)
            assert status == 200 and body["rev"] == rev3
    finally:
        await watcher.close()
    applied = [decode(ReconcileReport, m.data).applied_rev for _, m in reports.messages]
    seen = [r for r in applied if r is not None]
    assert seen == sorted(seen), f"applied revision went back: {seen}"
    assert rev2 > 1 and seen[-1] == rev3
    beats = [decode(Heartbeat, m.data) for _, m in hbs.messages]
    # One boot throughout; seq only grows (the watcher may miss some while it reconnects).
    assert len({b.boot for b in beats}) == 1
    assert [b.seq for b in beats] == sorted({b.seq for b in beats})


async def test_apply_cmd_gets_the_document_and_reports_stderr_and_timeouts(tmp_path: Path) -> None:
    """--apply-cmd: JSON on stdin, exit 0 applies; failures (stderr), timeouts reported."""
    out = tmp_path / "out.json"
    ok = CommandActuator(f"cat > {out}; echo note >&2", state_dir=tmp_path, timeout=5)
    result = await ok.apply({"image": "app:v2"}, revision=4)
    assert result.ok and json.loads(out.read_text()) == {"image": "app:v2"}
    assert "stderr: note" in result.applied
    assert await ok.current() == {"image": "app:v2"}
    bad = CommandActuator("echo broken thing >&2; exit 3", state_dir=tmp_path / "b", timeout=5)
    result = await bad.apply({"x": 1}, revision=5)
    assert not result.ok and result.errors == (
        "apply command exited with 3",
        "stderr: broken thing",
    )
    assert await bad.current() == {}
    slow = CommandActuator("sleep 30", state_dir=tmp_path / "c", timeout=0.3)
    t0 = time.monotonic()
    result = await slow.apply({"x": 1}, revision=6)
    assert not result.ok and "timed out after 0.3s" in result.errors[0]
    assert time.monotonic() - t0 < 5


async def test_dead_worker_thread_means_503_and_no_heartbeats(nc: NATS, subjects: Subjects) -> None:
    """SDK: the worker thread dies, HTTP keeps serving: /healthz turns 503 and heartbeats stop."""
    clock = SystemClock()
    live = Liveness(clock=clock, max_age=0.5)
    store = await ensure_fleet(nc.jetstream(), subjects)

    async def broker_check() -> dict[str, Any]:
        read = await read_desired(store.desired, NODE, timeout=0.5)
        if read.status == "read_error":
            raise RuntimeError(read.error)
        return {"desired": read.status}

    def worker(units: int) -> None:
        for _ in range(units):
            time.sleep(0.02)
            live.touch()
        # ...and the thread ends, as if an exception had killed it.

    hbs = await Collector.on(nc, subjects.hb(NODE))
    runner = await serve_http(
        metrics_app(
            CollectorRegistry(), liveness_health(live, node=NODE, clock=clock, check=broker_check)
        ),
        host="127.0.0.1",
        port=0,
    )
    url = f"http://127.0.0.1:{bound_port(runner)}/healthz"
    stop = asyncio.Event()
    pub = HeartbeatPublisher(
        nc=nc, subjects=subjects, node=NODE, liveness=live, clock=clock, interval=0.1
    )
    task = asyncio.create_task(pub.run(stop))
    thread = threading.Thread(target=worker, args=(40,), daemon=True)
    try:
        thread.start()
        await hbs.wait_count(3)
        status, body = await get(url)
        assert status == 200 and body["desired"] == "missing"
        await asyncio.to_thread(thread.join)
        died = time.monotonic()

        async def unhealthy() -> bool:
            return (await get(url))[0] == 503

        await wait_for(unhealthy, timeout=3, what="503 after the worker died")
        assert time.monotonic() - died < 0.5 + 1.0  # within the freshness limit (plus slack)
        count = len(hbs.messages)
        await asyncio.sleep(0.5)  # several publisher intervals: none may carry a heartbeat
        assert len(hbs.messages) == count
    finally:
        stop.set()
        await task
        await runner.cleanup()
