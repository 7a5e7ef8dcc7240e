"""Alert delivery: a queue the judgement appends to without waiting, and one task that publishes
through JetStream (so ``FLEET_ALERTS`` keeps every transition and core subscribers still see it).

Each alert carries a ``Nats-Msg-Id`` derived from its id and transition, so a retry after a
timeout or a reconnect, or the same alert from a second replica, is stored once. Up to ``batch``
publishes are in flight at a time, but never two for the same alert id, so a resolve can never
overtake its firing. Nothing leaves the queue before the broker acknowledged it.

Core subscribers see every publish, even one the stream drops as a duplicate, so after a kill -9
the same page must not go out twice. Two measures: with ``persist_first`` a new alert waits until
a state save that holds it (its episode and the queue) was attempted (``release``), or at most
``max_hold`` seconds, so a restart either finds the episode and the queued alert or never
published it; and an alert queued by a previous run is first looked up in the stream: if the
stream already holds it (or a later transition of that alert), it is not sent again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
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
    serial: int = 0  # submit order in this run (0: from a previous run)


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
        stream: str | None = None,
        persist_first: Callable[[], None] | None = None,
        max_hold: float = 1.0,
        repair: Callable[[], Awaitable[object]] | None = None,
        repair_every: float = 5.0,
    ) -> None:
        self.js = js
        self.batch = batch
        self.timeout = timeout
        self.queue: deque[Outgoing] = deque()
        self.on_published = on_published
        self.on_error = on_error
        self._wake = asyncio.Event()
        self.failures = 0
        self.stream = stream  # where to look up alerts a previous run queued
        self.persist_first = persist_first  # asks for a state save; None: publish at once
        self.max_hold = max_hold
        self.serial = 0  # the last serial handed out
        self.released = 0  # items up to this serial may be published
        self._held_since: float | None = None  # monotonic time the oldest held item waits from
        self._verify: set[str] = set()  # msg ids of a previous run's queue, checked first
        self.repair = repair  # e.g. recreate a deleted alert stream; called after a failed batch
        self.repair_every = repair_every
        self._repaired_at = -repair_every

    def release(self, upto: int) -> None:
        """A state save holding every item up to serial ``upto`` was attempted: send them."""
        if upto > self.released:
            self.released = upto
            self._held_since = None if upto >= self.serial else time.monotonic()
            self._wake.set()

    def _ready(self) -> bool:
        """Whether the head of the queue may be published now (releasing a hold that is over)."""
        if not self.queue:
            return False
        if self.queue[0].serial <= self.released:
            return True
        since = self._held_since
        if since is not None and time.monotonic() - since >= self.max_hold:
            log.warning("no state save within %.1fs; publishing anyway", self.max_hold)
            self.release(self.serial)
            return True
        return False

    def submit(self, subject: str, alert: Alert) -> None:
        """Queue one alert for delivery."""
        self.serial += 1
        self.queue.append(
            Outgoing(
                subject,
                encode(alert),
                msg_id(alert),
                alert.id,
                alert.kind,
                alert.state,
                self.serial,
            )
        )
        if self.persist_first is None:
            self.released = self.serial
        else:
            if self._held_since is None:
                self._held_since = time.monotonic()
            self.persist_first()
        self._wake.set()

    def resubmit(self, items: list[Outgoing]) -> None:
        """Queue already-encoded alerts (from a previous run) ahead of anything new; each is
        looked up in the stream first (the previous run may have sent it before it died)."""
        items = [replace(o, serial=0) for o in items]  # saved before the save: never held
        self.queue.extendleft(reversed(items))
        self._verify.update(o.msg_id for o in items)
        self._wake.set()

    async def _stored(self, item: Outgoing) -> bool:
        """Whether the stream already holds this transition or a later one of the same alert."""
        if self.stream is None:
            return False
        try:
            last = await self.js.get_last_msg(self.stream, item.subject)
        except Exception as e:  # not found, or no answer: publishing again is the safe side
            log.debug("lookup of %s: %s: %s", item.msg_id, type(e).__name__, e)
            return False
        mid = str((last.headers or {}).get("Nats-Msg-Id", ""))
        return mid == item.msg_id or mid == f"{item.alert_id}:resolved"

    def _take(self) -> list[Outgoing]:
        taken: list[Outgoing] = []
        ids: set[str] = set()
        for item in self.queue:
            if len(taken) >= self.batch or item.alert_id in ids or item.serial > self.released:
                break
            taken.append(item)
            ids.add(item.alert_id)
        return taken

    async def step(self) -> bool:
        """Publish one batch; False if the queue was empty. Failed items stay at the front."""
        taken = self._take()
        if not taken:
            return False
        if self._verify:
            for item in taken:
                if item.msg_id in self._verify:
                    self._verify.discard(item.msg_id)
                    if await self._stored(item):
                        log.info("alert %s already in the stream; not sent again", item.msg_id)
                        self.queue.remove(item)
                        if self.on_published is not None:
                            self.on_published(item, True)
                        return True
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
            await self._repair()
        else:
            self.failures = 0
        return True

    async def _repair(self) -> None:
        """After a failed batch, at most every ``repair_every`` s: make sure the stream exists
        (a stream deleted at runtime makes every publish fail while core subscribers still
        receive each retry)."""
        now = time.monotonic()
        if self.repair is None or now - self._repaired_at < self.repair_every:
            return
        self._repaired_at = now
        try:
            await self.repair()
        except Exception as e:  # the broker may be down; the next failed batch tries again
            log.debug("alert stream repair failed: %s: %s", type(e).__name__, e)

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop``, then try briefly to drain what is left."""
        while not stop.is_set():
            if not self._ready():
                self._wake.clear()
                stop_wait = asyncio.ensure_future(stop.wait())
                wake_wait = asyncio.ensure_future(self._wake.wait())
                held = self._held_since
                timeout = (
                    None if held is None else max(0.0, held + self.max_hold - time.monotonic())
                )
                try:
                    await asyncio.wait(
                        {stop_wait, wake_wait},
                        timeout=timeout,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
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
        self.release(self.serial)  # shutting down: the final save follows
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        while self.queue and loop.time() < end:
            try:
                await asyncio.wait_for(self.step(), max(0.1, end - loop.time()))
            except TimeoutError:
                break
        if self.queue:
            log.warning("%d alerts still queued at shutdown", len(self.queue))
