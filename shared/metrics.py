"""Metrics helpers: registries, the shared NATS-connection series, and the HTTP endpoint that serves
``/metrics`` and a health handler computed in the request."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)

HealthHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class BusMetrics:
    """Series about the service's own NATS connection."""

    errors: Counter
    disconnects: Counter
    reconnects: Counter
    connected: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry, service: str) -> BusMetrics:
        """Register the series for one service (name prefix ``fleetwatch_<service>_nats_``)."""
        p = f"fleetwatch_{service}_nats"
        return cls(
            errors=Counter(
                f"{p}_errors", "NATS client errors by reason", ["reason"], registry=registry
            ),
            disconnects=Counter(
                f"{p}_disconnects", "Times the broker connection was lost", registry=registry
            ),
            reconnects=Counter(
                f"{p}_reconnects", "Times the broker connection came back", registry=registry
            ),
            connected=Gauge(f"{p}_connected", "1 while connected to the broker", registry=registry),
        )


def metrics_app(
    registry: CollectorRegistry, health: HealthHandler | None = None
) -> web.Application:
    """An aiohttp app serving ``GET /metrics`` and, if given, ``GET /healthz``."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    if health is not None:
        app.router.add_get("/healthz", health)
    return app


async def serve_http(app: web.Application, *, host: str, port: int) -> web.AppRunner:
    """Start an aiohttp app; the caller cleans up the runner. Port 0 picks a free port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host=host, port=port, reuse_address=True)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port a started runner listens on."""
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    raise RuntimeError("runner is not listening on a TCP port")
