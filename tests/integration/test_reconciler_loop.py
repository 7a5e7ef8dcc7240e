"""One ReconcileLoop against a real nats-server: the cycle's order, unknown desired state,
stale revisions, drift, failed reads, and 500 loops on one connection spreading their reads."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from services.reconciler.actuators import FilesActuator, MemoryActuator
from services.reconciler.loop import ReconcileLoop
from services.reconciler.metrics import AgentMetrics
from services.reconciler.state import FileRevisions, MemoryRevisions
from shared.bootstrap import FleetStore, ensure_fleet
from shared.clock import SystemClock
from shared.codec import decode
from shared.identity import NodeId
from shared.models import Heartbeat, ReconcileReport
from shared.subjects import Subjects
from tests.harness import Collector

NODE = NodeId.parse("dc1/n1")


@pytest.fixture
async def store(nc: NATS, subjects: Subjects) -> FleetStore:
    return await ensure_fleet(nc.jetstream(), subjects)


def make_loop(
    nc: NATS,
    store: FleetStore,
    subjects: Subjects,
    state: Path,
    registry: CollectorRegistry | None = None,
) -> ReconcileLoop:
    metrics = AgentMetrics.create(registry) if registry is not None else None
    return ReconcileLoop(
        node=NODE,
        nc=nc,
        kv=store.desired,
        subjects=subjects,
        actuator=FilesActuator(state),
        revisions=FileRevisions(state),
        clock=SystemClock(),
        interval=0.2,
        metrics=metrics,
    )


def listing(path: Path) -> dict[str, bytes]:
    """Every file directly in ``path`` with its content."""
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def decoded(messages: list[tuple[float, Msg]]) -> list[Heartbeat | ReconcileReport]:
    out: list[Heartbeat | ReconcileReport] = []
    for _, m in messages:
        if ".hb." in m.subject:
            out.append(decode(Heartbeat, m.data, subject_node=NODE))
        else:
            out.append(decode(ReconcileReport, m.data, subject_node=NODE))
    return out


async def test_a_cycle_applies_then_reports_then_heartbeats(
    nc: NATS, store: FleetStore, subjects: Subjects, tmp_path: Path
) -> None:
    """A valid document is applied; the report precedes the heartbeat, which has rev/pid/host."""
    everything = await Collector.on(nc, f"{subjects.prefix}.>")
    rev = await store.desired.put(NODE.key, json.dumps({"files": {"app.conf": "v=1"}}).encode())
    loop = make_loop(nc, store, subjects, tmp_path)
    result = await loop.step()
    assert result.outcome == "applied"
    assert (tmp_path / "app.conf").read_text() == "v=1"
    await everything.wait_count(2)
    report, hb = decoded(everything.messages)
    assert isinstance(report, ReconcileReport) and isinstance(hb, Heartbeat)
    assert report.outcome == "applied" and report.rev == rev and report.drift
    assert (hb.seq, hb.rev, hb.pid, hb.host, hb.interval) == (
        0,
        rev,
        os.getpid(),
        socket.gethostname(),
        0.2,
    )
    again = await loop.step()
    assert again.outcome == "converged" and again.heartbeat is not None
    assert again.heartbeat.seq == 1 and again.heartbeat.boot == hb.boot


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ("delete", "deleted"),
        ("purge", "deleted"),
        ("[]", "list/array"),
        ("garbage{", "neither msgpack nor"),
        ('{"cut":', "not valid JSON"),
        ("5", "expected an object"),
    ],
)
async def test_unknown_desired_state_changes_nothing(
    nc: NATS, store: FleetStore, subjects: Subjects, tmp_path: Path, change: str, status: str
) -> None:
    """A deleted/purged key, [] or garbage is reported and leaves the node exactly as it was."""
    rev = await store.desired.put(NODE.key, json.dumps({"files": {"a": "1"}}).encode())
    loop = make_loop(nc, store, subjects, tmp_path)
    assert (await loop.step()).outcome == "applied"
    before = listing(tmp_path)
    if change == "delete":
        await store.desired.delete(NODE.key)
    elif change == "purge":
        await store.desired.purge(NODE.key)
    else:
        await store.desired.put(NODE.key, change.encode())
    result = await loop.step()
    assert result.outcome == "unknown_desired"
    assert status in " ".join(result.report.errors)
    assert result.report.applied_rev == rev and result.report.applied == []
    assert listing(tmp_path) == before
    assert result.heartbeat is not None and result.heartbeat.rev == rev  # the read worked


async def test_missing_key_is_unknown_not_empty(
    nc: NATS, store: FleetStore, subjects: Subjects, tmp_path: Path
) -> None:
    """A node with no desired key yet changes nothing and says so."""
    result = await make_loop(nc, store, subjects, tmp_path).step()
    assert result.outcome == "unknown_desired" and "no desired state" in result.report.errors[0]
    assert listing(tmp_path) == {}


async def test_an_older_revision_is_never_applied(
    nc: NATS, store: FleetStore, subjects: Subjects, tmp_path: Path
) -> None:
    """A revision below the one recorded in the state dir is reported as stale, not applied."""
    FileRevisions(tmp_path).save(50)
    await store.desired.put(NODE.key, json.dumps({"files": {"a": "old"}}).encode())
    result = await make_loop(nc, store, subjects, tmp_path).step()
    assert result.outcome == "stale_revision" and "older" in result.report.errors[0]
    assert not (tmp_path / "a").exists()


async def test_local_edits_are_put_back(
    nc: NATS, store: FleetStore, subjects: Subjects, tmp_path: Path
) -> None:
    """A managed file edited on the node is drift, rewritten on the next cycle."""
    await store.desired.put(NODE.key, json.dumps({"files": {"a": "want"}}).encode())
    loop = make_loop(nc, store, subjects, tmp_path)
    await loop.step()
    (tmp_path / "a").write_text("local edit")
    result = await loop.step()
    assert result.outcome == "applied" and result.report.drift == ["files.a: changed"]
    assert (tmp_path / "a").read_text() == "want"


async def test_a_failed_read_publishes_no_heartbeat(
    nc: NATS, store: FleetStore, subjects: Subjects, tmp_path: Path
) -> None:
    """With the desired bucket gone a cycle counts an error, reports it, sends no heartbeat."""
    hbs = await Collector.on(nc, subjects.hb(NODE))
    reports = await Collector.on(nc, subjects.reconcile(NODE))
    registry = CollectorRegistry()
    loop = make_loop(nc, store, subjects, tmp_path, registry)
    await store.desired.put(NODE.key, b'{"x":1}')
    assert (await loop.step()).worked
    await nc.jetstream().delete_key_value(subjects.desired_bucket)
    result = await loop.step()
    assert result.outcome == "read_error" and not result.worked
    await reports.wait_count(2)
    await nc.flush()
    assert len(hbs.messages) == 1
    got = registry.get_sample_value(
        "fleetwatch_agent_reconcile_errors_total", {"reason": "bucket_missing"}
    )
    assert got == 1.0
    assert loop.last_cycle_mono is not None  # the earlier cycle still counts; this one did not


async def test_500_loops_started_together_spread_their_reads(
    nc: NATS, store: FleetStore, subjects: Subjects
) -> None:
    """500 loops started in the same second: no 1 s window holds over 2x the mean read rate."""
    reads: list[float] = []

    async def count(_: Msg) -> None:
        reads.append(time.monotonic())

    # Watch the KV reads from outside, as the broker sees them (direct or leader get).
    stream = f"KV_{subjects.desired_bucket}"
    await nc.subscribe(f"$JS.API.DIRECT.GET.{stream}.>", cb=count)
    await nc.subscribe(f"$JS.API.STREAM.MSG.GET.{stream}", cb=count)
    await nc.flush()
    interval = 2.0
    loops = [
        ReconcileLoop(
            node=NodeId.of("sim", f"n{i}"),
            nc=nc,
            kv=store.desired,
            subjects=subjects,
            actuator=MemoryActuator(),
            revisions=MemoryRevisions(),
            clock=SystemClock(),
            interval=interval,
        )
        for i in range(500)
    ]
    stop = asyncio.Event()
    t0 = time.monotonic()
    tasks = [asyncio.create_task(lp.run(stop)) for lp in loops]
    await asyncio.sleep(3 * interval)  # the measurement window itself
    stop.set()
    await asyncio.gather(*tasks)
    window = [t for t in reads if t0 <= t <= t0 + 3 * interval]
    mean = len(window) / (3 * interval)
    assert len(window) >= 500 * 2, f"only {len(window)} reads in {3 * interval}s"
    worst, j = 0, 0
    for i, t in enumerate(window):  # sliding 1 s window starting at each read
        while j < len(window) and window[j] < t + 1.0:
            j += 1
        worst = max(worst, j - i)
    assert worst <= 2 * mean, f"{worst} reads in one second; mean {mean:.0f}/s"
