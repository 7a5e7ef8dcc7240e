"""The deadman's pure tracker, driven by a fake clock: timing, ids, inventory, holds, restore."""

from __future__ import annotations

import pytest

from services.deadman.tracker import Episode, Tracker, Transition
from shared.clock import FakeClock

W, P = 1.0, 0.5


def make(clock: FakeClock, *, grace: float = 0.0, renotify: float = 0.0) -> Tracker:
    return Tracker(window=W, pending=P, grace=grace, renotify=renotify, now=clock.monotonic())


def run_to(
    tracker: Tracker, clock: FakeClock, until: float, step: float = 0.01
) -> list[Transition]:
    out: list[Transition] = []
    while clock.monotonic() < until:
        clock.advance(step)
        out += tracker.advance(clock.monotonic())
    return out


def test_pages_once_after_window_plus_pending() -> None:
    """A silent node pages once, at last_seen + window + pending (not before, not twice)."""
    c = FakeClock()
    t = make(c)
    t0 = c.monotonic()
    assert t.heartbeat("dc1.n1", t0, "b1", 1) is None
    early = run_to(t, c, t0 + W + P - 0.02)
    assert early == []
    fired = run_to(t, c, t0 + 10)
    assert [(f.kind, f.state, f.key) for f in fired] == [("silent", "firing", "dc1.n1")]
    assert t0 + W + P < fired[0].at <= t0 + W + P + 0.011


def test_resolve_carries_the_firing_id() -> None:
    """The next heartbeat resolves the episode with the same id; a later silence is a new id."""
    c = FakeClock()
    t = make(c)
    t.heartbeat("dc1.n1", c.monotonic(), "b1", 1)
    [fire] = run_to(t, c, c.monotonic() + 2)
    res = t.heartbeat("dc1.n1", c.monotonic(), "b1", 2)
    assert res is not None and res.state == "resolved" and res.alert_id == fire.alert_id
    assert res.reason == "heartbeat"
    [fire2] = run_to(t, c, c.monotonic() + 2)
    assert fire2.alert_id != fire.alert_id


def test_ids_are_identical_on_two_trackers() -> None:
    """Two replicas that saw the same heartbeats derive the same alert id."""
    c = FakeClock()
    a, b = make(c), make(c)
    for tr in (a, b):
        tr.heartbeat("dc1.n1", c.monotonic(), "boot-x", 7)
    c.advance(2)
    assert [x.alert_id for x in a.advance(c.monotonic())] == [
        x.alert_id for x in b.advance(c.monotonic())
    ]


@pytest.mark.parametrize("delta", [-0.005, -0.001, 0.0])
def test_heartbeat_at_or_before_deadline_never_pages(delta: float) -> None:
    """A heartbeat arriving at or just before the deadline keeps the node up (deadline race)."""
    c = FakeClock()
    t = make(c)
    t0 = c.monotonic()
    t.heartbeat("dc1.n1", t0, "b", 1)
    c.advance(W + P + delta)
    assert t.advance(c.monotonic()) == []
    assert t.heartbeat("dc1.n1", c.monotonic(), "b", 2) is None
    assert t.advance(c.monotonic()) == []


def test_deadline_race_many_times() -> None:
    """Around the deadline, a firing and its resolve never share an instant."""
    for i in range(400):
        c = FakeClock()
        t = make(c)
        t0 = c.monotonic()
        t.heartbeat("dc1.n1", t0, "b", 1)
        offset = (i - 200) * 0.00005  # -10 ms .. +10 ms around the deadline
        c.advance(W + P + offset)
        fired = t.advance(c.monotonic())
        res = t.heartbeat("dc1.n1", c.monotonic(), "b", 2)
        if offset <= 0:
            assert fired == [] and res is None
        else:
            assert len(fired) == 1 and res is not None
            c.advance(0.001)
        assert t.advance(c.monotonic()) == []


def test_never_seen_after_grace() -> None:
    """An inventory node that never reports pages as never_seen once the grace has passed."""
    c = FakeClock()
    t = Tracker(window=W, pending=P, now=c.monotonic())  # grace defaults to W+P
    t.register("dc1.n1", c.monotonic(), token="1")
    assert run_to(t, c, c.monotonic() + W + P - 0.02) == []
    [f] = run_to(t, c, c.monotonic() + 0.1)
    assert f.kind == "never_seen" and f.last_seen is None
    r = t.heartbeat("dc1.n1", c.monotonic(), "b", 1)
    assert r is not None and r.alert_id == f.alert_id and r.kind == "never_seen"


def test_removed_closes_as_removed_and_stops_watching() -> None:
    """Removal closes an open alert with reason removed (not a recovery) and nothing more pages."""
    c = FakeClock()
    t = make(c)
    t.register("dc1.n1", c.monotonic())
    t.heartbeat("dc1.n1", c.monotonic(), "b", 1)
    [f] = run_to(t, c, c.monotonic() + 2)
    r = t.unregister("dc1.n1", c.monotonic())
    assert r is not None and r.reason == "removed" and r.alert_id == f.alert_id
    assert run_to(t, c, c.monotonic() + 5) == []
    assert "dc1.n1" not in t.nodes


def test_unregistered_node_pages_like_any_other() -> None:
    """A node absent from the inventory that heartbeats is tracked and pages when silent."""
    c = FakeClock()
    t = make(c)
    t.heartbeat("dc9.stray", c.monotonic(), "b", 1)
    assert not t.nodes["dc9.stray"].registered
    [f] = run_to(t, c, c.monotonic() + 2)
    assert f.key == "dc9.stray" and f.kind == "silent"


def test_states_up_late_down() -> None:
    """State reads up, then late after the window, then down after pending."""
    c = FakeClock()
    t = make(c)
    t.heartbeat("dc1.n1", c.monotonic(), "b", 1)
    rec = t.nodes["dc1.n1"]
    seen = []
    for dt in (0.5, 0.6, 0.5):
        c.advance(dt)
        t.advance(c.monotonic())
        seen.append(t.state(rec, c.monotonic()))
    assert seen == ["up", "late", "down"]
    assert t.counts(c.monotonic())["down"] == 1


def test_blind_stretch_pages_nobody_then_gives_a_full_window() -> None:
    """While blind nothing pages; after sight returns a dead node pages one full window later."""
    c = FakeClock()
    t = make(c)
    t.heartbeat("dc1.n1", c.monotonic(), "b", 1)
    t.set_blind(True, c.monotonic())
    assert run_to(t, c, c.monotonic() + 5) == []
    back = c.monotonic()
    t.set_blind(False, back)
    assert run_to(t, c, back + W + P - 0.02) == []
    [f] = run_to(t, c, back + W + P + 0.05)
    assert f.at > back + W + P


def test_maintenance_suppresses_then_full_window() -> None:
    """No page during maintenance; after it ends the node gets a full window; resolves still go."""
    c = FakeClock()
    t = make(c)
    t.register("dc1.n1", c.monotonic(), maintenance=c.monotonic() + 3)
    t.heartbeat("dc1.n1", c.monotonic(), "b", 1)
    end = c.monotonic() + 3
    assert run_to(t, c, end + W + P - 0.02) == []
    [f] = run_to(t, c, end + W + P + 0.05)
    assert f.kind == "silent"


def test_down_before_maintenance_is_not_paged_twice() -> None:
    """A node already firing before maintenance, still down after it, is not paged again."""
    c = FakeClock()
    t = make(c)
    t.register("dc1.n1", c.monotonic())
    t.heartbeat("dc1.n1", c.monotonic(), "b", 1)
    [f] = run_to(t, c, c.monotonic() + 2)
    t.register("dc1.n1", c.monotonic(), maintenance=c.monotonic() + 2)
    assert run_to(t, c, c.monotonic() + 6) == []
    r = t.heartbeat("dc1.n1", c.monotonic(), "b", 2)
    assert r is not None and r.alert_id == f.alert_id


def test_renotify_same_id_growing_count_one_resolve() -> None:
    """A still-firing alert is re-published every renotify period; the resolve is sent once."""
    c = FakeClock()
    t = make(c, renotify=2.0)
    t.heartbeat("dc1.n1", c.monotonic(), "b", 1)
    out = run_to(t, c, c.monotonic() + 1.5 + 4.2, step=0.05)
    assert [x.count for x in out] == [1, 2, 3]
    assert len({x.alert_id for x in out}) == 1
    r = t.heartbeat("dc1.n1", c.monotonic(), "b", 2)
    assert r is not None and r.state == "resolved"
    assert run_to(t, c, c.monotonic() + 0.5) == []


def test_restore_keeps_open_alert_and_waits_grace() -> None:
    """Restored state: an open alert is not fired again; a node dead meanwhile pages after grace."""
    c = FakeClock()
    t = Tracker(window=W, pending=P, grace=2.0, now=c.monotonic())
    ep = Episode(
        alert_id="silent.dc1.a.x",
        kind="silent",
        since=c.monotonic() - 10,
        fired_at=c.monotonic() - 8,
    )
    t.restore("dc1.a", last_seen=c.monotonic() - 10, boot="b", seq=3, registered=True, episode=ep)
    t.restore("dc1.b", last_seen=c.monotonic() - 10, boot="b", seq=3, registered=True, episode=None)
    assert run_to(t, c, c.monotonic() + 1.98) == []
    out = run_to(t, c, c.monotonic() + 0.1)
    assert [(x.key, x.state) for x in out] == [("dc1.b", "firing")]
    r = t.heartbeat("dc1.a", c.monotonic(), "b", 4)
    assert r is not None and r.alert_id == "silent.dc1.a.x" and r.state == "resolved"


def test_heap_holds_one_entry_per_node() -> None:
    """Heartbeats do not grow the heap: at most one entry per node stays scheduled."""
    c = FakeClock()
    t = make(c)
    for i in range(50):
        for n in range(20):
            t.heartbeat(f"dc1.n{n}", c.monotonic(), "b", i)
        c.advance(0.3)
        t.advance(c.monotonic())
    assert len(t._heap) <= 20


def test_unregistered_count_follows_the_inventory() -> None:
    """The unregistered count (capped by the service) tracks adds, registrations and removals."""
    c = FakeClock()
    t = make(c)
    for i in range(5):
        t.heartbeat(f"dc1.n{i}", c.monotonic(), "b", 1)
    assert t.unregistered == 5
    t.register("dc1.n0", c.monotonic())
    t.register("dc1.new", c.monotonic())
    assert t.unregistered == 4
    t.unregister("dc1.n1", c.monotonic())
    t.unregister("dc1.n0", c.monotonic())
    assert t.unregistered == 3
