"""The deadman's shell: NATS wiring, timers, HTTP, persistence around the pure ``Tracker``.

One ``TaskGroup`` owns the loops: the deadline timer, the alert publisher, state saves, the
canary, the inventory watch and the HTTP endpoint. The heartbeat callback stays tiny (decode,
two checks, a dict update) because it runs for every heartbeat of the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from prometheus_client import CollectorRegistry

from services.deadman.alerts import Alerts
from services.deadman.fastpath import FastHeartbeat, fast_heartbeat
from services.deadman.metrics import DeadmanMetrics, StateCollector
from services.deadman.publisher import AlertPublisher, Outgoing
from services.deadman.settings import DeadmanSettings
from services.deadman.sight import Sight
from services.deadman.store import StateStore
from services.deadman.tracker import REPLAYED, Judgement, Tracker, Transition
from services.deadman.views import STATUS_LIMIT, nodes_view, parse_request
from shared.bootstrap import ensure_alert_stream, ensure_fleet, ensure_kv
from shared.bus import backoff_delay, connect, guarded
from shared.clock import Clock, SystemClock
from shared.codec import decode
from shared.errors import DecodeError
from shared.identity import NodeId
from shared.inventory import InventoryEntry, InventoryView
from shared.metrics import BusMetrics, bound_port, metrics_app, serve_http
from shared.models import Heartbeat
from shared.subjects import Subjects

log = logging.getLogger(__name__)

SERVICE = "deadman"
MAX_SKEW = 300.0
"""A sender clock further than this from ours is counted as an anomaly (``clock_skew``); the
heartbeat still counts: ``ts`` is informational only, life is judged by our receive time."""
URGENT_SAVE = 0.05
TICK = 0.1  # the timer's longest sleep (how soon blindness and its end are noticed)
YIELD_EVERY = 64


class ListenError(OSError):
    """The metrics/health endpoint could not listen (port taken, bad address)."""


class Deadman:
    """One deadman instance; ``run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        settings: DeadmanSettings,
        *,
        nc: NATS | None = None,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.subjects = Subjects(settings.prefix)
        self.registry = registry or CollectorRegistry()
        self.metrics = DeadmanMetrics.create(self.registry)
        self.bus_metrics = BusMetrics.create(self.registry, SERVICE)
        self._own_nc = nc is None
        self.nc = nc
        self.tracker: Tracker | None = None
        self.sight = Sight()
        self.ready = asyncio.Event()
        self.metrics_url = ""
        self.started_wall = self.clock.wall()
        self.publisher: AlertPublisher | None = None
        self.alerts: Alerts | None = None
        self._hb_head = len(self.subjects.prefix) + len(".hb.")
        self._save_soon = asyncio.Event()
        self._blind_id: str | None = None
        self._blind_count = 0
        self._burst = 0
        self.hot = self.metrics.hot
        self._wall_offset = self.clock.wall() - self.clock.monotonic()  # refreshed by the timer
        self.registry.register(
            StateCollector(
                lambda: self.tracker,
                monotonic=self.clock.monotonic,
                wall=self.clock.wall,
                extra=self._extra_gauges,
            )
        )

    # ---- time conversion ----------------------------------------------------------------
    def to_wall(self, mono: float) -> float:
        """Monotonic instant -> unix time (for the wire and for people)."""
        return self.clock.wall() - (self.clock.monotonic() - mono)

    def to_mono(self, wall: float) -> float:
        """Unix time -> monotonic instant of this process."""
        return self.clock.monotonic() - (self.clock.wall() - wall)

    def _extra_gauges(self) -> dict[str, float]:
        now = self.clock.monotonic()
        out = {"alert_queue": float(len(self.publisher.queue) if self.publisher else 0)}
        if self.sight.canary_rtt is not None:
            out["canary_rtt_seconds"] = self.sight.canary_rtt
        if self.sight.last_ingest is not None:
            out["last_ingest_age_seconds"] = now - self.sight.last_ingest
        return out

    # ---- lifecycle ----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Connect, restore, subscribe, judge until ``stop``; then save and drain."""
        s = self.settings
        if self.nc is None:
            self.nc = await connect(
                s.nats,
                name=f"deadman-{s.instance}",
                metrics=self.bus_metrics,
                ping_interval=min(10.0, max(1.0, s.window / 2)),
                on_disconnect=self.sight.on_disconnect,
                on_reconnect=self.sight.on_reconnect,
            )
        nc = self.nc
        js = nc.jetstream(timeout=5)
        attempt = 0
        while True:  # JetStream may not be ready yet (a broker that is still starting)
            try:
                fleet = await ensure_fleet(js, self.subjects)
                kv, _ = await ensure_kv(
                    js,
                    self._state_config(),
                )
                break
            except Exception as e:
                attempt += 1
                log.warning("JetStream not ready (%s: %s); retrying", type(e).__name__, e)
                try:
                    await asyncio.wait_for(stop.wait(), backoff_delay(attempt))
                    return
                except TimeoutError:
                    pass
        now = self.clock.monotonic()
        tracker = Tracker(
            window=s.window,
            pending=s.pending,
            grace=s.grace,
            renotify=s.renotify,
            now=now,
            judgement=Judgement(
                site_fraction=s.site_fraction,
                site_min=s.site_min,
                flap_changes=s.flap_changes,
                flap_period=s.flap_period,
                flap_good=s.flap_good,
            ),
        )
        self.publisher = AlertPublisher(
            js,
            on_published=self._published,
            on_error=self._publish_error,
            stream=self.subjects.alerts_stream,
            persist_first=self._save_soon.set,  # save the episode before its page goes out
            repair=lambda: ensure_alert_stream(js, self.subjects),
        )
        publisher = self.publisher
        store = StateStore(kv, instance=s.instance, outbox=lambda: list(publisher.queue))
        loaded = await store.load(tracker, to_mono=self.to_mono)
        self.tracker = tracker
        self.sight.last_canary = self.clock.monotonic()
        if loaded.outbox:
            log.warning(
                "publishing %d alerts a previous run queued but never got acknowledged",
                len(loaded.outbox),
            )
            publisher.resubmit(loaded.outbox)
        self.alerts = Alerts(
            publisher=self.publisher,
            subjects=self.subjects,
            instance=s.instance,
            clock=self.clock,
            metrics=self.metrics,
            to_wall=self.to_wall,
            on_transition=self._save_soon.set,
        )
        if loaded.saved_at is not None and (
            self.clock.wall() - loaded.saved_at > 2 * s.persist_every
        ):
            # a save older than two intervals means nobody was watching meanwhile (a replica
            # that kept saving is no gap)
            self.alerts.restarted(loaded.saved_at, loaded.nodes)

        subs = [
            await nc.subscribe(
                self.subjects.hb_all,
                cb=guarded(self._on_heartbeat, what="heartbeat", on_error=self._handler_error),
            ),
            await nc.subscribe(
                self.subjects.inbox_canary(SERVICE, s.instance),
                cb=guarded(self._on_canary, what="canary", on_error=self._handler_error),
            ),
            await nc.subscribe(
                self.subjects.service_status(SERVICE),
                cb=guarded(self._on_status, what="status", on_error=self._handler_error),
            ),
        ]
        view = InventoryView(
            fleet.nodes, on_change=self._on_inventory, resync_every=s.inventory_resync
        )
        try:
            runner = await serve_http(
                metrics_app(self.registry, self._healthz), host=s.metrics_host, port=s.metrics_port
            )
        except OSError as e:
            for sub in subs:
                await sub.unsubscribe()
            if self._own_nc:
                await nc.close()
            raise ListenError(
                f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {e.strerror or e} "
                "(choose another --metrics-port, or 0 for a free one)"
            ) from None
        self.metrics_url = f"http://{s.metrics_host}:{bound_port(runner)}"
        log.info(
            "deadman %s: metrics on %s/metrics; window %.3gs pending %.3gs grace %.3gs; "
            "restored %d nodes",
            s.instance,
            self.metrics_url,
            s.window,
            s.pending,
            s.grace,
            loaded.nodes,
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.publisher.run(stop))
                tg.create_task(view.run(stop))
                tg.create_task(self._reconcile_after_sync(view, stop))
                tg.create_task(self._timer(stop))
                tg.create_task(
                    self.sight.send_canaries(
                        nc,
                        self.subjects.inbox_canary(SERVICE, s.instance),
                        clock=self.clock,
                        every=s.canary_every,
                        stop=stop,
                    )
                )
                tg.create_task(self._saver(store, stop, js))
                await nc.flush()
                self.ready.set()
        finally:
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception:
                    pass
            try:
                await store.save(tracker, to_wall=self.to_wall, wall_now=self.clock.wall())
            except Exception as e:
                log.warning("final state save failed: %s: %s", type(e).__name__, e)
            await runner.cleanup()
            if self._own_nc:
                try:
                    await nc.drain()
                except Exception:
                    pass

    # ---- heartbeats ---------------------------------------------------------------------
    async def _on_heartbeat(self, msg: Msg) -> None:
        now = self.clock.monotonic()
        key = msg.subject[self._hb_head :]
        tracker = self.tracker
        assert tracker is not None
        hb: FastHeartbeat | Heartbeat | None = None
        if key in tracker.nodes:  # a known key was validated when it was first seen
            hb = fast_heartbeat(msg.data)
        if hb is None:
            try:
                hb = decode(Heartbeat, msg.data)
            except DecodeError as e:
                self.metrics.rejected.labels(e.reason).inc()
                return
        if f"{hb.site}.{hb.node}" != key:
            self.metrics.rejected.labels("wrong_subject").inc()
            return
        skew = hb.ts - (now + self._wall_offset)
        rec = tracker.nodes.get(key)
        if rec is None:
            if tracker.unregistered >= self.settings.max_unregistered:
                # a flood of made-up node names must not exhaust memory
                self.metrics.rejected.labels("too_many_unregistered").inc()
                return
        else:
            odd = tracker.admit(rec, hb.boot, hb.seq)
            if odd is not None:
                if odd == REPLAYED:
                    self.metrics.rejected.labels(odd).inc()
                    return
                self.metrics.anomalies.labels(odd).inc()
        if not -MAX_SKEW <= skew <= MAX_SKEW:
            self.metrics.anomalies.labels("clock_skew").inc()
        hot = self.hot
        hot.observe_skew(skew)
        hot.heartbeats += 1
        self.sight.last_ingest = now
        t = tracker.heartbeat(key, now, hb.boot, hb.seq, rev=hb.rev, pid=hb.pid, host=hb.host)
        if t is not None:
            self._emit(t)
        # nats-py runs a subscription's pending messages back to back without yielding: during a
        # burst the timer task would starve, so judge inline when something is due, and let the
        # other tasks (the alert publisher) run every few hundred messages.
        if tracker.outbox or tracker.due_before(now):
            self._judge_sight(now)  # after a stall the backlog comes first: are we behind?
            for t in tracker.advance(now):
                self._emit(t)
        self._burst += 1
        if self._burst >= YIELD_EVERY:
            self._burst = 0
            await asyncio.sleep(0)

    def _handler_error(self, reason: str) -> None:
        self.metrics.handler_errors.labels(reason).inc()

    # ---- alerts -------------------------------------------------------------------------
    def _emit(self, t: Transition) -> None:
        assert self.alerts is not None
        self.alerts.emit(t)

    def _published(self, item: Outgoing, duplicate: bool) -> None:
        if duplicate:
            log.info("alert %s was already stored (duplicate)", item.msg_id)

    def _publish_error(self, reason: str) -> None:
        self.metrics.publish_errors.labels(reason).inc()

    def _state_config(self) -> KeyValueConfig:
        """The deadman's own state bucket."""
        return KeyValueConfig(
            bucket=self.subjects.state_bucket(SERVICE), history=1, storage=StorageType.FILE
        )

    # ---- loops --------------------------------------------------------------------------
    async def _timer(self, stop: asyncio.Event) -> None:
        """Fire what is due, then sleep until the next deadline (capped so blindness is seen)."""
        tracker = self.tracker
        assert tracker is not None
        while not stop.is_set():
            now = self.clock.monotonic()
            self._wall_offset = self.clock.wall() - now
            try:
                self._judge_sight(now)
                for t in tracker.advance(now):
                    self._emit(t)
            except Exception as e:  # a bug here must not stop the judging of everyone else
                self._handler_error(type(e).__name__.lower())
                log.exception("timer step failed")
            nd = tracker.next_deadline()  # None while blind: no spinning on past-due entries
            delay = TICK if nd is None else min(TICK, max(0.0, nd - now) + 0.001)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass

    def _judge_sight(self, now: float) -> None:
        tracker = self.tracker
        assert tracker is not None
        # Only the canary counts here: it queues behind the heartbeats in our own socket, so a
        # backlog (ingest fell behind) delays it too, while heartbeats keep arriving "fresh".
        blind = self.sight.blind(now, self.settings.blind_after)
        if blind == tracker.blind:
            return
        alerts = self.alerts
        assert alerts is not None
        tracker.set_blind(blind, now)
        if blind:
            self._blind_count += 1
            self._blind_id = (
                f"self.deadman.{self.settings.instance}.blind.{int(self.clock.wall() * 1000)}"
            )
            why = self.sight.why(now)
            alerts.self_alert(
                alert_id=self._blind_id,
                state="firing",
                severity="page",
                since=self.to_wall(now),
                reason="blind",
                summary=f"deadman {self.settings.instance} is blind: it {why}; "
                "no node is judged until it can see again",
            )
        else:
            since = tracker.blind_since if tracker.blind_since is not None else now
            alerts.self_alert(
                alert_id=self._blind_id or "self.deadman.blind",
                state="resolved",
                severity="page",
                since=self.to_wall(since),
                reason="can see again",
                summary=f"deadman {self.settings.instance} can see again; every "
                "node gets a full window from now",
            )

    async def _on_canary(self, msg: Msg) -> None:
        self.sight.on_canary(msg.data, self.clock.monotonic())

    async def _saver(self, store: StateStore, stop: asyncio.Event, js: JetStreamContext) -> None:
        """Full saves every ``persist_every``; right after an alert is queued, a small save of the
        open episodes and the queue, and only then is the alert released for publishing (so a
        kill -9 right after a page neither loses it nor pages again)."""
        tracker = self.tracker
        assert tracker is not None
        loop = asyncio.get_running_loop()
        next_full = loop.time() + self.settings.persist_every
        while not stop.is_set():
            urgent = False
            try:
                await asyncio.wait_for(self._save_soon.wait(), max(0.0, next_full - loop.time()))
                urgent = True
                await asyncio.sleep(URGENT_SAVE)  # gather a burst of transitions into one save
            except TimeoutError:
                pass
            self._save_soon.clear()
            if stop.is_set():
                return
            publisher = self.publisher
            assert publisher is not None
            mark = publisher.serial  # every alert queued so far is in this save's document
            try:
                if urgent:
                    await store.save_episodes(
                        tracker, to_wall=self.to_wall, wall_now=self.clock.wall()
                    )
                else:
                    next_full = loop.time() + self.settings.persist_every
                    await store.save(tracker, to_wall=self.to_wall, wall_now=self.clock.wall())
            except Exception as e:
                log.warning("state save failed (%s: %s); will retry", type(e).__name__, e)
                self.metrics.handler_errors.labels("state_save").inc()
                with contextlib.suppress(Exception):  # a deleted state bucket comes back
                    await ensure_kv(js, self._state_config())
            finally:
                publisher.release(mark)  # attempted: paging never waits on a failing store

    # ---- inventory ----------------------------------------------------------------------
    async def _on_inventory(self, node: NodeId, entry: InventoryEntry | None) -> None:
        tracker = self.tracker
        assert tracker is not None
        now = self.clock.monotonic()
        if entry is None:
            t = tracker.unregister(node.key, now)
            if t is not None:
                self._emit(t)
            for t in tracker.advance(now):
                self._emit(t)
            return
        until = None
        if entry.maintenance_until is not None:
            until = self.to_mono(entry.maintenance_until)
        # replicas agree on ``added``; without it the id is this replica's own
        token = repr(entry.added) if entry.added else f"at{self.clock.wall():.3f}"
        tracker.register(node.key, now, token=token, maintenance=until)

    async def _reconcile_after_sync(self, view: InventoryView, stop: asyncio.Event) -> None:
        """Nodes restored as registered but gone from the inventory are no longer watched."""
        tracker = self.tracker
        assert tracker is not None
        await view.synced.wait()
        now = self.clock.monotonic()
        known = {n.key for n in view.entries}
        for key, rec in list(tracker.nodes.items()):
            if rec.registered and key not in known:
                t = tracker.unregister(key, now)
                if t is not None:
                    try:
                        self._emit(t)
                    except Exception:
                        log.exception("could not close the alert of removed node %s", key)

    # ---- views --------------------------------------------------------------------------
    def status(self, *, limit: int = STATUS_LIMIT, site: str | None = None) -> dict[str, Any]:
        """The reply to a status request."""
        tracker = self.tracker
        assert tracker is not None
        now = self.clock.monotonic()
        nodes, total = nodes_view(tracker, now, self.to_wall, limit=limit, site=site)
        return {
            "service": SERVICE,
            "instance": self.settings.instance,
            "blind": tracker.blind or tracker.suspect is not None,
            "suspect": tracker.suspect is not None,
            "site_alerts": {s: ep.alert_id for s, ep in tracker.site_alerts.items()},
            "window": tracker.window,
            "pending": tracker.pending,
            "grace": tracker.grace,
            "started": self.started_wall,
            "metrics_url": self.metrics_url,
            "counts": tracker.counts(now),
            "total": total,
            "truncated": total > limit,
            "heartbeats": self.hot.heartbeats,
            "nodes": nodes,
        }

    async def _on_status(self, msg: Msg) -> None:
        if msg.reply:
            limit, site = parse_request(msg.data)
            await msg.respond(json.dumps(self.status(limit=limit, site=site)).encode())

    async def _healthz(self, _: web.Request) -> web.Response:
        """Healthy while it can see: a canary or heartbeat came back recently (computed now)."""
        now = self.clock.monotonic()
        tracker = self.tracker
        canary_age = None if self.sight.last_canary is None else now - self.sight.last_canary
        ingest_age = None if self.sight.last_ingest is None else now - self.sight.last_ingest
        ages = [a for a in (canary_age, ingest_age) if a is not None]
        fresh = bool(ages) and min(ages) <= self.settings.blind_after
        ok = fresh and self.sight.connected and tracker is not None and not tracker.blind
        body = {
            "ok": ok,
            "ts": self.clock.wall(),
            "service": SERVICE,
            "instance": self.settings.instance,
            "connected": self.sight.connected,
            "blind": tracker.blind if tracker is not None else None,
            "canary_age": canary_age,
            "canary_rtt": self.sight.canary_rtt,
            "heartbeat_age": ingest_age,
            "nodes": len(tracker.nodes) if tracker is not None else 0,
        }
        return web.json_response(body, status=200 if ok else 503)
