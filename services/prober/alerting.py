"""When a probe alert fires and resolves, and when the prober suspects itself. Pure: no I/O, no
clocks; every call takes ``now`` (wall seconds, for the alert's ``since``/``ts``).

Rules (issue 6): a node pages after ``failure_threshold`` consecutive non-fresh results, at once
for a lie (``stale``/``future``); it resolves after ``success_threshold`` consecutive fresh
results with the id it fired with. When at least ``min_blind`` targets have results, every
tracked target has had one (or two intervals have passed since start), and every latest result
failed, the trouble is more likely ours (network, DNS, clock, a broker outage every agent
reports as 503): the prober goes *blind*, raises one self alert, and pages no node until a target
answers fresh again (only a fresh answer ends blindness, so a blind alert restored after a
restart is not dropped early). Blindness is never judged in the first interval after start,
when most targets have not answered yet.

Failure streaks do not grow while blind: they are reset when blindness starts and when it ends,
so after sight returns each target needs a full ``failure_threshold`` of new failures (lies
included, until it answers fresh once) before it pages; agents often need a cycle to recover.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from shared.identity import NodeId
from shared.models import Verdict

LIES: frozenset[str] = frozenset({"stale", "future"})


@dataclass
class OpenAlert:
    """A firing probe alert: what survives a restart (persisted as a KV document)."""

    id: str
    since: float
    verdict: str
    reason: str

    def to_doc(self) -> dict[str, Any]:
        return {
            "v": 1,
            "id": self.id,
            "since": self.since,
            "verdict": self.verdict,
            "reason": self.reason,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> OpenAlert:
        """Rebuild from a KV document; ValueError when it is not one of ours."""
        ident, since, verdict, reason = (doc.get(k) for k in ("id", "since", "verdict", "reason"))
        if not isinstance(ident, str) or not ident:
            raise ValueError("open alert has no id")
        if isinstance(since, bool) or not isinstance(since, int | float):
            raise ValueError("open alert has no numeric 'since'")
        return cls(ident, float(since), str(verdict or "unknown"), str(reason or ""))


@dataclass
class TargetState:
    """Counters of one target."""

    failing: int = 0
    fresh: int = 0
    first_failure: float | None = None
    last_verdict: str | None = None
    last_detail: str = ""
    alert: OpenAlert | None = None
    # a lie counts like any failure (no page at once) until the target answers fresh: set at
    # start and when sight returns, since a stale body then may be the outage's, not the node's
    settling: bool = False


@dataclass(frozen=True)
class Transition:
    """An alert to publish: ``node`` is None for the prober's own (blind) alert."""

    state: Literal["firing", "resolved"]
    node: NodeId | None
    alert_id: str
    since: float
    verdict: str
    reason: str


def alert_id(node: NodeId, since: float) -> str:
    """Stable id of one episode: the node and when its failure began (ms)."""
    return f"probe.{node.key}.{int(since * 1000)}"


@dataclass
class Alerting:
    """Per-target counters, open alerts and the blind state of one prober."""

    failure_threshold: int = 3
    success_threshold: int = 2
    instance: str = "prober"
    targets: dict[NodeId, TargetState] = field(default_factory=dict)
    blind_since: float | None = None
    blind_id: str | None = None
    interval: float = 0.0
    """Probe interval: no blindness judged within one interval of ``started``."""
    started: float | None = None
    """Wall time this prober started (None: no start grace, as in most unit tests)."""
    min_blind: int = 3
    """Fewest failing targets that make the prober call itself blind."""
    # running counts so the blind check is O(1) per result, not a scan of every target
    _seen: int = 0
    _fresh: int = 0

    def add(self, node: NodeId) -> None:
        """Start tracking a target (no-op when known)."""
        self.targets.setdefault(node, TargetState())

    def restore(self, node: NodeId, alert: OpenAlert) -> None:
        """Reload an alert that was open before a restart: it stays open, it does not re-fire."""
        st = self.targets.setdefault(node, TargetState())
        st.alert = alert
        st.failing = max(st.failing, self.failure_threshold)
        st.first_failure = alert.since

    def remove(self, node: NodeId, *, now: float) -> list[Transition]:
        """Stop tracking; an open alert resolves as ``removed``."""
        st = self.targets.pop(node, None)
        out: list[Transition] = []
        if st is not None and st.last_verdict is not None:
            self._seen -= 1
            self._fresh -= st.last_verdict == "fresh"
        if st is not None and st.alert is not None:
            out.append(
                Transition(
                    "resolved",
                    node,
                    st.alert.id,
                    st.alert.since,
                    "removed",
                    "removed from the inventory",
                )
            )
        out.extend(self._check_blind(now))
        return out

    @property
    def blind(self) -> bool:
        return self.blind_since is not None

    def observe(
        self, node: NodeId, verdict: Verdict, detail: str, *, now: float, quiet: bool = False
    ) -> list[Transition]:
        """Account one probe result; return the alerts to publish (in order).

        ``quiet`` (a maintenance window) counts the result but pages nothing; a target still
        failing when the window ends pages on its next failure.
        """
        st = self.targets.get(node)
        if st is None:
            st = self.targets[node] = TargetState()
        if st.last_verdict is None:
            self._seen += 1
        elif st.last_verdict == "fresh":
            self._fresh -= 1
        self._fresh += verdict == "fresh"
        st.last_verdict = verdict
        st.last_detail = detail
        out: list[Transition] = []
        if verdict == "fresh":
            st.failing = 0
            st.first_failure = None
            st.fresh += 1
            out.extend(self._check_blind(now))
            st.settling = False  # after the check: sight returning settles the others only
            if st.alert is not None and st.fresh >= self.success_threshold:
                a, st.alert = st.alert, None
                out.append(
                    Transition(
                        "resolved",
                        node,
                        a.id,
                        a.since,
                        verdict,
                        f"fresh again ({st.fresh} in a row)",
                    )
                )
            return out
        st.fresh = 0
        out.extend(self._check_blind(now))
        if self.blind:
            return out  # streaks do not grow while we cannot see (they were reset)
        st.failing += 1
        if st.first_failure is None:
            st.first_failure = now
        lie_now = verdict in LIES and not st.settling and self._judging(now)
        if st.alert is None and not quiet and (lie_now or st.failing >= self.failure_threshold):
            st.alert = OpenAlert(
                alert_id(node, st.first_failure), st.first_failure, verdict, detail
            )
            out.append(Transition("firing", node, st.alert.id, st.first_failure, verdict, detail))
        elif st.alert is not None:
            st.alert.verdict, st.alert.reason = verdict, detail
        return out

    def _judging(self, now: float) -> bool:
        """False within the first interval after start."""
        return self.started is None or now - self.started >= self.interval

    def _round_complete(self, now: float) -> bool:
        """Every target has answered once, or two intervals passed (a late-added target must
        not postpone the judgement for ever)."""
        if not self._judging(now):
            return False
        if self._seen >= len(self.targets):
            return True
        return self.started is None or now - self.started >= 2 * self.interval

    def _reset_streaks(self, *, settle: bool) -> None:
        for st in self.targets.values():
            if st.alert is None:
                st.failing = 0
                st.first_failure = None
            if settle:
                st.settling = True

    def _check_blind(self, now: float) -> list[Transition]:
        any_fresh = self._fresh > 0
        if (
            self.blind_since is None
            and not any_fresh
            and self._seen >= max(self.min_blind, 2)
            and self._round_complete(now)
        ):
            self.blind_since = now
            self.blind_id = f"self.prober.{self.instance}.{int(now * 1000)}"
            self._reset_streaks(settle=False)
            kinds = sorted(
                {str(s.last_verdict) for s in self.targets.values() if s.last_verdict is not None}
            )
            return [
                Transition(
                    "firing",
                    None,
                    self.blind_id,
                    now,
                    "blind",
                    f"all {self._seen} targets failing at once ({', '.join(kinds)})",
                )
            ]
        if any_fresh and self.blind_since is not None:
            since, ident = self.blind_since, self.blind_id or ""
            self.blind_since = self.blind_id = None
            self._reset_streaks(settle=True)
            return [
                Transition("resolved", None, ident, since, "fresh", "a target answers fresh again")
            ]
        return []
