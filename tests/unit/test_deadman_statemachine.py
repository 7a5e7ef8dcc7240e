"""A Hypothesis state machine over the pure tracker: random heartbeats, silences, inventory
changes, maintenance, blindness and clock steps, checked against the invariants of issues 3-4."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from services.deadman.tracker import Judgement, Tracker, Transition

W, P = 1.0, 0.5
KEYS = [f"dc{s}.n{i}" for s in range(2) for i in range(4)]


class TrackerMachine(RuleBasedStateMachine):
    """Every firing has at most one resolve; no page while blind or in maintenance; and a node
    silent for window+pending past every hold (maintenance end, blindness, start-up) is firing."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.t = Tracker(
            window=W,
            pending=P,
            grace=0.5,
            renotify=3.0,
            now=self.now,
            judgement=Judgement(site_min=3, flap_changes=4, flap_period=20.0),
        )
        self.last_seen: dict[str, float] = {}
        self.open: dict[str, str] = {}  # alert id -> key
        self.resolved: set[str] = set()
        self.blind_until_hold = 0.0
        self.maint: dict[str, float] = {}
        self.maint_end: dict[str, float] = {}  # when the node's last maintenance really ended
        self.judged = self.now  # when advance last ran

    def _take(self, out: list[Transition]) -> None:
        for tr in out:
            if tr.kind in ("site", "self"):
                continue
            if tr.state == "firing":
                assert tr.alert_id not in self.resolved, "fired again after its resolve"
                assert not self.t.blind, "paged while blind"
                m = self.maint.get(tr.key)
                assert m is None or self.now >= m, "paged during maintenance"
                if tr.count == 1:
                    assert tr.alert_id not in self.open, "second first-firing of one episode"
                    seen = self.last_seen.get(tr.key)
                    if seen is not None:
                        assert self.now > seen + W + P, "paged before window+pending"
                self.open[tr.alert_id] = tr.key
            else:
                assert tr.alert_id in self.open, "resolve without a firing"
                assert tr.alert_id not in self.resolved, "two resolves"
                del self.open[tr.alert_id]
                self.resolved.add(tr.alert_id)

    @rule(key=st.sampled_from(KEYS))
    def heartbeat(self, key: str) -> None:
        seq = int(self.now * 1000)
        r = self.t.heartbeat(key, self.now, "b", seq)
        self.last_seen[key] = self.now
        self._take([r] if r else [])
        self._take(self.t.advance(self.now))
        self.judged = self.now

    @rule(dt=st.floats(min_value=0.001, max_value=2.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._take(self.t.advance(self.now))
        self.judged = self.now

    @rule(key=st.sampled_from(KEYS))
    def register(self, key: str) -> None:
        # an inventory write without maintenance_until ends any window, as in the service
        self.t.register(key, self.now, token="x")
        m = self.maint.get(key)
        if m is not None and m > self.now:
            self.maint[key] = self.now
            self.maint_end[key] = self.now

    @rule(key=st.sampled_from(KEYS))
    def remove(self, key: str) -> None:
        r = self.t.unregister(key, self.now)
        if r is not None:
            assert r.reason == "removed"
        self._take([r] if r else [])
        self.last_seen.pop(key, None)
        self.maint.pop(key, None)
        self.maint_end.pop(key, None)

    @rule(key=st.sampled_from(KEYS), length=st.floats(min_value=0.1, max_value=3.0))
    def maintain(self, key: str, length: float) -> None:
        rec = self.t.nodes.get(key)
        if rec is not None:
            self.t.set_maintenance(rec, self.now + length, self.now)
            self.maint[key] = self.now + length
            self.maint_end[key] = self.now + length

    @rule(key=st.sampled_from(KEYS))
    def end_maintenance(self, key: str) -> None:
        rec = self.t.nodes.get(key)
        if rec is not None:
            self.t.set_maintenance(rec, None, self.now)
            m = self.maint.get(key)
            if m is not None and m > self.now:  # ended early: it ends now
                self.maint[key] = self.now
                self.maint_end[key] = self.now

    @rule(blind=st.booleans())
    def blindness(self, blind: bool) -> None:
        self.t.set_blind(blind, self.now)

    @invariant()
    def open_alerts_match_tracker(self) -> None:
        in_tracker = {r.episode.alert_id for r in self.t.nodes.values() if r.episode}
        assert in_tracker <= set(self.open)

    @invariant()
    def long_silence_is_always_firing(self) -> None:
        t = self.t
        if self.judged != self.now or t.blind or t.suspect is not None:
            return
        for key, seen in self.last_seen.items():
            rec = t.nodes.get(key)
            if rec is None:
                continue
            due = max(seen + W + P, self.maint_end.get(key, 0.0) + W + P, t.hold_all)
            if self.now > due:
                assert rec.episode is not None, f"{key} silent since {seen} is not firing"

    @invariant()
    def heap_is_bounded(self) -> None:
        assert len(self.t._heap) <= 2 * len(KEYS) + 65


TrackerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
test_tracker_state_machine = TrackerMachine.TestCase
test_tracker_state_machine.__doc__ = "Random runs keep the deadman invariants (see TrackerMachine)."
