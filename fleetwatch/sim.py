"""``fleetwatch sim``: many simulated agents in one process, for demos and load tests.

Each simulated node runs the real reconcile loop (``services.reconciler.loop.ReconcileLoop``): a
real KV read of its desired state, then a report and a heartbeat, every cycle, all on one NATS
connection. ``--kill-rate`` makes a fraction of the live nodes die (fall silent for good) each
minute, so the deadman has real work to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
import urllib.request
from typing import Any

from fleetwatch.options import Parser, add_connection, duration, whole_number
from fleetwatch.view import request_status
from services.reconciler.actuators import MemoryActuator
from services.reconciler.loop import ReconcileLoop
from services.reconciler.state import MemoryRevisions
from shared.bootstrap import ensure_fleet
from shared.bus import connect, connect_once
from shared.clock import SystemClock
from shared.codec import encode_document
from shared.errors import BrokerUnreachable
from shared.identity import NodeId, check_part
from shared.inventory import InventoryEntry
from shared.runtime import run, stop_on_signals
from shared.subjects import Subjects


def parser() -> Parser:
    p = Parser(prog="fleetwatch sim", description=__doc__.split("\n\n")[0] if __doc__ else "")
    add_connection(p)
    p.add_argument(
        "--nodes",
        type=whole_number("whole number", lo=1),
        default=1000,
        help="simulated nodes (default 1000)",
    )
    p.add_argument(
        "--sites",
        type=whole_number("whole number", lo=1),
        default=10,
        help="sites to spread them over",
    )
    p.add_argument("--site-prefix", default="sim", help="site names are PREFIX-0, PREFIX-1, ...")
    p.add_argument(
        "--interval",
        type=duration,
        default=None,
        help="cycle interval (default: a third of the running deadman's window, at most 30s)",
    )
    p.add_argument(
        "--kill-rate",
        type=float,
        default=0.0,
        help="fraction of live nodes that die each minute (e.g. 0.01)",
    )
    p.add_argument("--duration", type=duration, default=None, help="stop after this long")
    p.add_argument(
        "--no-register",
        dest="register",
        action="store_false",
        help="do not put the nodes in the inventory (they then show as unregistered)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the simulated nodes in the inventory on exit (default: remove them, so a "
        "finished simulation does not page as a dead fleet)",
    )
    p.add_argument("--report-every", type=duration, default=5.0, help="progress line period")
    return p


async def _gather_chunked(coros: list[Any], size: int = 500) -> None:
    for i in range(0, len(coros), size):
        await asyncio.gather(*coros[i : i + size])


def _deadman_health(status: dict[str, Any] | None) -> dict[str, Any] | None:
    url = (status or {}).get("metrics_url")
    if not url:
        return None
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=1) as r:
            obj = json.loads(r.read())
    except Exception as e:
        if hasattr(e, "read"):
            with contextlib.suppress(Exception):
                obj = json.loads(e.read())
                return obj if isinstance(obj, dict) else None
        return None
    return obj if isinstance(obj, dict) else None


async def _main(args: Any) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    subjects = Subjects(args.prefix)
    # fail fast on a wrong URL; after that, ride out broker restarts like any agent would
    await (await connect_once(args.nats, name="fleetwatch-sim-check")).close()
    nc = await connect(args.nats, name="fleetwatch-sim", pending_size=64 * 1024 * 1024)
    try:
        store = await ensure_fleet(nc.jetstream(timeout=10), subjects)
        window = ((await request_status(nc, subjects, "deadman", timeout=2.0)) or {}).get("window")
        if args.interval is None:
            args.interval = min(30.0, float(window) / 3) if window else 30.0
            print(f"sim: cycle interval {args.interval:g}s", flush=True)
        elif window and args.interval >= float(window):
            print(
                f"sim: warning: --interval {args.interval:g}s is not shorter than the deadman's "
                f"window {float(window):g}s, so healthy simulated nodes will page",
                file=sys.stderr,
                flush=True,
            )
        nodes = [
            NodeId(f"{args.site_prefix}-{i % args.sites}", f"n{i:06d}") for i in range(args.nodes)
        ]
        if args.register:
            t0 = time.monotonic()
            now = time.time()
            await _gather_chunked(
                [
                    store.nodes.put(
                        n.key,
                        InventoryEntry(
                            site=n.site,
                            node=n.node,
                            labels={"managed-by": "fleetwatch-sim"},
                            added=now,
                        ).encode(),
                    )
                    for n in nodes
                ]
            )
            doc = encode_document({"image": "sim:v1"})
            await _gather_chunked([store.desired.put(n.key, doc) for n in nodes])
            print(f"sim: registered {len(nodes)} nodes in {time.monotonic() - t0:.1f}s", flush=True)
        clock = SystemClock()
        rng = random.Random()
        loops = {
            n: ReconcileLoop(
                node=n,
                nc=nc,
                kv=store.desired,
                subjects=subjects,
                actuator=MemoryActuator(),
                revisions=MemoryRevisions(),
                clock=clock,
                interval=args.interval,
                host="sim",
                rng=rng,
            )
            for n in nodes
        }
        stops = {n: asyncio.Event() for n in nodes}
        tasks = {n: asyncio.create_task(loop.run(stops[n])) for n, loop in loops.items()}
        dead: set[NodeId] = set()
        started = time.monotonic()
        last_report = started
        last_cycles = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if args.duration is not None and time.monotonic() - started >= args.duration:
                break
            if args.kill_rate > 0:
                live = [n for n in nodes if n not in dead]
                expected = len(live) * args.kill_rate / 60.0
                k = int(expected) + (1 if rng.random() < expected % 1 else 0)
                for n in rng.sample(live, min(k, len(live))):
                    stops[n].set()
                    dead.add(n)
            if time.monotonic() - last_report >= args.report_every:
                cycles = sum(loop.cycles for loop in loops.values())
                late = sum(loop.late_cycles for loop in loops.values())
                worst = max((loop.max_lateness for loop in loops.values()), default=0.0)
                rate = (cycles - last_cycles) / (time.monotonic() - last_report)
                status = await request_status(nc, subjects, "deadman", timeout=2.0)
                health = await asyncio.to_thread(_deadman_health, status)
                lag = "deadman: no answer"
                if status is not None:
                    lag = f"deadman sees {status.get('counts')}"
                if health is not None:
                    rtt = health.get("canary_rtt")
                    lag += f"; deadman lag (canary rtt) {rtt * 1000:.1f}ms" if rtt else ""
                print(
                    f"sim: {len(nodes) - len(dead)}/{len(nodes)} alive; {rate:.0f} cycles/s; "
                    f"late cycles {late}; worst lateness {worst:.2f}s; {lag}",
                    flush=True,
                )
                last_report, last_cycles = time.monotonic(), cycles
        for ev in stops.values():
            ev.set()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        if args.register and not args.keep:
            await _gather_chunked([store.nodes.delete(n.key) for n in nodes])
            await _gather_chunked([store.desired.delete(n.key) for n in nodes])
            print(f"sim: removed {len(nodes)} simulated nodes from the inventory", flush=True)
    finally:
        await nc.drain()
    return 0


def main(argv: list[str]) -> int:
    """Run the simulated fleet until Ctrl-C, SIGTERM or --duration."""
    args = parser().parse_args(argv)
    try:
        check_part(f"{args.site_prefix}-{args.sites}", "--site-prefix")
    except ValueError as e:
        parser().error(str(e))
    if not 0 <= args.kill_rate <= 1:
        parser().error("--kill-rate must be between 0 and 1")
    if args.interval is not None and args.interval < 0.05:
        parser().error("--interval must be at least 50ms")
    try:
        return run(_main(args))
    except BrokerUnreachable as e:
        print(f"fleetwatch sim: {e}", file=sys.stderr)
        return 1
