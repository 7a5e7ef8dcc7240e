"""Agent figures: KV read latency per cycle, CPU per cycle, and how many reconcile loops one
process runs at a 1 s interval before cycles start late. Each figure is printed beside the
baseline it is compared with, measured in the same run on the same broker.

    .venv/bin/python bench/agent.py                 # starts its own nats-server
    .venv/bin/python bench/agent.py --quick         # fewer samples, smaller fleets
    .venv/bin/python bench/agent.py --nats URL      # against a running server

Baselines: a core NATS request-reply round trip to an echo responder (what any broker
round trip costs), and a bare ``kv.get`` (what the read alone costs, without the cycle).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CollectorRegistry

from services.reconciler.actuators import MemoryActuator
from services.reconciler.loop import ReconcileLoop
from services.reconciler.metrics import AgentMetrics
from services.reconciler.state import MemoryRevisions
from shared.bootstrap import FleetStore, ensure_fleet
from shared.clock import SystemClock
from shared.identity import NodeId
from shared.server import EmbeddedServer
from shared.subjects import Subjects


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1000:.3f} ms"


async def bench_latency(nc: NATS, store: FleetStore, subjects: Subjects, n: int) -> None:
    """Per-cycle KV read latency and CPU, against request-reply and bare kv.get baselines."""

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("bench.echo", cb=echo)
    node = NodeId.of("bench", "one")
    await store.desired.put(node.key, json.dumps({"files": {"a": "1"}, "replicas": 3}).encode())
    loop = ReconcileLoop(
        node=node,
        nc=nc,
        kv=store.desired,
        subjects=subjects,
        actuator=MemoryActuator(),
        revisions=MemoryRevisions(),
        clock=SystemClock(),
        interval=1.0,
        metrics=AgentMetrics.create(CollectorRegistry()),
    )
    for _ in range(200):  # warm-up: connections, caches, JIT-free but allocator-warm
        await nc.request("bench.echo", b"x", timeout=2)
        await loop.step()

    rr: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await nc.request("bench.echo", b"x" * 64, timeout=2)
        rr.append(time.perf_counter() - t0)
    kv_bare: list[float] = []
    c0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        await store.desired.get(node.key)
        kv_bare.append(time.perf_counter() - t0)
    cpu_bare = (time.process_time() - c0) / n
    reads: list[float] = []
    c0 = time.process_time()
    for _ in range(n):
        r = await loop.step()
        assert r.kv_rtt is not None and r.outcome == "converged", r.outcome
        reads.append(r.kv_rtt)
    cpu_cycle = (time.process_time() - c0) / n

    print(f"\n== KV read latency per cycle ({n} cycles, one loop, loopback broker)")
    print(f"  {'':34} {'p50':>10} {'p99':>10}")
    print(
        f"  {'desired read inside a cycle':34} {ms(pct(reads, 0.5)):>10} {ms(pct(reads, 0.99)):>10}"
    )
    print(
        f"  {'baseline: bare kv.get':34} {ms(pct(kv_bare, 0.5)):>10} {ms(pct(kv_bare, 0.99)):>10}"
    )
    print(f"  {'baseline: core request-reply':34} {ms(pct(rr, 0.5)):>10} {ms(pct(rr, 0.99)):>10}")
    print(f"  ratio cycle read / request-reply (p50): {pct(reads, 0.5) / pct(rr, 0.5):.2f}x")
    print("\n== CPU per cycle (this process only; the broker's CPU is not counted)")
    print(f"  one full cycle (read, diff, report, heartbeat): {cpu_cycle * 1e6:8.1f} us")
    print(f"  baseline: bare kv.get:                         {cpu_bare * 1e6:8.1f} us")
    print(
        f"  ratio: {cpu_cycle / cpu_bare:.2f}x  -> at most ~{1 / cpu_cycle:,.0f} cycles/s per core"
    )


async def run_fleet(
    nc: NATS, store: FleetStore, subjects: Subjects, n: int, seconds: float
) -> dict[str, float]:
    """n loops at a 1 s interval on one connection; lateness and errors after a warm-up."""
    registry = CollectorRegistry()
    metrics = AgentMetrics.create(registry)
    site = f"s{n}"
    # Give most nodes a document (a realistic mix: some with none, reported as unknown).
    for i in range(0, n, 50):
        await asyncio.gather(
            *(
                store.desired.put(NodeId.of(site, f"n{j}").key, b'{"v":1}')
                for j in range(i, min(n, i + 50))
                if j % 10
            )
        )
    loops = [
        ReconcileLoop(
            node=NodeId.of(site, f"n{i}"),
            nc=nc,
            kv=store.desired,
            subjects=subjects,
            actuator=MemoryActuator(),
            revisions=MemoryRevisions(),
            clock=SystemClock(),
            interval=1.0,
            read_timeout=1.0,
            metrics=metrics,
        )
        for i in range(n)
    ]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(lp.run(stop)) for lp in loops]
    await asyncio.sleep(2.0)  # warm-up: every loop has started its schedule
    for lp in loops:
        lp.cycles = lp.late_cycles = 0
        lp.max_lateness = 0.0
    errs0 = (
        registry.get_sample_value("fleetwatch_agent_cycles_total", {"outcome": "read_error"}) or 0.0
    )
    c0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - c0, time.monotonic() - t0
    stop.set()
    await asyncio.gather(*tasks)
    cycles = sum(lp.cycles for lp in loops)
    late = sum(lp.late_cycles for lp in loops)
    errs = (
        registry.get_sample_value("fleetwatch_agent_cycles_total", {"outcome": "read_error"}) or 0.0
    ) - errs0
    worst = sorted(lp.max_lateness for lp in loops)
    return {
        "n": n,
        "rate": cycles / wall,
        "expected": n / 1.0,
        "late": late / max(cycles, 1),
        "p99_max_late": pct(worst, 0.99),
        "errors": errs,
        "cpu": cpu / wall,
    }


async def bench_capacity(
    nc: NATS, store: FleetStore, subjects: Subjects, sizes: list[int], seconds: float
) -> None:
    """Grow the fleet until cycles run late (>10 % of cycles over 100 ms late) or reads fail."""
    print(f"\n== Loops per process at a 1 s interval (one connection, {seconds:.0f} s each)")
    print("  late = cycle started >100 ms (10 % of the interval) after its schedule")
    print(
        f"  {'loops':>6} {'cycles/s':>9} {'target/s':>9} {'late':>7} {'p99 worst-late':>15} "
        f"{'read errs':>9} {'CPU':>6}"
    )
    best = 0
    for n in sizes:
        r = await run_fleet(nc, store, subjects, n, seconds)
        print(
            f"  {n:>6} {r['rate']:>9.0f} {r['expected']:>9.0f} {r['late'] * 100:>6.1f}% "
            f"{ms(r['p99_max_late']):>15} {r['errors']:>9.0f} {r['cpu'] * 100:>5.0f}%"
        )
        ok = r["late"] <= 0.10 and r["errors"] == 0 and r["rate"] >= 0.9 * r["expected"]
        if not ok:
            break
        best = n
    print(f"  -> largest fleet on schedule: {best} loops (baseline: the target rate column)")


async def main_async(args: argparse.Namespace) -> None:
    server = None
    url = args.nats
    if url is None:
        tmp = tempfile.mkdtemp(prefix="fleetwatch-bench-")
        server = EmbeddedServer(store_dir=Path(tmp) / "js").start()
        url = server.url
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    try:
        subjects = Subjects("benchagent")
        js = nc.jetstream()
        for bucket in (subjects.desired_bucket, subjects.nodes_bucket):
            try:
                await js.delete_key_value(bucket)
            except Exception:
                pass
        store = await ensure_fleet(js, subjects)
        await bench_latency(nc, store, subjects, 500 if args.quick else 3000)
        sizes = [250, 1000, 2000] if args.quick else [250, 500, 1000, 2000, 3000, 4000, 6000, 8000]
        await bench_capacity(nc, store, subjects, sizes, 3.0 if args.quick else 6.0)
    finally:
        await nc.close()
        if server is not None:
            server.stop()


def main() -> None:
    # One warning per loop whose read fails would drown the table; errors are counted in it.
    logging.getLogger("services.reconciler").setLevel(logging.ERROR)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nats", default=None, help="use this server instead of starting one")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
