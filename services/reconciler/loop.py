"""``ReconcileLoop``: one node's cycle (read desired, read current, diff, apply, report, heartbeat)
and its jittered schedule. It takes ready-made handles (a NATS connection, the desired KV bucket,
a clock, an actuator, a revision store), so one process can run thousands of loops on one
connection, as ``fleetwatch sim`` does::

    store = await ensure_fleet(nc.jetstream(), subjects)
    metrics = AgentMetrics.create(registry)            # one set of series for all loops
    loops = [ReconcileLoop(node=NodeId.of("sim", f"n{i}"), nc=nc, kv=store.desired,
                           subjects=subjects, actuator=MemoryActuator(),
                           revisions=MemoryRevisions(), clock=SystemClock(), interval=1.0,
                           metrics=metrics) for i in range(2000)]
    stops = [asyncio.Event() for _ in loops]            # set one to "kill" that agent
    tasks = [asyncio.create_task(lp.run(st)) for lp, st in zip(loops, stops)]

The first cycle of each loop starts at a random point inside one interval, so loops started
together spread their reads; pass ``initial_delay=0`` to start at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from services.reconciler.actuators import Actuator, ApplyResult
from services.reconciler.metrics import AgentMetrics
from services.reconciler.plan import (
    cycle_delay,
    decide,
    first_delay,
    read_error_reason,
    retry_delay,
)
from services.reconciler.state import RevisionStore
from shared.clock import Clock
from shared.codec import encode
from shared.identity import NodeId
from shared.inventory import read_desired
from shared.models import Heartbeat, ReconcileOutcome, ReconcileReport
from shared.subjects import Subjects

log = logging.getLogger(__name__)


def new_boot() -> str:
    """An id for one run of an agent process (or one simulated agent)."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class CycleResult:
    """What one ``step`` did: the report it published and the heartbeat, if it earned one."""

    outcome: ReconcileOutcome
    report: ReconcileReport
    heartbeat: Heartbeat | None
    kv_rtt: float | None

    @property
    def worked(self) -> bool:
        """The control plane answered: this cycle was real work."""
        return self.heartbeat is not None


class ReconcileLoop:
    """One node's reconcile loop. ``step()`` runs one cycle now; ``run(stop)`` runs the schedule."""

    def __init__(
        self,
        *,
        node: NodeId,
        nc: NATS,
        kv: KeyValue,
        subjects: Subjects,
        actuator: Actuator,
        revisions: RevisionStore,
        clock: Clock,
        interval: float,
        read_timeout: float = 2.0,
        metrics: AgentMetrics | None = None,
        rng: random.Random | None = None,
        boot: str | None = None,
        pid: int | None = None,
        host: str | None = None,
        initial_delay: float | None = None,
    ) -> None:
        self.node = node
        self.nc = nc
        self.kv = kv
        self.subjects = subjects
        self.actuator = actuator
        self.revisions = revisions
        self.clock = clock
        self.interval = interval
        self.read_timeout = min(read_timeout, interval) if interval > 0 else read_timeout
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.boot = boot or new_boot()
        self.pid = os.getpid() if pid is None else pid
        self.host = socket.gethostname() if host is None else host
        self.initial_delay = initial_delay
        self._hb_subject = subjects.hb(node)
        self._report_subject = subjects.reconcile(node)
        self.hb_seq = 0
        self.report_seq = 0
        self.applied_rev: int | None = revisions.load()
        self.last_cycle_mono: float | None = None
        self.last_cycle_wall: float | None = None
        self.failures = 0
        self.last_outcome: ReconcileOutcome | None = None
        self.cycles = 0
        self.late_cycles = 0
        self.max_lateness = 0.0
        self._wakeup: asyncio.Future[None] | None = None
        self._woken = False

    # ---- one cycle ---------------------------------------------------------------------

    async def step(self) -> CycleResult:
        """One cycle now: read, diff, apply, publish the report, then (if earned) a heartbeat."""
        t0 = self.clock.monotonic()
        read = await read_desired(self.kv, self.node, timeout=self.read_timeout)
        rtt = self.clock.monotonic() - t0
        if read.status == "read_error":
            return await self._failed_read(read.error, t0)
        if self.metrics is not None:
            self.metrics.kv_read.observe(rtt)
        notes: list[str] = []
        try:
            current = await self.actuator.current()
        except Exception as e:  # a custom actuator's bug must not stop the loop
            log.exception("%s: actuator current() failed", self.node)
            current = {}  # unknown current state: a valid document is simply applied again
            notes.append(f"current state unreadable: {type(e).__name__}: {e}")
        decision = decide(read, applied_rev=self.applied_rev, current=current)
        outcome: ReconcileOutcome
        applied: tuple[str, ...] = ()
        errors: list[str] = notes
        if decision.action == "apply":
            result = await self._apply(read.document or {}, decision.revision or 0)
            applied = result.applied
            errors.extend(result.errors)
            if result.ok:
                outcome = "applied"
                self._record(decision.revision or 0)
            else:
                outcome = "apply_failed"
                self._count_error("apply")
        elif decision.action == "converged":
            outcome = "converged"
            self._record(decision.revision or 0)
        else:
            outcome = decision.action  # unknown_desired / stale_revision: nothing changes
            errors.append(decision.detail)
        if self.failures:
            log.info(
                "%s: desired read works again after %d failed attempts", self.node, self.failures
            )
        self.failures = 0
        now_mono, now_wall = self.clock.monotonic(), self.clock.wall()
        self.last_cycle_mono, self.last_cycle_wall = now_mono, now_wall
        self.last_outcome = outcome
        report = self._report(
            outcome,
            rev=decision.revision,
            drift=decision.drift,
            applied=applied,
            errors=errors,
            duration=now_mono - t0,
        )
        hb = Heartbeat(
            site=self.node.site,
            node=self.node.node,
            boot=self.boot,
            seq=self.hb_seq,
            ts=now_wall,
            interval=self.interval,
            rev=self.applied_rev,
            pid=self.pid,
            host=self.host[:255] or None,
        )
        # The report goes first: whoever sees the heartbeat can already see what the cycle did.
        await self._publish(self._report_subject, encode(report))
        sent = await self._publish(self._hb_subject, encode(hb))
        if sent:
            self.hb_seq += 1
        if self.metrics is not None:
            self.metrics.cycles.labels(outcome).inc()
            self.metrics.cycle_seconds.observe(now_mono - t0)
            self.metrics.last_cycle.set(now_wall)
            if sent:
                self.metrics.heartbeats.inc()
        return CycleResult(outcome, report, hb if sent else None, rtt)

    async def _failed_read(self, error: str, t0: float) -> CycleResult:
        self.failures += 1
        self.last_outcome = "read_error"
        self._count_error(read_error_reason(error))
        report = self._report(
            "read_error",
            rev=None,
            drift=(),
            applied=(),
            errors=[error],
            duration=self.clock.monotonic() - t0,
        )
        if self.nc.is_connected:  # buffering a report for a later reconnect would only mislead
            await self._publish(self._report_subject, encode(report))
        if self.metrics is not None:
            self.metrics.cycles.labels("read_error").inc()
        # Log the first failure of a streak only: a broker outage under `fleetwatch sim` would
        # otherwise print one line per loop per retry.
        if self.failures == 1:
            log.warning(
                "%s: desired read failed (%s); no heartbeat until it works", self.node, error
            )
        else:
            log.debug("%s: desired read failed again (%d): %s", self.node, self.failures, error)
        return CycleResult("read_error", report, None, None)

    async def _apply(self, document: dict[str, object], revision: int) -> ApplyResult:
        try:
            return await self.actuator.apply(document, revision=revision)
        except Exception as e:
            log.exception("%s: actuator apply() failed", self.node)
            return ApplyResult(False, errors=(f"actuator raised {type(e).__name__}: {e}",))

    def _record(self, revision: int) -> None:
        if self.applied_rev is not None and revision <= self.applied_rev:
            return
        try:
            self.revisions.save(revision)
        except OSError as e:
            self._count_error("state_write")
            log.warning("%s: cannot record applied revision %d: %s", self.node, revision, e)
        self.applied_rev = revision
        if self.metrics is not None:
            self.metrics.applied_revision.set(revision)

    def _report(
        self,
        outcome: ReconcileOutcome,
        *,
        rev: int | None,
        drift: tuple[str, ...],
        applied: tuple[str, ...],
        errors: list[str],
        duration: float,
    ) -> ReconcileReport:
        report = ReconcileReport(
            site=self.node.site,
            node=self.node.node,
            ts=self.clock.wall(),
            boot=self.boot,
            seq=self.report_seq,
            outcome=outcome,
            rev=rev,
            applied_rev=self.applied_rev,
            drift=list(drift),
            applied=[a[:4096] for a in applied][:1000],
            errors=[e[:4096] for e in errors if e][:1000],
            duration=max(0.0, duration),
        )
        self.report_seq += 1
        return report

    async def _publish(self, subject: str, data: bytes) -> bool:
        try:
            await self.nc.publish(subject, data)
        except Exception as e:
            self._count_error("publish")
            log.warning("%s: publish to %s failed: %s: %s", self.node, subject, type(e).__name__, e)
            return False
        return True

    def _count_error(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.errors.labels(reason).inc()

    # ---- the schedule ------------------------------------------------------------------

    def wake(self) -> None:
        """Run the next cycle now (a KV watch hint, a reconnect); it still does a real read."""
        self._woken = True
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _sleep(self, delay: float) -> None:
        if self._woken:
            self._woken = False
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._wakeup = fut
        handle = loop.call_later(max(0.0, delay), _resolve, fut)
        try:
            await fut
        finally:
            handle.cancel()
            self._wakeup = None
            self._woken = False

    async def run(self, stop: asyncio.Event) -> None:
        """Cycle on schedule until ``stop``; failed reads retry with capped, jittered backoff."""
        waiter = asyncio.ensure_future(stop.wait())
        waiter.add_done_callback(lambda _: self.wake())
        try:
            delay = (
                first_delay(self.interval, self.rng.random())
                if self.initial_delay is None
                else self.initial_delay
            )
            due = self.clock.monotonic() + delay
            while not stop.is_set():
                await self._sleep(due - self.clock.monotonic())
                if stop.is_set():
                    break
                started = self.clock.monotonic()
                late = max(0.0, started - due)
                self._note_lateness(late)
                try:
                    ok = (await self.step()).outcome != "read_error"
                except Exception:
                    log.exception("%s: cycle failed", self.node)
                    self._count_error("internal")
                    self.failures += 1
                    ok = False
                if ok:
                    delay = cycle_delay(self.interval, self.rng.random())
                else:
                    delay = retry_delay(self.failures, self.interval, self.rng.random())
                # Fixed rate against the schedule; a cycle that overran starts the next one late,
                # never a burst of catch-up cycles.
                due = max(due + delay, self.clock.monotonic()) if late < delay else started + delay
        finally:
            waiter.cancel()

    def _note_lateness(self, late: float) -> None:
        self.cycles += 1
        self.max_lateness = max(self.max_lateness, late)
        if late > 0.1 * self.interval:
            self.late_cycles += 1
        if self.metrics is not None:
            self.metrics.lateness.observe(late)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
