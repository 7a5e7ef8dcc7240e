"""When each target is probed: a fixed phase inside the interval, derived from the node id.

The phase is a stable hash of ``SITE.NODE`` (FNV-1a 64, not Python's salted ``hash``), so a
target keeps its slot across restarts and across prober instances, and a fleet's probes are
spread evenly over the interval at start-up instead of arriving in one burst. Slots are anchored
to the wall clock (``wall % interval == phase``); the service turns the wait into a monotonic
sleep, so a wall-clock step moves at most one slot.
"""

from __future__ import annotations

import math

from shared.identity import NodeId

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    """FNV-1a, 64 bits."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def phase(node: NodeId, interval: float) -> float:
    """The target's fixed offset in ``[0, interval)``."""
    return fnv1a64(node.key.encode()) / 2.0**64 * interval


def next_slot(*, now: float, phase: float, interval: float) -> float:
    """The first wall time strictly after ``now`` that sits on the target's phase."""
    k = math.floor((now - phase) / interval) + 1
    slot = phase + k * interval
    # float rounding can land one slot early or late; settle it exactly
    while slot <= now:
        slot += interval
    while slot - interval > now:
        slot -= interval
    return slot


def slots_missed(*, due: float, now: float, interval: float) -> int:
    """How many whole slots went by after ``due`` without a probe (0 when on time)."""
    if now <= due:
        return 0
    return int((now - due) // interval)
