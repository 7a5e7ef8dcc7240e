"""Regressions from the adversarial review, on the pure tracker with a fake clock: a second death
after a resolve, maintenance ended or shortened, forged seqs, and the timer while blind."""

from __future__ import annotations

import pytest

from services.deadman.tracker import REPLAYED, SEQ_REGRESSION, Tracker, Transition
from shared.clock import FakeClock

W, P = 1.0, 0.5
KEY = "dc1.n1"


def make(clock: FakeClock, *, renotify: float = 0.0) -> Tracker:
    return Tracker(window=W, pending=P, grace=0.0, renotify=renotify, now=clock.monotonic())


def run_to(tracker: Tracker, clock: FakeClock, until: float) -> list[Transition]:
    out: list[Transition] = []
    while clock.monotonic() < until:
        clock.advance(0.01)
        out += tracker.advance(clock.monotonic())
    return out


@pytest.mark.parametrize("renotify", [0.0, 1800.0])
def test_second_death_after_resolve_pages_again(renotify: float) -> None:
    """Page, resolve, die again: the second death pages at last_seen+window+pending, not at the
    old re-notify time."""
    c = FakeClock()
    t = make(c, renotify=renotify)
    t.heartbeat(KEY, c.monotonic(), "b", 1)
    [first] = run_to(t, c, c.monotonic() + 2)
    res = t.heartbeat(KEY, c.monotonic(), "b", 2)
    assert res is not None and res.state == "resolved"
    back = c.monotonic()
    assert run_to(t, c, back + W + P - 0.02) == []
    [second] = run_to(t, c, back + W + P + 0.05)
    assert second.state == "firing" and second.alert_id != first.alert_id
    assert back + W + P < second.at <= back + W + P + 0.011


@pytest.mark.parametrize("how", ["ended", "shortened", "moved_into_past"])
def test_maintenance_ended_early_pages_one_window_after_the_new_end(how: str) -> None:
    """Maintenance ended or shortened: the hold follows the new end (one window + pending
    after it), not the original end."""
    c = FakeClock()
    t = make(c)
    t0 = c.monotonic()
    t.register(KEY, t0, token="x", maintenance=t0 + 100)
    t.heartbeat(KEY, t0, "b", 1)
    assert run_to(t, c, t0 + 5) == []  # silent but in maintenance
    rec = t.nodes[KEY]
    end = c.monotonic()
    if how == "ended":
        t.set_maintenance(rec, None, end)
    elif how == "shortened":
        end += 2
        t.set_maintenance(rec, end, c.monotonic())
    else:
        t.set_maintenance(rec, end - 1, end)
    assert run_to(t, c, end + W + P - 0.02) == []
    [page] = run_to(t, c, end + W + P + 0.05)
    assert page.state == "firing" and end + W + P < page.at <= end + W + P + 0.011


def test_maintenance_extended_holds_until_the_new_end() -> None:
    """Extending a maintenance window moves the hold later."""
    c = FakeClock()
    t = make(c)
    t0 = c.monotonic()
    t.register(KEY, t0, token="x", maintenance=t0 + 2)
    t.heartbeat(KEY, t0, "b", 1)
    t.set_maintenance(t.nodes[KEY], t0 + 5, c.monotonic())
    assert run_to(t, c, t0 + 5 + W + P - 0.02) == []
    assert len(run_to(t, c, t0 + 5 + W + P + 0.05)) == 1


def test_one_forged_huge_seq_does_not_poison_the_node() -> None:
    """After a forged seq=2**64-1, the real heartbeats still count (as a seq regression, once)."""
    c = FakeClock()
    t = make(c)
    t.heartbeat(KEY, c.monotonic(), "b", 10)
    rec = t.nodes[KEY]
    assert t.admit(rec, "b", 2**64 - 1) is None
    t.heartbeat(KEY, c.monotonic(), "b", 2**64 - 1)
    assert t.admit(rec, "b", 11) == SEQ_REGRESSION
    t.heartbeat(KEY, c.monotonic(), "b", 11)
    for seq in range(12, 40):
        c.advance(0.5)
        assert t.admit(rec, "b", seq) is None
        t.heartbeat(KEY, c.monotonic(), "b", seq)
        assert t.advance(c.monotonic()) == []


def test_exact_duplicates_are_replays_but_reordering_is_not() -> None:
    """A seen (boot, seq) is a replay; an unseen lower seq in the window or a new boot is life."""
    c = FakeClock()
    t = make(c)
    t.heartbeat(KEY, c.monotonic(), "b", 5)
    rec = t.nodes[KEY]
    assert t.admit(rec, "b", 5) == REPLAYED
    t.heartbeat(KEY, c.monotonic(), "b", 7)
    assert t.admit(rec, "b", 6) is None  # arrived late, never seen
    t.heartbeat(KEY, c.monotonic(), "b", 6)
    assert t.admit(rec, "b", 6) == REPLAYED
    assert t.admit(rec, "b", 7) == REPLAYED
    assert t.admit(rec, "b", 5) == REPLAYED
    assert t.admit(rec, "other-boot", 1) is None
    t.heartbeat(KEY, c.monotonic(), "b", 500)
    assert t.admit(rec, "b", 7) == SEQ_REGRESSION  # below the window: no memory, accept


def test_no_busy_deadline_while_blind() -> None:
    """While blind (or suspecting itself) past-due entries offer no deadline to spin on."""
    c = FakeClock()
    t = make(c)
    t.heartbeat(KEY, c.monotonic(), "b", 1)
    t.set_blind(True, c.monotonic())
    c.advance(10)
    assert t.next_deadline() is None
    assert not t.due_before(c.monotonic())
    assert t.advance(c.monotonic()) == []
    t.set_blind(False, c.monotonic())
    nd = t.next_deadline()
    assert nd is not None
    assert t.advance(c.monotonic()) == []  # a full window from the end of the blindness
    assert t.next_deadline() == c.monotonic() + W + P
