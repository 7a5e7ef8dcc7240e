"""When each target is probed: a fixed phase inside the interval, derived from the node id.

The phase is a stable hash of ``SITE.NODE`` (BLAKE2b, not Python's salted ``hash``; FNV-1a's
high bits barely move between ``n1`` and ``n2``, which bunched a fleet into a few slots), so a
target keeps its slot across restarts and across prober instances, and a fleet's probes are
spread evenly over the interval at start-up instead of arriving in one burst. Slots are anchored
to the wall clock (``wall % interval == phase``); the service turns the wait into a monotonic
sleep, so a wall-clock step moves at most one slot.
"""

from __future__ import annotations

import hashlib
import math

from shared.identity import NodeId


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def phase(node: NodeId, interval: float) -> float:
    """The target's fixed offset in ``[0, interval)``."""
    return stable_hash(node.key.encode()) / 2.0**64 * interval


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


def following_slot(*, previous: float | None, now: float, phase: float, interval: float) -> float:
    """The next slot to probe in: after ``now`` and always after the slot just used.

    A timer may wake a hair early (the event loop rounds to the millisecond); without the
    ``previous`` floor the same slot would be chosen again and the target probed twice.
    """
    floor = now if previous is None else max(now, previous)
    return next_slot(now=floor, phase=phase, interval=interval)


def slots_missed(*, due: float, now: float, interval: float) -> int:
    """How many whole slots went by after ``due`` without a probe (0 when on time)."""
    if now <= due:
        return 0
    return int((now - due) // interval)
