"""The one way fleetwatch connects to NATS, and the guard every subscription callback goes through.

Client defaults are changed on purpose (NATS-NOTES.md): reconnect forever with jittered,
capped exponential backoff; ping well below any deadman window so a dead path is noticed in
seconds; an error callback that logs and counts (permission violations and slow-consumer drops
arrive there and nowhere else).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.client import Server
from nats.aio.msg import Msg

from shared.errors import BrokerUnreachable
from shared.metrics import BusMetrics

log = logging.getLogger(__name__)

DEFAULT_PING_INTERVAL = 10.0
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
INITIAL_RETRY_WAIT = 0.5
REPEAT_LOG_EVERY = 30.0

Hook = Callable[[], Awaitable[None]]
_RNG = random.Random()


def backoff_delay(
    attempt: int,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    rng: random.Random | None = None,
) -> float:
    """Full-jitter exponential backoff: uniform in [cap/2.. cap] once capped, growing before."""
    r = rng or _RNG
    ceiling = min(cap, base * 2.0 ** min(attempt, 30))
    return float(ceiling / 2 + r.random() * ceiling / 2)


class _QuietLog:
    """Log the first error of a streak, then one summary line per REPEAT_LOG_EVERY seconds,
    so a broker that is down for an hour does not write a line per connection attempt."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.streak = 0
        self.last = 0.0

    def warn(self, exc: Exception) -> None:
        now = time.monotonic()
        self.streak += 1
        if self.streak == 1 or now - self.last >= REPEAT_LOG_EVERY:
            more = f" ({self.streak} errors so far)" if self.streak > 1 else ""
            log.warning("nats %s: %s: %s%s", self.name, type(exc).__name__, exc, more)
            self.last = now

    def reset(self) -> None:
        self.streak = 0


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    return name.removesuffix("Error").lower() or "unknown"


async def connect(
    url: str,
    *,
    name: str,
    metrics: BusMetrics | None = None,
    ping_interval: float = DEFAULT_PING_INTERVAL,
    on_disconnect: Hook | None = None,
    on_reconnect: Hook | None = None,
    connect_timeout: float = 2.0,
    **options: Any,
) -> NATS:
    """Connect (waiting for a server if none is up yet) and stay connected for good."""

    quiet = _QuietLog(name)

    async def error_cb(exc: Exception) -> None:
        if metrics is not None:
            metrics.errors.labels(_reason(exc)).inc()
        quiet.warn(exc)

    client: list[NATS] = []

    async def disconnected_cb() -> None:
        if client and (client[0].is_closed or client[0].is_draining):
            log.debug("nats %s: disconnected on close", name)
            return
        if metrics is not None:
            metrics.disconnects.inc()
            metrics.connected.set(0)
        log.warning("nats %s: disconnected", name)
        if on_disconnect is not None:
            await on_disconnect()

    async def reconnected_cb() -> None:
        quiet.reset()
        if metrics is not None:
            metrics.reconnects.inc()
            metrics.connected.set(1)
        log.info("nats %s: reconnected", name)
        if on_reconnect is not None:
            await on_reconnect()

    async def closed_cb() -> None:
        log.info("nats %s: closed", name)

    def pick_server(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        first = min(servers, key=lambda s: s.reconnects)
        return first, backoff_delay(first.reconnects)

    nc = await nats.connect(
        servers=[u.strip() for u in url.split(",")],
        name=name,
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        # nats-py sleeps reconnect_time_wait between attempts of the *first* connect (with 0 it
        # spins on a dead broker); reconnects after that take pick_server's jittered backoff.
        reconnect_time_wait=INITIAL_RETRY_WAIT,
        reconnect_to_server_handler=pick_server,
        ping_interval=ping_interval,
        max_outstanding_pings=2,
        connect_timeout=connect_timeout,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        closed_cb=closed_cb,
        **options,
    )
    client.append(nc)
    if metrics is not None:
        metrics.connected.set(1)
    return nc


MsgHandler = Callable[[Msg], Awaitable[None]]


def guarded(handler: MsgHandler, *, what: str, on_error: Callable[[str], None]) -> MsgHandler:
    """Wrap a subscription callback so no exception ever reaches nats.py.

    ``on_error`` gets a reason label to count; the exception is logged with the subject.
    """

    async def cb(msg: Msg) -> None:
        try:
            await handler(msg)
        except Exception as e:
            on_error(_reason(e))
            log.exception("%s: handler failed on %s", what, msg.subject)

    return cb


async def connect_once(url: str, *, name: str, timeout: float = 3.0) -> NATS:
    """For one-shot commands: connect without retrying; BrokerUnreachable if no server."""

    async def quiet(_: Exception) -> None:
        return None

    try:
        # max_reconnect_attempts=0 would retry forever in nats-py 2.16; 1 means "try each once"
        return await asyncio.wait_for(
            nats.connect(
                servers=[u.strip() for u in url.split(",")],
                name=name,
                allow_reconnect=False,
                connect_timeout=timeout,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=quiet,
            ),
            timeout * 2,
        )
    except Exception as e:
        raise BrokerUnreachable(
            f"cannot reach NATS at {url}: {type(e).__name__} {e}".strip()
        ) from None
