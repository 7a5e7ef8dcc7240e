"""Shared pieces of the deadman integration tests: an in-process deadman, heartbeats, alerts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry

from services.deadman.service import Deadman
from services.deadman.settings import DeadmanSettings
from shared.codec import encode
from shared.identity import NodeId
from shared.models import Alert, Heartbeat
from shared.subjects import Subjects
from tests.harness import Collector, wait_for

WINDOW, PENDING = 1.0, 0.5


def settings(url: str, prefix: str, **kw: Any) -> DeadmanSettings:
    base: dict[str, Any] = dict(
        nats=url,
        prefix=prefix,
        window=WINDOW,
        pending=PENDING,
        metrics_port=0,
        persist_every=0.2,
        instance="test",
        blind_after=2.0,
    )
    base.update(kw)
    return DeadmanSettings(**base)


@asynccontextmanager
async def running(
    url: str, prefix: str, nc: NATS | None = None, **kw: Any
) -> AsyncIterator[Deadman]:
    """An in-process deadman (its own connection unless ``nc``), stopped on exit."""
    dm = Deadman(settings(url, prefix, **kw), nc=nc, registry=CollectorRegistry())
    stop = asyncio.Event()
    task = asyncio.create_task(dm.run(stop))
    try:
        await wait_for(lambda: dm.ready.is_set() or task.done(), timeout=15, what="deadman ready")
        if task.done():
            task.result()
        yield dm
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


class Beater:
    """Publishes heartbeats for one node with an increasing seq."""

    def __init__(self, nc: NATS, subjects: Subjects, node: str, boot: str = "boot1") -> None:
        self.nc = nc
        self.subjects = subjects
        self.node = NodeId.parse(node)
        self.boot = boot
        self.seq = 0
        self.sent_at = 0.0

    async def beat(self) -> None:
        self.seq += 1
        hb = Heartbeat(
            site=self.node.site,
            node=self.node.node,
            boot=self.boot,
            seq=self.seq,
            ts=time.time(),
            pid=4242,
            host="h1",
            rev=3,
        )
        await self.nc.publish(self.subjects.hb(self.node), encode(hb))
        await self.nc.flush()
        self.sent_at = time.monotonic()

    async def keep_beating(self, stop: asyncio.Event, every: float = 0.2) -> None:
        while not stop.is_set():
            await self.beat()
            try:
                await asyncio.wait_for(stop.wait(), every)
            except TimeoutError:
                pass


def alerts(col: Collector, node: str | None = None) -> list[tuple[float, Alert]]:
    """Decoded alerts a collector holds, optionally for one SITE/NODE."""
    out = []
    for at, msg in col.messages:
        a = Alert.model_validate(msgpack.unpackb(msg.data))
        if node is None or f"{a.site}/{a.node}" == node:
            out.append((at, a))
    return out


LIMIT_SLACK = 0.4
"""How late (s) a page may land past last_seen+window+pending on this noisy 2-core machine."""
