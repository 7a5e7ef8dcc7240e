"""Can the deadman see? Its connection state and a canary it sends itself through the broker.

The canary shares the deadman's socket with the heartbeats, so when ingest falls behind (a
backlog, a frozen process) the canary comes back late too: that, or a lost connection, makes the
deadman blind, and a blind deadman judges nobody.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS

from shared.clock import Clock

log = logging.getLogger(__name__)


@dataclass
class Sight:
    """What the deadman knows about its own ability to see (monotonic times)."""

    connected: bool = True
    last_ingest: float | None = None  # the last valid heartbeat
    last_canary: float | None = None  # the last canary that came back
    canary_rtt: float | None = None

    def blind(self, now: float, blind_after: float) -> bool:
        """Disconnected, or no canary back for longer than ``blind_after``."""
        return (not self.connected) or now - (self.last_canary or 0.0) > blind_after

    def why(self, now: float) -> str:
        """Why it is blind, for the self alert."""
        if not self.connected:
            return "lost its NATS connection"
        return f"got no canary back through the broker for {now - (self.last_canary or 0):.1f}s"

    async def on_disconnect(self) -> None:
        self.connected = False

    async def on_reconnect(self) -> None:
        self.connected = True

    def on_canary(self, data: bytes, now: float) -> None:
        """A canary came back; its body is the monotonic time it was sent."""
        try:
            sent = float(data.decode())
        except ValueError:
            return
        self.canary_rtt = max(0.0, now - sent)
        self.last_canary = now

    async def send_canaries(
        self, nc: NATS, subject: str, *, clock: Clock, every: float, stop: asyncio.Event
    ) -> None:
        """Publish a canary every ``every`` seconds until ``stop``."""
        while not stop.is_set():
            if nc.is_connected:
                try:
                    await nc.publish(subject, repr(clock.monotonic()).encode())
                except Exception as e:
                    log.debug("canary publish failed: %s", e)
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass
