"""The agent SDK: liveness for workers that are your own code.

Three pieces, each honest by construction:

- ``Liveness``: the worker calls ``touch()`` after each real unit of work (a job done, an empty
  poll the broker answered). Thread-safe, so a worker thread may touch it.
- ``liveness_health``: an aiohttp ``/healthz`` handler that is 200 only if the worker touched the
  liveness recently AND a check you give it (e.g. a broker round trip) succeeds now.
- ``HeartbeatPublisher``: publishes a Heartbeat each interval, but only if the worker touched the
  liveness since the previous one. A dead worker means no heartbeats, even though the process,
  its event loop and its HTTP server are fine.

Example (see ``examples/queue_worker.py`` for a full, runnable one)::

    live = Liveness(clock=SystemClock(), max_age=10)
    hb = HeartbeatPublisher(nc=nc, subjects=Subjects(), node=NodeId.parse("dc1/w1"),
                            liveness=live, clock=SystemClock(), interval=2)
    app = metrics_app(registry, liveness_health(live, node=node, clock=clock, check=my_check))
    ...
    while True:
        job = await next_job()
        handle(job)
        live.touch()
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from nats.aio.client import Client as NATS

from services.reconciler.loop import new_boot
from shared.clock import Clock
from shared.codec import encode
from shared.identity import NodeId
from shared.metrics import HealthHandler
from shared.models import Heartbeat
from shared.subjects import Subjects

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[dict[str, Any]]]
"""A health check run inside each request: returns extra body fields, raises if unhealthy."""


class Liveness:
    """When the worker last did real work, and how much it has done."""

    def __init__(self, *, clock: Clock, max_age: float) -> None:
        self.clock = clock
        self.max_age = max_age
        self._lock = threading.Lock()
        self._last: float | None = None
        self._last_wall: float | None = None
        self._count = 0
        self._touches = 0

    def touch(self, units: int = 1) -> None:
        """Record that the worker just finished real work."""
        with self._lock:
            self._last = self.clock.monotonic()
            self._last_wall = self.clock.wall()
            self._count += units
            self._touches += 1

    @property
    def count(self) -> int:
        """Units of work done so far."""
        with self._lock:
            return self._count

    @property
    def touches(self) -> int:
        """How many times the worker touched (an idle poll the broker answered is a touch)."""
        with self._lock:
            return self._touches

    def age(self) -> float | None:
        """Seconds since the last touch (None if never touched)."""
        with self._lock:
            last = self._last
        return None if last is None else max(0.0, self.clock.monotonic() - last)

    def fresh(self) -> bool:
        """Touched within ``max_age``."""
        age = self.age()
        return age is not None and age <= self.max_age

    @property
    def last_wall(self) -> float | None:
        """Unix time of the last touch, for display."""
        with self._lock:
            return self._last_wall


def liveness_health(
    liveness: Liveness,
    *,
    node: NodeId,
    clock: Clock,
    check: Check | None = None,
    timeout: float = 1.0,
) -> HealthHandler:
    """A ``/healthz`` handler: fresh liveness and a passing ``check`` done now, else 503."""

    async def handle(_: web.Request) -> web.Response:
        t0 = clock.monotonic()
        extra: dict[str, Any] = {}
        check_error = ""
        if check is not None:
            try:
                extra = await asyncio.wait_for(check(), timeout)
            except TimeoutError:
                check_error = f"check timed out after {timeout}s"
            except Exception as e:
                check_error = f"check failed: {type(e).__name__}: {e}"
        age = liveness.age()
        if check_error:
            ok, reason = False, check_error
        elif age is None:
            ok, reason = False, "worker has done no work yet"
        elif age > liveness.max_age:
            ok, reason = False, f"worker idle {age:.1f}s (limit {liveness.max_age:.1f}s)"
        else:
            ok, reason = True, "ok"
        body: dict[str, Any] = {
            **extra,
            "ok": ok,
            "ts": clock.wall(),
            "node": str(node),
            "last_cycle": liveness.last_wall,
            "age": age,
            "work": liveness.count,
            "check_rtt": clock.monotonic() - t0,
            "reason": reason,
        }
        return web.json_response(
            body, status=200 if ok else 503, headers={"Cache-Control": "no-store"}
        )

    return handle


class HeartbeatPublisher:
    """Heartbeats that stop when the worker stops: one per interval, only after new work."""

    def __init__(
        self,
        *,
        nc: NATS,
        subjects: Subjects,
        node: NodeId,
        liveness: Liveness,
        clock: Clock,
        interval: float,
        boot: str | None = None,
    ) -> None:
        self.nc = nc
        self.subject = subjects.hb(node)
        self.node = node
        self.liveness = liveness
        self.clock = clock
        self.interval = interval
        self.boot = boot or new_boot()
        self.seq = 0
        self._seen = 0
        self._pid = os.getpid()
        self._host = socket.gethostname()[:255] or None

    async def step(self) -> bool:
        """Publish one heartbeat if the worker touched since the last one and is fresh."""
        count = self.liveness.touches
        if count <= self._seen or not self.liveness.fresh():
            return False
        hb = Heartbeat(
            site=self.node.site,
            node=self.node.node,
            boot=self.boot,
            seq=self.seq,
            ts=self.clock.wall(),
            interval=self.interval,
            pid=self._pid,
            host=self._host,
        )
        try:
            await self.nc.publish(self.subject, encode(hb))
        except Exception as e:
            log.warning("heartbeat publish failed: %s: %s", type(e).__name__, e)
            return False
        self._seen = count
        self.seq += 1
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Try a heartbeat every interval until ``stop``."""
        while not stop.is_set():
            await self.step()
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass
