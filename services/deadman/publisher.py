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
from typing import Any

from nats.js import JetStreamContext

from shared.bus import backoff_delay
from shared.codec import encode
from shared.models import Alert

log = logging.getLogger(__name__)

FLUSH_EVERY = 128


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

    def __init__(
        self,
        js: JetStreamContext,
        *,
        batch: int = 1024,
        timeout: float = 2.0,
        on_published: Callable[[Outgoing, bool], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
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
        self.queue.append(
            Outgoing(subject, encode(alert), msg_id(alert), alert.id, alert.kind, alert.state)
        )
        self._wake.set()

    def resubmit(self, items: list[Outgoing]) -> None:
        """Queue already-encoded alerts (from a previous run) ahead of anything new."""
        self.queue.extendleft(reversed(items))
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
        # pipelined: every publish goes out before any ack is awaited (no task per message)
        futures: list[asyncio.Future[Any] | Exception] = []
        for i, o in enumerate(taken):
            if i and i % FLUSH_EVERY == 0:
                await asyncio.sleep(0)  # let the client's flusher put the first ones on the wire
            try:
                # no wait_stall: a batch never exceeds the client's in-flight limit, and a
                # timeout here would cost a task per message
                futures.append(
                    await self.js.publish_async(
                        o.subject, o.data, headers={"Nats-Msg-Id": o.msg_id}
                    )
                )
            except Exception as e:
                futures.append(e)
        waiting = [f for f in futures if isinstance(f, asyncio.Future)]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=self.timeout)
            for fut in late:
                fut.cancel()
        failed: list[Outgoing] = []
        for item, f in zip(taken, futures, strict=True):
            err: BaseException | None
            if not isinstance(f, asyncio.Future):
                err = f
            elif f.cancelled():
                err = TimeoutError("no acknowledgement in time")
            else:
                err = f.exception()
            if err is not None:
                failed.append(item)
                if self.on_error is not None:
                    self.on_error(type(err).__name__)
                log.warning(
                    "alert %s not acknowledged (%s: %s); will retry",
                    item.msg_id,
                    type(err).__name__,
                    err,
                )
            elif self.on_published is not None and isinstance(f, asyncio.Future):
                self.on_published(item, bool(getattr(f.result(), "duplicate", False)))
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
                    await asyncio.wait({stop_wait, wake_wait}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop_wait.cancel()
                    wake_wait.cancel()
                continue
            await self.step()
            if self.failures:
                try:
                    await asyncio.wait_for(
                        stop.wait(), backoff_delay(self.failures, cap=self.timeout)
                    )
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
