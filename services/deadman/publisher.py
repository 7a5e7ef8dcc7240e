"""Alert delivery: a queue the judgement appends to without waiting, and one task that publishes
through JetStream (so ``FLEET_ALERTS`` keeps every transition and core subscribers still see it).

Each alert carries a ``Nats-Msg-Id`` derived from its id and transition, so a retry after a
timeout or a reconnect, or the same alert from a second replica, is stored once. Up to ``batch``
publishes are in flight at a time, but never two for the same alert id, so a resolve can never
overtake its firing. Nothing leaves the queue before the broker acknowledged it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from nats.js import JetStreamContext

from shared.bus import backoff_delay
from shared.codec import encode
from shared.models import Alert

log = logging.getLogger(__name__)


def msg_id(alert: Alert) -> str:
    """The deduplication id of one transition of one alert (identical on every replica)."""
    if alert.state == "firing":
        return f"{alert.id}:firing:{alert.count}"
    return f"{alert.id}:resolved"


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    data: bytes
    msg_id: str
    alert_id: str
    kind: str
    state: str


class AlertPublisher:
    """Queue + publisher task; ``submit`` never blocks."""

    def __init__(self, js: JetStreamContext, *, batch: int = 1024, timeout: float = 2.0,
                 on_published: Callable[[Outgoing, bool], None] | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.js = js
        self.batch = batch
        self.timeout = timeout
        self.queue: deque[Outgoing] = deque()
        self.on_published = on_published
        self.on_error = on_error
        self._wake = asyncio.Event()
        self.failures = 0

    def submit(self, subject: str, alert: Alert) -> None:
        """Queue one alert for delivery."""
        self.queue.append(Outgoing(subject, encode(alert), msg_id(alert), alert.id, alert.kind,
                                   alert.state))
        self._wake.set()

    def _take(self) -> list[Outgoing]:
        taken: list[Outgoing] = []
        ids: set[str] = set()
        for item in self.queue:
            if len(taken) >= self.batch or item.alert_id in ids:
                break
            taken.append(item)
            ids.add(item.alert_id)
        return taken

    async def step(self) -> bool:
        """Publish one batch; False if the queue was empty. Failed items stay at the front."""
        taken = self._take()
        if not taken:
            return False
        results = await asyncio.gather(
            *(self.js.publish(o.subject, o.data, timeout=self.timeout,
                              headers={"Nats-Msg-Id": o.msg_id}) for o in taken),
            return_exceptions=True,
        )
        failed: list[Outgoing] = []
        for item, res in zip(taken, results, strict=True):
            if isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                failed.append(item)
                if self.on_error is not None:
                    self.on_error(type(res).__name__)
                log.warning("alert %s not acknowledged (%s: %s); will retry", item.msg_id,
                            type(res).__name__, res)
            elif self.on_published is not None:
                self.on_published(item, bool(getattr(res, "duplicate", False)))
        for _ in taken:
            self.queue.popleft()
        self.queue.extendleft(reversed(failed))
        if failed:
            self.failures += 1
        else:
            self.failures = 0
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop``, then try briefly to drain what is left."""
        while not stop.is_set():
            if not self.queue:
                self._wake.clear()
                stop_wait = asyncio.ensure_future(stop.wait())
                wake_wait = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({stop_wait, wake_wait},
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop_wait.cancel()
                    wake_wait.cancel()
                continue
            await self.step()
            if self.failures:
                try:
                    await asyncio.wait_for(stop.wait(),
                                           backoff_delay(self.failures, cap=self.timeout))
                except TimeoutError:
                    pass
        await self.drain(deadline=3.0)

    async def drain(self, *, deadline: float) -> None:
        """Publish what is queued, giving up after ``deadline`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while self.queue and loop.time() < end:
            try:
                await asyncio.wait_for(self.step(), max(0.1, end - loop.time()))
            except TimeoutError:
                break
        if self.queue:
            log.warning("%d alerts still queued at shutdown", len(self.queue))
