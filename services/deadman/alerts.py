"""Turning the tracker's transitions into wire ``Alert``s on the right subjects.

Node alerts (``silent``, ``never_seen``) go to ``alert.silent.SITE.NODE``, site alerts to
``alert.site.SITE``, the deadman's alerts about itself to ``alert.self.deadman.INSTANCE``. Every
one is queued on the ``AlertPublisher`` (never awaited here) and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from services.deadman.metrics import DeadmanMetrics
from services.deadman.publisher import AlertPublisher
from services.deadman.tracker import Transition
from shared.clock import Clock
from shared.identity import NodeId
from shared.models import Alert, AlertState, Severity
from shared.subjects import Subjects

log = logging.getLogger(__name__)

SERVICE = "deadman"


class Alerts:
    """Builds and queues the deadman's alerts."""

    def __init__(
        self,
        *,
        publisher: AlertPublisher,
        subjects: Subjects,
        instance: str,
        clock: Clock,
        metrics: DeadmanMetrics,
        to_wall: Callable[[float], float],
        on_transition: Callable[[], None],
    ) -> None:
        self.publisher = publisher
        self.subjects = subjects
        self.instance = instance
        self.clock = clock
        self.metrics = metrics
        self.to_wall = to_wall
        self.on_transition = on_transition  # e.g. "save the open episodes soon"
        self.source = f"{SERVICE}/{instance}"

    def emit(self, t: Transition) -> None:
        """Publish one transition of the tracker."""
        if t.kind == "site":
            self._site(t)
        elif t.kind == "self":
            self.self_alert(
                alert_id=t.alert_id,
                state=t.state,
                severity=t.severity,
                since=max(0.0, self.to_wall(t.since)),
                reason=t.reason,
                summary=f"deadman {self.instance}: {t.reason}",
            )
        else:
            self._node(t)

    def _node(self, t: Transition) -> None:
        site, _, node = t.key.partition(".")
        last_seen = None if t.last_seen is None else self.to_wall(t.last_seen)
        who = f"{site}/{node}"
        if t.state == "resolved":
            summary = (
                f"{who} was removed from the inventory"
                if t.reason == "removed"
                else f"{who} is heartbeating again"
            )
        elif t.kind == "never_seen":
            summary = f"{who} has never sent a heartbeat"
        else:
            summary = f"{who} has been silent for {t.at - (t.last_seen or t.at):.1f}s"
        alert = Alert(
            id=t.alert_id,
            kind=t.kind,
            state=t.state,
            severity=t.severity,
            site=site,
            node=node,
            ts=self.clock.wall(),
            since=max(0.0, self.to_wall(t.since)),
            last_seen=last_seen,
            reason=t.reason,
            summary=summary,
            count=t.count,
            source=self.source,
        )
        self.publisher.submit(self.subjects.alert_silent(NodeId(site, node)), alert)
        self.metrics.alerts.labels(t.kind, t.state).inc()
        self.on_transition()
        log.info("alert %s %s %s (%s)", t.kind, t.state, who, t.reason)

    def _site(self, t: Transition) -> None:
        alert = Alert(
            id=t.alert_id,
            kind="site",
            state=t.state,
            severity=t.severity,
            site=t.key,
            node=None,
            ts=self.clock.wall(),
            since=max(0.0, self.to_wall(t.since)),
            last_seen=None,
            reason=t.reason,
            summary=(
                f"site {t.key}: {t.reason}" if t.state == "firing" else f"site {t.key} is back"
            ),
            count=t.count,
            source=self.source,
        )
        self.publisher.submit(self.subjects.alert_site(t.key), alert)
        self.metrics.alerts.labels("site", t.state).inc()
        self.on_transition()
        log.warning("site alert %s %s: %s", t.state, t.key, t.reason)

    def self_alert(
        self,
        *,
        alert_id: str,
        state: AlertState,
        severity: Severity,
        since: float,
        reason: str,
        summary: str,
        count: int = 1,
    ) -> None:
        """An alert about the deadman itself (blind, suspecting its view, restarted)."""
        alert = Alert(
            id=alert_id,
            kind="self",
            state=state,
            severity=severity,
            site=None,
            node=None,
            ts=self.clock.wall(),
            since=since,
            last_seen=None,
            reason=reason,
            summary=summary,
            count=count,
            source=self.source,
        )
        self.publisher.submit(self.subjects.alert_self(SERVICE, self.instance), alert)
        self.metrics.alerts.labels("self", state).inc()
        log.warning("self alert %s: %s", state, summary)

    def restarted(self, saved_at: float, nodes: int) -> None:
        """The one info event after a restart that followed a gap."""
        gap = max(0.0, self.clock.wall() - saved_at)
        self.self_alert(
            alert_id=f"self.deadman.{self.instance}.restart.{int(saved_at * 1000)}",
            state="firing",
            severity="info",
            since=saved_at,
            reason=f"restarted after a gap of {gap:.1f}s",
            summary=f"deadman {self.instance} restarted after a gap of {gap:.1f}s and "
            f"restored {nodes} nodes",
        )
