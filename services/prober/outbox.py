"""Alerts on their way to JetStream, and the open ones kept in KV across restarts.

One task drains the queue in order, so probing never waits on the broker. For each transition
it first writes the state (a firing alert is put under its node's key, a resolve deletes it),
then publishes with ``Nats-Msg-Id`` = alert id + state; a timeout or an outage is retried with
the same id, so the stream stores each transition once even when a retried publish had landed.

A missing state bucket or alert stream (deleted at runtime) must not hold pages back: a missing
bucket is counted and recreated and the alert goes out even if the state cannot be written; a
missing stream is counted, the alert is published on the core subject at once (subscribers still
see it), and the stream is recreated so the same id can be stored too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    NoKeysError,
    NoStreamResponseError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from services.prober.alerting import Alerting, OpenAlert, Transition
from services.prober.metrics import ProberMetrics
from shared.codec import decode_document, encode, encode_document
from shared.errors import DecodeError, InvalidNodeId
from shared.identity import NodeId
from shared.models import Alert
from shared.subjects import Subjects

log = logging.getLogger(__name__)

SELF_KEY = "self"
PUBLISH_TIMEOUT = 2.0
_MISSING = (NoStreamResponseError, BucketNotFoundError, NotFoundError)


def _ignore(_: str) -> None:
    return None


def build_alert(
    tr: Transition,
    *,
    subjects: Subjects,
    instance: str,
    now: float,
    url: str | None,
    last_fresh: float | None,
) -> tuple[str, Alert]:
    """The subject and Alert message of one transition (pure)."""
    source = f"prober/{instance}"
    if tr.node is None:
        firing = tr.state == "firing"
        summary = (
            f"prober {instance} is blind: {tr.reason}"
            if firing
            else f"prober {instance} sees again: {tr.reason}"
        )
        alert = Alert(
            id=tr.alert_id,
            kind="self",
            state=tr.state,
            severity="page",
            site=None,
            node=None,
            ts=now,
            since=tr.since,
            last_seen=None,
            reason="blind" if firing else "recovered",
            summary=summary,
            source=source,
        )
        return subjects.alert_self("prober", instance), alert
    node = tr.node
    summary = (
        f"{node} probe {tr.verdict}: {tr.reason} ({url or 'its health URL'})"
        if tr.state == "firing"
        else f"{node} probe resolved: {tr.reason}"
    )
    alert = Alert(
        id=tr.alert_id,
        kind="probe",
        state=tr.state,
        severity="page",
        site=node.site,
        node=node.node,
        ts=now,
        since=tr.since,
        last_seen=last_fresh,
        reason=tr.verdict,
        summary=summary[:4096],
        source=source,
    )
    return subjects.alert_probe(node), alert


class Outbox:
    """The ordered queue of alert transitions and the task that stores them."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        state: KeyValue,
        metrics: ProberMetrics,
        describe: Callable[[Transition], tuple[str, Alert]],
        before_publish: Callable[[], Awaitable[None]],
        nc: NATS | None = None,
        repair_state: Callable[[], Awaitable[KeyValue]] | None = None,
        repair_stream: Callable[[], Awaitable[None]] | None = None,
        on_error: Callable[[str], None] = _ignore,
    ) -> None:
        self.js = js
        self.state = state
        self.metrics = metrics
        self.describe = describe
        self.before_publish = before_publish
        self.nc = nc
        self.repair_state = repair_state
        self.repair_stream = repair_stream
        self.on_error = on_error
        self.pending = 0
        self._queue: asyncio.Queue[Transition] = asyncio.Queue()

    def put(self, transitions: list[Transition]) -> None:
        """Queue transitions (never blocks)."""
        for tr in transitions:
            self.pending += 1
            self._queue.put_nowait(tr)
            what = "prober itself" if tr.node is None else str(tr.node)
            log.warning("alert %s %s: %s (%s)", tr.state, what, tr.verdict, tr.reason)

    async def run(self) -> None:
        """Deliver queued transitions in order, forever."""
        while True:
            tr = await self._queue.get()
            try:
                await self._deliver(tr)
            finally:
                self.pending -= 1
                self._queue.task_done()

    async def flush(self, *, deadline: float) -> None:
        """On shutdown, give queued alerts a short chance to reach JetStream."""
        try:
            async with asyncio.timeout(deadline):
                await self._queue.join()
        except TimeoutError:
            log.warning("%d alert(s) not stored before shutdown", self.pending)

    async def _deliver(self, tr: Transition) -> None:
        subject, alert = self.describe(tr)
        key = SELF_KEY if tr.node is None else tr.node.key
        headers = {"Nats-Msg-Id": f"{tr.alert_id}:{tr.state}"}
        payload = encode(alert)
        attempt = 0
        while True:
            try:
                await self._persist_or_repair(key, tr)
                await self.before_publish()
                await self._publish(subject, payload, headers, tr)
                self.metrics.alerts.labels(alert.kind, alert.state).inc()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                attempt += 1
                self.metrics.publish_retries.labels(type(e).__name__.lower()).inc()
                log.warning(
                    "alert %s %s not stored yet (%s: %s); retry %d",
                    tr.alert_id,
                    tr.state,
                    type(e).__name__,
                    e,
                    attempt,
                )
                await asyncio.sleep(min(0.1 * 2 ** min(attempt, 5), 2.0))

    async def _persist_or_repair(self, key: str, tr: Transition) -> None:
        """Write the state; a missing bucket is recreated, and never blocks the page."""
        try:
            await self._persist(key, tr)
            return
        except _MISSING as e:
            self.on_error("state_bucket_missing")
            log.error("state bucket missing (%s); recreating it", type(e).__name__)
        try:
            if self.repair_state is not None:
                self.state = await self.repair_state()
            await self._persist(key, tr)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # the page matters more than the state: publish anyway (it may re-fire after restart)
            self.on_error("state_write")
            log.error(
                "alert %s %s: state not written (%s: %s); publishing anyway",
                tr.alert_id,
                tr.state,
                type(e).__name__,
                e,
            )

    async def _publish(
        self, subject: str, payload: bytes, headers: dict[str, str], tr: Transition
    ) -> None:
        """JetStream publish; a missing stream is counted, recreated and the alert stored again.

        A JetStream publish is itself a core message on the alert subject, so subscribers have the
        alert even when no stream stores it: with no stream and no subscriber the server answers
        "no responders" at once; with subscribers the publish times out, and we ask whether the
        stream exists before treating it as an outage (which is retried with the same id).
        """
        seen = True  # did core subscribers get the message with the JetStream publish?
        try:
            await self.js.publish(subject, payload, timeout=PUBLISH_TIMEOUT, headers=headers)
            return
        except NoStreamResponseError:
            seen = False
        except TimeoutError:
            if not await self._stream_missing(subject):
                raise
        self.on_error("alert_stream_missing")
        log.error(
            "alert %s %s: no alert stream stored it (subscribers had it); recreating the stream",
            tr.alert_id,
            tr.state,
        )
        if self.nc is not None and not seen:
            # "no responders" said nobody listened just then; one plain publish costs nothing
            await self.nc.publish(subject, payload, headers=headers)
        if self.repair_stream is None:
            return
        try:
            await self.repair_stream()
            await self.js.publish(subject, payload, timeout=PUBLISH_TIMEOUT, headers=headers)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.on_error("alert_stream_repair")
            log.error("alert stream not recreated (%s: %s)", type(e).__name__, e)

    async def _stream_missing(self, subject: str) -> bool:
        """True only when the broker answers that no stream takes ``subject``."""
        try:
            await self.js.find_stream_name_by_subject(subject)
        except NotFoundError:
            return True
        except Exception:
            return False  # no answer at all: an outage, not a missing stream
        return False

    async def _persist(self, key: str, tr: Transition) -> None:
        if tr.state == "firing":
            doc = OpenAlert(tr.alert_id, tr.since, tr.verdict, tr.reason[:1000]).to_doc()
            await self.state.put(key, encode_document(doc))
        else:
            try:
                await self.state.delete(key)
            except KeyNotFoundError:
                pass


async def restore_open_alerts(
    state: KeyValue, alerting: Alerting, on_bad: Callable[[str], None]
) -> int:
    """Reload alerts that were open when the previous run stopped; return how many."""
    try:
        keys = await state.keys()
    except NoKeysError:
        return 0
    restored = 0
    for key in keys:
        try:
            entry = await state.get(key)
            if entry.value is None:
                continue
            alert = OpenAlert.from_doc(decode_document(entry.value, what=f"state {key}"))
            if key == SELF_KEY:
                alerting.blind_since, alerting.blind_id = alert.since, alert.id
            else:
                alerting.restore(NodeId.from_key(key), alert)
            restored += 1
            log.info("restored open alert %s (%s)", alert.id, key)
        except KeyNotFoundError:
            continue
        except (DecodeError, InvalidNodeId, ValueError) as e:
            on_bad("bad_state")
            log.warning("state %s ignored: %s", key, e)
    return restored
