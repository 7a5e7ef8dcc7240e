"""``fleetwatch prober`` (or ``python -m services.prober``): probe URLs, demand fresh answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from prometheus_client import CollectorRegistry

from services.prober.metrics import ProberMetrics
from services.prober.service import ListenError, Prober
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
    connecting = asyncio.create_task(
        connect(
            settings.nats,
            name=f"prober-{settings.instance}",
            metrics=prober_metrics.bus,
            ping_interval=max(1.0, min(10.0, settings.interval * 2)),
        )
    )
    stopping = asyncio.create_task(stop.wait())
    # a signal while the broker is still unreachable must end the process, not wait for it
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        log.info("prober %s: stopped before reaching NATS", settings.instance)
        return 0
    nc = connecting.result()
    try:
        prober = Prober(nc=nc, settings=settings, registry=registry, metrics=prober_metrics)
        log.info(
            "prober %s: interval %gs, max-age %gs, timeout %gs, nats %s",
            settings.instance,
            settings.interval,
            settings.max_age,
            settings.timeout,
            settings.nats,
        )
        await prober.run(stop)
    except ListenError as e:
        log.error("%s", e)
        return 1
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
