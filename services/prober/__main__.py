"""``fleetwatch prober`` (or ``python -m services.prober``): probe URLs, demand fresh answers."""

from __future__ import annotations

import asyncio
import logging
import sys

from prometheus_client import CollectorRegistry

from services.prober.metrics import ProberMetrics
from services.prober.service import Prober
from services.prober.settings import ProberSettings
from shared.bus import connect
from shared.runtime import run, setup_logging, stop_on_signals
from shared.settings import load_settings

log = logging.getLogger("services.prober")


async def serve(settings: ProberSettings) -> int:
    """Connect, probe until SIGINT/SIGTERM, drain."""
    stop = asyncio.Event()
    stop_on_signals(stop)
    registry = CollectorRegistry()
    # the bus series must exist before connecting so the first connect is counted
    prober_metrics = ProberMetrics.create(registry)
    nc = await connect(settings.nats, name=f"prober-{settings.instance}",
                       metrics=prober_metrics.bus,
                       ping_interval=max(1.0, min(10.0, settings.interval * 2)))
    try:
        prober = Prober(nc=nc, settings=settings, registry=registry, metrics=prober_metrics)
        log.info("prober %s: interval %gs, max-age %gs, timeout %gs, nats %s",
                 settings.instance, settings.interval, settings.max_age, settings.timeout,
                 settings.nats)
        await prober.run(stop)
    finally:
        try:
            await nc.drain()
        except Exception as e:  # closing anyway; nothing left to lose
            log.debug("drain: %s", e)
    return 0


def main(argv: list[str]) -> int:
    """Entry point: parse flags (exit 2 on a bad one), run until a signal."""
    settings = load_settings(ProberSettings, argv, prog="fleetwatch prober")
    setup_logging(settings.log_level)
    return run(serve(settings))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
