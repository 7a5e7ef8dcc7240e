"""The prober's shell: targets from the inventory and flags, one scheduled loop per target,
results on ``PREFIX.probe.SITE.NODE``, alerts through JetStream, open alerts in KV, and a status
reply for ``fleetwatch status``.

Probing never waits on NATS: results are core publishes gathered over at most 50 ms, and alerts
go through ``Outbox``, a queue drained by one task that retries with the same ``Nats-Msg-Id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry
from yarl import URL

from services.prober.alerting import Alerting, Transition
from services.prober.client import Answer, fetch, make_session
from services.prober.metrics import ProberMetrics
from services.prober.outbox import PUBLISH_TIMEOUT, Outbox, build_alert, restore_open_alerts
from services.prober.schedule import following_slot, phase, slots_missed
from services.prober.settings import ProberSettings, check_url
from services.prober.verdict import Judgement, Rules, judge
from shared.bootstrap import FleetStore, ensure_fleet, ensure_kv
from shared.bus import guarded
from shared.clock import Clock, SystemClock
from shared.codec import encode
from shared.identity import NodeId
from shared.inventory import InventoryEntry, InventoryView
from shared.models import Alert, ProbeResult
from shared.subjects import Subjects

log = logging.getLogger(__name__)

RESULT_BATCH = 0.05
"""Results wait at most this long so one socket write carries many (a write per result cost
about as much CPU as the rest of the probe's bookkeeping together)."""


class ListenError(OSError):
    """The metrics/health endpoint could not listen (port taken, bad address)."""


@dataclass
class Target:
    """One URL to probe, what it came from, and the last thing it said."""

    node: NodeId
    url: str
    phase: float
    from_flag: bool = False
    maintenance_until: float | None = None  # wall time; no pages before it
    task: asyncio.Task[None] | None = None
    target_url: URL | None = None  # parsed once, not on every probe
    parsed_from: str = ""
    success: Any = None  # this target's metric children, looked up once
    body_age: Any = None
    last: ProbeResult | None = None
    last_mono: float | None = None


class Prober:
    """One prober instance; ``run(stop)`` until the stop event is set."""

    def __init__(
        self,
        *,
        nc: NATS,
        settings: ProberSettings,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        metrics: ProberMetrics | None = None,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.clock = clock or SystemClock()
        self.registry = registry or CollectorRegistry()
        self.metrics = metrics or ProberMetrics.create(self.registry)
        self.subjects = Subjects(settings.prefix)
        self.rules = Rules(
            max_age=settings.max_age,
            future_tolerance=settings.future_tolerance,
            ts_fields=tuple(settings.ts_field),
            max_body=settings.max_body,
        )
        self.alerting = Alerting(
            failure_threshold=settings.failure_threshold,
            success_threshold=settings.success_threshold,
            instance=settings.instance,
            interval=settings.interval,
            started=self.clock.wall(),
        )
        self.targets: dict[NodeId, Target] = {}
        # inventory entries whose health_url we refuse to probe, with the reason (status shows it)
        self.rejected: dict[NodeId, tuple[str, str]] = {}
        self.metrics_url: str | None = None
        self.ready = asyncio.Event()
        self._outbox: Outbox | None = None
        self._sem = asyncio.Semaphore(settings.concurrency)
        self._tg: asyncio.TaskGroup | None = None
        self._session: aiohttp.ClientSession | None = None
        self._js: JetStreamContext | None = None
        self._state: KeyValue | None = None
        self._last_fresh: dict[NodeId, float] = {}
        self._results: list[tuple[str, bytes]] = []
        self._verdict_counters: dict[str, Any] = {}
        self._results_ready = asyncio.Event()
        self._started = self.clock.monotonic()
        self.metrics.timeout.set(settings.timeout)
        self.metrics.interval.set(settings.interval)

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Set up JetStream pieces, restore open alerts, then probe until ``stop``."""
        js = self.nc.jetstream(timeout=PUBLISH_TIMEOUT)
        self._js = js
        store = await self._setup(js, stop)
        if store is None:
            return
        runner = await self._serve_http()
        self._session = make_session()
        sub = await self.nc.subscribe(
            self.subjects.service_status("prober"),
            cb=guarded(self._on_status, what="status request", on_error=self._count_error),
        )
        view = InventoryView(
            store.nodes, on_change=self._on_inventory, resync_every=self.settings.resync
        )
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for node, url in self.settings.targets().items():
                    self._upsert(node, url, from_flag=True)
                inventory = tg.create_task(view.run(stop))
                publisher = tg.create_task(self._outbox_or_fail().run())
                results = tg.create_task(self._result_sender())
                tg.create_task(self._close_removed_after_sync(view, stop))
                self.ready.set()
                await stop.wait()
                for t in list(self.targets.values()):
                    if t.task is not None:
                        t.task.cancel()
                inventory.cancel()
                await self._outbox_or_fail().flush(deadline=PUBLISH_TIMEOUT * 2)
                publisher.cancel()
                results.cancel()
                await self._send_results()
        finally:
            self._tg = None
            await sub.unsubscribe()
            await runner.cleanup()
            await self._session.close()

    async def _setup(self, js: JetStreamContext, stop: asyncio.Event) -> FleetStore | None:
        """Buckets, stream and restored alerts; retried while JetStream is not answering yet."""
        attempt = 0
        while not stop.is_set():
            try:
                store = await ensure_fleet(js, self.subjects)
                self._state = await self._ensure_state()
                await restore_open_alerts(self._state, self.alerting, self._count_error)
                self._outbox = Outbox(
                    js=js,
                    state=self._state,
                    metrics=self.metrics,
                    describe=self._describe,
                    before_publish=self._send_results,
                    nc=self.nc,
                    repair_state=self._ensure_state,
                    repair_stream=self._ensure_stream,
                    on_error=self._count_error,
                )
                return store
            except Exception as e:
                attempt += 1
                self._count_error("setup")
                log.warning(
                    "JetStream setup failed (%s: %s); retry %d", type(e).__name__, e, attempt
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(0.2 * attempt, 2.0)):
                        await stop.wait()
        return None

    async def _ensure_state(self) -> KeyValue:
        """Open (or create again, when deleted) the bucket of open alerts."""
        state, _ = await ensure_kv(
            self._js_or_fail(),
            KeyValueConfig(
                bucket=self.subjects.state_bucket("prober"),
                history=1,
                storage=StorageType.FILE,
            ),
        )
        self._state = state
        return state

    async def _ensure_stream(self) -> None:
        """Create the alert stream again after it was deleted."""
        await ensure_fleet(self._js_or_fail(), self.subjects)

    def _js_or_fail(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("prober JetStream not started")
        return self._js

    async def _serve_http(self) -> web.AppRunner:
        from shared.metrics import bound_port, metrics_app, serve_http

        app = metrics_app(self.registry, self._healthz)
        host, port = self.settings.metrics_host, self.settings.metrics_port
        try:
            runner = await serve_http(app, host=host, port=port)
        except OSError as e:
            raise ListenError(
                f"cannot serve metrics on {host}:{port}: {e.strerror or e} "
                "(choose another --metrics-port, or 0 for a free one)"
            ) from None
        shown = f"[{host}]" if ":" in host else host
        self.metrics_url = f"http://{shown}:{bound_port(runner)}/metrics"
        log.info("prober %s: metrics at %s", self.settings.instance, self.metrics_url)
        return runner

    # ---- targets ---------------------------------------------------------------------------

    async def _on_inventory(self, node: NodeId, entry: InventoryEntry | None) -> None:
        current = self.targets.get(node)
        if current is not None and current.from_flag:
            return  # an explicit --target wins over the inventory
        if entry is None or not entry.health_url:
            self.rejected.pop(node, None)
            if current is not None:
                self._remove(node)
            return
        try:
            check_url(entry.health_url)
        except ValueError as e:
            self._reject(node, entry.health_url, str(e))
            if current is not None:
                self._remove(node)
            return
        if self.rejected.pop(node, None) is not None:
            log.info("target %s: health_url accepted again", node)
        self._upsert(
            node, entry.health_url, from_flag=False, maintenance_until=entry.maintenance_until
        )

    def _reject(self, node: NodeId, url: str, reason: str) -> None:
        """Refuse an inventory URL; counted and logged once per distinct URL, never probed."""
        if self.rejected.get(node) == (url, reason):
            return  # the periodic re-read sees it again: already counted
        self.rejected[node] = (url, reason)
        self._count_error("bad_health_url")
        log.warning("target %s rejected, not probed: %s", node, reason)

    def _upsert(
        self, node: NodeId, url: str, *, from_flag: bool, maintenance_until: float | None = None
    ) -> None:
        t = self.targets.get(node)
        if t is not None:
            t.maintenance_until = maintenance_until
            if t.url != url:
                log.info("target %s: url now %s", node, url)
                t.url = url
            return
        t = Target(
            node,
            url,
            phase(node, self.settings.interval),
            from_flag=from_flag,
            maintenance_until=maintenance_until,
        )
        self.targets[node] = t
        self.alerting.add(node)
        if self._tg is not None:
            t.task = self._tg.create_task(self._loop(t))
        self.metrics.targets.set(len(self.targets))
        log.info("target %s: probing %s", node, url)

    def _remove(self, node: NodeId) -> None:
        t = self.targets.pop(node, None)
        if t is None:
            return
        if t.task is not None:
            t.task.cancel()
        for series in (self.metrics.success, self.metrics.body_age):
            try:
                series.remove(node.site, node.node)
            except KeyError:
                pass
        self.metrics.targets.set(len(self.targets))
        self._queue(self.alerting.remove(node, now=self.clock.wall()))
        log.info("target %s: removed", node)

    async def _close_removed_after_sync(self, view: InventoryView, stop: asyncio.Event) -> None:
        """Alerts restored from KV for nodes that are gone by now resolve as removed."""
        waiter = asyncio.ensure_future(view.synced.wait())
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()
        if stop.is_set():
            return
        for node in [n for n in self.alerting.targets if n not in self.targets]:
            self._queue(self.alerting.remove(node, now=self.clock.wall()))

    # ---- probing ---------------------------------------------------------------------------

    async def _loop(self, t: Target) -> None:
        interval = self.settings.interval
        due: float | None = None
        while True:
            wall = self.clock.wall()
            due = following_slot(previous=due, now=wall, phase=t.phase, interval=interval)
            await asyncio.sleep(due - wall)
            async with self._sem:
                missed = slots_missed(due=due, now=self.clock.wall(), interval=interval)
                if missed:
                    self.metrics.skipped.inc(missed)
                if t.target_url is None or t.parsed_from != t.url:
                    t.target_url, t.parsed_from = URL(t.url, encoded=True), t.url
                answer = await fetch(
                    self._session_or_fail(),
                    t.target_url,
                    deadline=self.settings.timeout,
                    max_body=self.settings.max_body,
                    clock=self.clock,
                )
            try:
                await self._record(t, answer)
            except Exception as e:  # a bad result must never end the target's loop
                self._count_error(type(e).__name__.lower())
                log.exception("target %s: recording a probe failed", t.node)

    def _outbox_or_fail(self) -> Outbox:
        if self._outbox is None:
            raise RuntimeError("prober outbox not started")
        return self._outbox

    def _session_or_fail(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("prober session not started")
        return self._session

    def judge(self, answer: Answer, now: float) -> Judgement:
        """The verdict on one answer (transport failures pass through)."""
        if answer.failure is not None or answer.status is None:
            return Judgement(answer.failure or "refused", None, answer.failure_detail)
        return judge(
            status=answer.status,
            headers=answer.headers,
            body=answer.body,
            truncated=answer.truncated,
            now=now,
            rules=self.rules,
        )

    async def _record(self, t: Target, answer: Answer) -> None:
        now = self.clock.wall()
        j = self.judge(answer, now)
        status = (
            answer.status if answer.status is not None and 100 <= answer.status <= 999 else None
        )
        age = j.age if j.age is not None and math.isfinite(j.age) else None
        result = ProbeResult(
            site=t.node.site,
            node=t.node.node,
            ts=now,
            url=t.url[:2048],
            verdict=j.verdict,
            ok=j.ok,
            status=status,
            age=age,
            latency=max(answer.latency, 0.0),
            detail=j.detail[:4096],
        )
        t.last, t.last_mono = result, self.clock.monotonic()
        m = self.metrics
        counter = self._verdict_counters.get(j.verdict)
        if counter is None:
            counter = self._verdict_counters[j.verdict] = m.verdicts.labels(j.verdict)
        counter.inc()
        m.duration.observe(answer.latency)
        if t.success is None:
            t.success = m.success.labels(t.node.site, t.node.node)
            t.body_age = m.body_age.labels(t.node.site, t.node.node)
        t.success.set(1 if j.ok else 0)
        t.body_age.set(age if age is not None else math.nan)
        if j.ok:
            self._last_fresh[t.node] = now
        self._results.append((self.subjects.probe(t.node), encode(result)))
        self._results_ready.set()
        if t.node in self.targets:
            quiet = t.maintenance_until is not None and now < t.maintenance_until
            self._queue(self.alerting.observe(t.node, j.verdict, j.detail, now=now, quiet=quiet))
            m.blind.set(1 if self.alerting.blind else 0)

    async def _result_sender(self) -> None:
        """Publish the results gathered over a short window together."""
        window = min(RESULT_BATCH, self.settings.interval / 20)
        while True:
            await self._results_ready.wait()
            await asyncio.sleep(window)
            await self._send_results()

    async def _send_results(self) -> None:
        self._results_ready.clear()
        batch, self._results = self._results, []
        for subject, payload in batch:
            try:
                await self.nc.publish(subject, payload)
            except Exception as e:  # disconnected with a full buffer: the alert path still runs
                self._count_error(f"result_publish_{type(e).__name__.lower()}")

    # ---- alerts ----------------------------------------------------------------------------

    def _queue(self, transitions: list[Transition]) -> None:
        if transitions and self._outbox is not None:
            self._outbox.put(transitions)

    def _describe(self, tr: Transition) -> tuple[str, Alert]:
        t = self.targets.get(tr.node) if tr.node is not None else None
        last_fresh = self._last_fresh.get(tr.node) if tr.node is not None else None
        return build_alert(
            tr,
            subjects=self.subjects,
            instance=self.settings.instance,
            now=self.clock.wall(),
            url=t.url if t else None,
            last_fresh=last_fresh,
        )

    # ---- status and health -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The status document ``fleetwatch status`` shows."""
        rows = []
        for node in sorted(self.targets):
            t = self.targets[node]
            st = self.alerting.targets.get(node)
            r = t.last
            rows.append(
                {
                    "site": node.site,
                    "node": node.node,
                    "url": t.url,
                    "verdict": r.verdict if r else None,
                    "ok": r.ok if r else None,
                    "age": r.age if r else None,
                    "status": r.status if r else None,
                    "latency": r.latency if r else None,
                    "ts": r.ts if r else None,
                    "alert_id": st.alert.id if st and st.alert else None,
                    "failing": st.failing if st else 0,
                    "maintenance": t.maintenance_until is not None
                    and self.clock.wall() < t.maintenance_until,
                }
            )
        return {
            "service": "prober",
            "instance": self.settings.instance,
            "interval": self.settings.interval,
            "blind": self.alerting.blind,
            "metrics_url": self.metrics_url,
            "targets": rows,
            "rejected": [
                {"site": n.site, "node": n.node, "url": url[:2048], "reason": reason}
                for n, (url, reason) in sorted(self.rejected.items())
            ],
        }

    async def _on_status(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(json.dumps(self.status()).encode())

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when connected and probes keep completing (checked now, not cached)."""
        mono = self.clock.monotonic()
        limit = 2 * self.settings.interval + self.settings.timeout + 1.0
        latest = max(
            (t.last_mono for t in self.targets.values() if t.last_mono is not None), default=None
        )
        if latest is None:
            progressing = not self.targets or mono - self._started <= limit
        else:
            progressing = mono - latest <= limit
        connected = self.nc.is_connected
        ok = connected and progressing
        return ok, {
            "ok": ok,
            "ts": self.clock.wall(),
            "service": "prober",
            "instance": self.settings.instance,
            "connected": connected,
            "targets": len(self.targets),
            "last_probe_age": None if latest is None else mono - latest,
            "blind": self.alerting.blind,
            "alerts_pending": self._outbox.pending if self._outbox else 0,
        }

    async def _healthz(self, _: web.Request) -> web.Response:
        ok, body = self.health()
        return web.json_response(body, status=200 if ok else 503)

    def _count_error(self, reason: str) -> None:
        self.metrics.errors.labels(reason).inc()
