"""The agent's ``GET /healthz``: real work inside every request.

Each request reads the node's desired key from the broker with a short timeout and measures the
age of the loop's last completed cycle; 200 only when both are good, else 503. The body carries
``ts`` computed in the request, so a cached copy of it reads as stale to the prober.
"""

from __future__ import annotations

from aiohttp import web
from nats.js.kv import KeyValue

from services.reconciler.loop import ReconcileLoop
from services.reconciler.metrics import AgentMetrics
from services.reconciler.plan import freshness
from shared.clock import Clock
from shared.inventory import read_desired


class AgentHealth:
    """The health handler of one agent loop."""

    def __init__(
        self,
        *,
        loop: ReconcileLoop,
        kv: KeyValue,
        clock: Clock,
        max_age: float,
        timeout: float = 1.0,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.loop = loop
        self.kv = kv
        self.clock = clock
        self.max_age = max_age
        self.timeout = timeout
        self.metrics = metrics

    async def handle(self, _: web.Request) -> web.Response:
        """Answer 200 or 503 from a KV round trip done now and the last cycle's age."""
        t0 = self.clock.monotonic()
        read = await read_desired(self.kv, self.loop.node, timeout=self.timeout)
        now = self.clock.monotonic()
        kv_ok = read.status != "read_error"
        verdict = freshness(
            now=now,
            last_cycle=self.loop.last_cycle_mono,
            max_age=self.max_age,
            kv_ok=kv_ok,
            kv_error=read.error,
        )
        body = {
            "ok": verdict.ok,
            "ts": self.clock.wall(),
            "node": str(self.loop.node),
            "last_cycle": self.loop.last_cycle_wall,
            "age": verdict.age,
            "max_age": self.max_age,
            "rev": self.loop.applied_rev,
            "outcome": self.loop.last_outcome,
            "kv_rtt": (now - t0) if kv_ok else None,
            "boot": self.loop.boot,
            "seq": self.loop.hb_seq,
            "pid": self.loop.pid,
            "reason": verdict.reason,
        }
        if self.metrics is not None:
            self.metrics.health.labels("ok" if verdict.ok else "fail").inc()
        return web.json_response(
            body, status=200 if verdict.ok else 503, headers={"Cache-Control": "no-store"}
        )
