"""The agent process: wire one ReconcileLoop to NATS, the health/metrics HTTP server, an optional
inventory registration and a KV watch that wakes the loop early (it never replaces the read).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from fleetwatch.admin import cas_put
from services.reconciler.actuators import Actuator, CommandActuator, FilesActuator
from services.reconciler.health import AgentHealth
from services.reconciler.loop import ReconcileLoop
from services.reconciler.metrics import AgentMetrics
from services.reconciler.settings import AgentSettings
from services.reconciler.state import FileRevisions
from shared.bootstrap import FleetStore, ensure_fleet
from shared.bus import backoff_delay, connect
from shared.clock import Clock, SystemClock
from shared.errors import DecodeError, RevisionConflict
from shared.identity import NodeId
from shared.inventory import InventoryEntry, decode_entry
from shared.metrics import BusMetrics, bound_port, metrics_app, serve_http
from shared.subjects import Subjects

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentHandle:
    """What a started agent exposes to whoever started it (tests, ``fleetwatch up``)."""

    loop: ReconcileLoop
    health_url: str
    port: int


def make_actuator(settings: AgentSettings) -> Actuator:
    """``--apply-cmd`` if given, else the files actuator, both keeping state in the state dir."""
    state_dir = settings.effective_state_dir
    if settings.apply_cmd:
        return CommandActuator(
            settings.apply_cmd, state_dir=state_dir, timeout=settings.apply_timeout
        )
    return FilesActuator(state_dir)


def health_url_for(settings: AgentSettings, port: int) -> str:
    """The URL the prober should call: ``--advertise-url`` or the bound address."""
    if settings.advertise_url:
        return settings.advertise_url
    host = settings.health_host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


async def register(
    kv: KeyValue, node: NodeId, health_url: str, *, now: float, attempts: int = 5
) -> int | None:
    """Add or update this node's inventory entry by compare-and-set; None if already right."""
    for _ in range(attempts):
        try:
            got = await kv.get(node.key)
            old: InventoryEntry | None = decode_entry(node.key, got.value)
            rev: int = got.revision or 0
        except DecodeError:
            old, rev = None, got.revision or 0
        except Exception:  # missing or deleted: create it
            old, rev = None, 0
        if old is not None and old.health_url == health_url:
            return None
        entry = (
            old.model_copy(update={"health_url": health_url})
            if old is not None
            else InventoryEntry(site=node.site, node=node.node, health_url=health_url, added=now)
        )
        try:
            return await cas_put(kv, node.key, entry.encode(), if_revision=rev)
        except RevisionConflict:
            continue  # someone else wrote it between our read and write: read again
    raise RevisionConflict(f"could not register {node}: the inventory entry kept changing")


async def _open_store(js_ctx: object, subjects: Subjects, stop: asyncio.Event) -> FleetStore | None:
    """ensure_fleet, retried with backoff: at start the broker may be up but JetStream not ready."""
    attempt = 0
    while not stop.is_set():
        try:
            return await ensure_fleet(js_ctx, subjects)  # type: ignore[arg-type]
        except Exception as e:
            attempt += 1
            log.warning("control plane not ready (%s: %s); retrying", type(e).__name__, e)
            try:
                await asyncio.wait_for(stop.wait(), backoff_delay(attempt, cap=5.0))
            except TimeoutError:
                pass
    return None


async def watch_desired(kv: KeyValue, loop: ReconcileLoop, stop: asyncio.Event) -> None:
    """Wake the loop when the node's desired key changes. A hint only; errors just retry."""
    while not stop.is_set():
        try:
            watcher = await kv.watch(loop.node.key, include_history=False)
            try:
                replayed = False
                while not stop.is_set():
                    try:
                        upd = await watcher.updates(timeout=1.0)  # type: ignore[no-untyped-call]
                    except TimeoutError:
                        continue
                    if upd is None:
                        replayed = True
                    elif replayed:
                        loop.wake()
            finally:
                try:
                    await watcher.stop()  # type: ignore[no-untyped-call]
                except Exception:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("desired watch failed (%s); retrying", e)
            try:
                await asyncio.wait_for(stop.wait(), loop.interval)
            except TimeoutError:
                pass


async def run_agent(
    settings: AgentSettings,
    *,
    stop: asyncio.Event,
    nc: NATS | None = None,
    clock: Clock | None = None,
    registry: CollectorRegistry | None = None,
    on_ready: Callable[[AgentHandle], None] | None = None,
) -> int:
    """Run the agent until ``stop`` is set; pass ``nc``/``clock`` to run it in-process in a test."""
    clock = clock or SystemClock()
    registry = registry or CollectorRegistry()
    node = settings.node_id
    subjects = Subjects(settings.prefix)
    metrics = AgentMetrics.create(registry)
    wake_hook: list[ReconcileLoop] = []

    async def on_reconnect() -> None:
        for lp in wake_hook:  # a desired change made during the outage lands right away
            lp.wake()

    own_nc = nc is None
    if nc is None:
        ping = max(1.0, min(10.0, settings.interval * 3))
        nc = await _connect_or_stop(
            connect(
                settings.nats,
                name=f"fleetwatch-agent-{node.key}",
                metrics=BusMetrics.create(registry, "agent"),
                ping_interval=ping,
                on_reconnect=on_reconnect,
            ),
            stop,
        )
        if nc is None:
            return 0
    runner: web.AppRunner | None = None
    try:
        store = await _open_store(nc.jetstream(timeout=settings.read_timeout), subjects, stop)
        if store is None:
            return 0
        state_dir = settings.effective_state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        loop = ReconcileLoop(
            node=node,
            nc=nc,
            kv=store.desired,
            subjects=subjects,
            actuator=make_actuator(settings),
            revisions=FileRevisions(state_dir),
            clock=clock,
            interval=settings.interval,
            read_timeout=settings.read_timeout,
            metrics=metrics,
        )
        wake_hook.append(loop)
        health = AgentHealth(
            loop=loop,
            kv=store.desired,
            clock=clock,
            max_age=settings.effective_max_age,
            timeout=min(1.0, settings.read_timeout),
            metrics=metrics,
        )
        runner = await serve_http(
            metrics_app(registry, health.handle),
            host=settings.health_host,
            port=settings.health_port,
        )
        port = bound_port(runner)
        url = health_url_for(settings, port)
        log.info(
            "agent %s (boot %s, pid %d): health on %s, state in %s, interval %.3gs",
            node,
            loop.boot,
            loop.pid,
            url,
            state_dir,
            settings.interval,
        )
        if on_ready is not None:
            on_ready(AgentHandle(loop=loop, health_url=url, port=port))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(loop.run(stop))
            tg.create_task(watch_desired(store.desired, loop, stop))
            if settings.register:
                tg.create_task(register_until_done(store.nodes, node, url, clock=clock, stop=stop))
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        if own_nc:
            try:
                await asyncio.wait_for(nc.drain(), 5.0)
            except Exception:
                await nc.close()


async def _connect_or_stop(
    connecting: Coroutine[Any, Any, NATS], stop: asyncio.Event
) -> NATS | None:
    """The first connect waits for a server forever; a stop signal must still end the process."""
    task = asyncio.ensure_future(connecting)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:
        pass
    return None


async def register_until_done(
    kv: KeyValue, node: NodeId, url: str, *, clock: Clock, stop: asyncio.Event
) -> None:
    """Register, retrying with backoff: the agent works (and heartbeats) meanwhile."""
    attempt = 0
    while not stop.is_set():
        try:
            rev = await register(kv, node, url, now=clock.wall())
        except Exception as e:
            attempt += 1
            log.warning("registering %s failed (%s: %s); retrying", node, type(e).__name__, e)
            try:
                await asyncio.wait_for(stop.wait(), backoff_delay(attempt, cap=10.0))
            except TimeoutError:
                pass
            continue
        log.info(
            "registered %s with health URL %s (%s)",
            node,
            url,
            "unchanged" if rev is None else f"revision {rev}",
        )
        return
