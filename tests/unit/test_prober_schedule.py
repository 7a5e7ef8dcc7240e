"""The prober's schedule: a stable phase per node and the next slot on it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.prober.schedule import following_slot, next_slot, phase, slots_missed, stable_hash
from shared.identity import NodeId

parts = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
nodes = st.builds(NodeId, parts, parts)
PINNED = "b7c634199ba341eb"


def test_stable_hash_is_fixed() -> None:
    """The hash is pinned, so a node keeps its slot across restarts, versions and machines."""
    assert stable_hash(b"dc1.n1") == stable_hash(b"dc1.n1")
    assert phase(NodeId("dc1", "n1"), 30.0) == pytest.approx(
        stable_hash(b"dc1.n1") / 2.0**64 * 30.0
    )
    assert f"{stable_hash(b'dc1.n1'):016x}" == PINNED


@given(nodes, st.floats(min_value=0.05, max_value=3600))
def test_phase_is_inside_the_interval_and_stable(node: NodeId, interval: float) -> None:
    """The phase lies in [0, interval) and depends only on the node and the interval."""
    p = phase(node, interval)
    assert 0 <= p < interval
    assert phase(NodeId(node.site, node.node), interval) == p


def test_phases_spread_a_fleet_over_the_interval() -> None:
    """1,000 nodes fill each tenth of the interval with roughly a tenth of them."""
    counts = [0] * 10
    for i in range(1000):
        counts[int(phase(NodeId("dc1", f"n{i}"), 30.0) / 3.0)] += 1
    assert min(counts) > 60 and max(counts) < 140


@given(
    st.floats(min_value=0, max_value=2e9),
    st.floats(min_value=0.05, max_value=600),
    st.floats(min_value=0, max_value=0.999),
)
def test_next_slot_is_the_first_slot_after_now(now: float, interval: float, frac: float) -> None:
    """next_slot is after now, at most one interval away, and on the phase."""
    p = frac * interval
    slot = next_slot(now=now, phase=p, interval=interval)
    assert now < slot <= now + interval * (1 + 1e-9)
    k = round((slot - p) / interval)
    assert slot == pytest.approx(p + k * interval, abs=1e-6 * max(1.0, slot) ** 0.5)


@pytest.mark.parametrize(
    ("due", "now", "want"),
    [(10.0, 9.0, 0), (10.0, 10.5, 0), (10.0, 11.0, 1), (10.0, 13.5, 3)],
)
def test_slots_missed(due: float, now: float, want: int) -> None:
    """Whole slots that went by after the due time are counted."""
    assert slots_missed(due=due, now=now, interval=1.0) == want


def test_an_early_wake_does_not_probe_the_same_slot_twice() -> None:
    """Woken 1 ms before its slot, the loop moves to the next slot, not the same one again."""
    due = next_slot(now=100.0, phase=0.3, interval=5.0)
    assert due == pytest.approx(100.3)
    again = following_slot(previous=due, now=due - 0.001, phase=0.3, interval=5.0)
    assert again == pytest.approx(105.3)
    assert following_slot(previous=None, now=100.0, phase=0.3, interval=5.0) == due
