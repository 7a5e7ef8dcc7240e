"""A worker that is your own code, kept honest with the fleetwatch agent SDK.

It drains a JetStream work queue (a durable pull consumer), touches a ``Liveness`` after each
real unit of work (a job acked, or an empty poll the broker answered), serves ``/healthz`` that
asks the broker for the queue depth inside the request, and heartbeats only while it works.

    python examples/queue_worker.py --nats nats://127.0.0.1:4222 --node dc1/worker1 \\
        --health-port 9200
    nats pub example.jobs 'hello'          # or: any JetStream publish to the subject

``--crash-after N`` makes the worker task die after N jobs while the process, its HTTP server and
its event loop live on: the classic failure. ``/healthz`` then turns 503 and heartbeats stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter

from services.reconciler.sdk import HeartbeatPublisher, Liveness, liveness_health
from shared.bus import connect
from shared.clock import SystemClock
from shared.durations import parse_duration
from shared.identity import NodeId
from shared.metrics import BusMetrics, bound_port, metrics_app, serve_http
from shared.runtime import run, setup_logging, stop_on_signals
from shared.subjects import Subjects

log = logging.getLogger("queue_worker")
DURABLE = "worker"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line flags of the example."""
    p = argparse.ArgumentParser(prog="queue_worker", description=__doc__.split("\n")[0])
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--prefix", default="fleet", help="fleetwatch subject prefix")
    p.add_argument("--node", required=True, type=NodeId.parse, help="SITE/NODE")
    p.add_argument("--stream", default="EXAMPLE_JOBS", help="JetStream stream holding the queue")
    p.add_argument("--subject", default="example.jobs", help="subject jobs are published on")
    p.add_argument("--health-host", default="127.0.0.1")
    p.add_argument("--health-port", type=int, default=9200, help="0 picks a free port")
    p.add_argument("--interval", type=parse_duration, default=2.0, help="heartbeat interval")
    p.add_argument(
        "--max-age",
        type=parse_duration,
        default=0.0,
        help="/healthz fails if no work for this long (default 3 x interval)",
    )
    p.add_argument("--crash-after", type=int, default=0, help="die after N jobs (a demo)")
    return p.parse_args(argv)


async def ensure_queue(js: JetStreamContext, stream: str, subject: str) -> None:
    """The work-queue stream and its durable pull consumer, created if missing."""
    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(
            StreamConfig(name=stream, subjects=[subject], retention=RetentionPolicy.WORK_QUEUE)
        )
    await js.add_consumer(
        stream,
        ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, filter_subject=subject),
    )


async def work(
    js: JetStreamContext, args: argparse.Namespace, live: Liveness, done: Counter
) -> None:
    """Drain the queue; touch the liveness after every real unit of work."""
    sub = await js.pull_subscribe(args.subject, durable=DURABLE, stream=args.stream)
    handled = 0
    while True:
        try:
            msgs = await sub.fetch(10, timeout=1.0)
        except TimeoutError:
            live.touch(0)  # the broker answered "nothing to do": an idle worker is alive
            continue
        for msg in msgs:
            if args.crash_after and handled >= args.crash_after:
                raise RuntimeError(f"simulated crash after {handled} jobs")
            log.info("job %d: %r", msg.metadata.sequence.stream, msg.data[:60])
            await msg.ack()
            handled += 1
            done.inc()
            live.touch()


async def main_async(args: argparse.Namespace) -> int:
    """Run the worker, its health server and its heartbeats until SIGINT/SIGTERM."""
    clock = SystemClock()
    stop = asyncio.Event()
    stop_on_signals(stop)
    registry = CollectorRegistry()
    done = Counter("example_jobs_done", "Jobs processed", registry=registry)
    nc: NATS = await connect(
        args.nats,
        name=f"example-worker-{args.node.key}",
        metrics=BusMetrics.create(registry, "example"),
        ping_interval=max(1.0, min(10.0, args.interval * 3)),
    )
    js = nc.jetstream(timeout=2.0)
    await ensure_queue(js, args.stream, args.subject)
    live = Liveness(clock=clock, max_age=args.max_age or 3 * args.interval)

    async def queue_depth() -> dict[str, Any]:
        info = await js.consumer_info(args.stream, DURABLE)  # asked of the broker, now
        return {"queue_depth": (info.num_pending or 0) + (info.num_ack_pending or 0)}

    runner = await serve_http(
        metrics_app(
            registry, liveness_health(live, node=args.node, clock=clock, check=queue_depth)
        ),
        host=args.health_host,
        port=args.health_port,
    )
    log.info(
        "worker %s: health on http://%s:%d/healthz", args.node, args.health_host, bound_port(runner)
    )
    hb = HeartbeatPublisher(
        nc=nc,
        subjects=Subjects(args.prefix),
        node=args.node,
        liveness=live,
        clock=clock,
        interval=args.interval,
    )
    worker = asyncio.create_task(work(js, args, live, done))

    def died(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "worker died: %s (HTTP keeps serving; /healthz will say 503)", task.exception()
            )

    worker.add_done_callback(died)
    try:
        await hb.run(stop)
    finally:
        worker.cancel()
        await runner.cleanup()
        await nc.close()  # not drain: a pull fetch cut short by the worker's death never ends
    return 0


def main(argv: list[str]) -> int:
    """Entry point."""
    args = parse_args(argv)
    setup_logging("info")
    return run(main_async(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
