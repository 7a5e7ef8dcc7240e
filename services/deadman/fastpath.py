"""A fast accept-only decoder for the heartbeat hot path.

``codec.decode(Heartbeat, ...)`` through pydantic costs about half of the deadman's per-message
budget at 100k heartbeats/s. This checks the common case, a msgpack map whose every field already
has exactly the right type and range, with plain type tests, and says *yes* or *don't know*.
Anything it does not accept (JSON, odd types, out-of-range values, absent fields) goes through
the full decoder, which gives the precise rejection reason. It must never accept what the
``Heartbeat`` model would refuse; tests/unit/test_deadman_fastpath.py checks that with Hypothesis.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import msgpack

from shared.codec import MAX_PAYLOAD

_MAP_HEADS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_TS_MAX = 1e11


class FastHeartbeat(NamedTuple):
    """The fields of a heartbeat the deadman keeps."""

    site: str
    node: str
    boot: str
    seq: int
    ts: float
    rev: int | None
    pid: int | None
    host: str | None


def _opt_count(value: Any) -> bool:
    return value is None or (type(value) is int and value >= 0)


def fast_heartbeat(data: bytes) -> FastHeartbeat | None:
    """The heartbeat if it is plainly valid msgpack; None means "use the full decoder".

    Site and node are not pattern-checked here: the caller only takes this path for a subject
    it already tracks (whose key was validated) and compares both with the subject.
    """
    if not data or len(data) > MAX_PAYLOAD or data[0] not in _MAP_HEADS:
        return None
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:
        return None
    if type(obj) is not dict:
        return None
    g = obj.get
    v, site, node, boot, seq, ts = g("v"), g("site"), g("node"), g("boot"), g("seq"), g("ts")
    if type(v) is not int or v != 1:
        return None
    if type(site) is not str or type(node) is not str:
        return None
    if type(boot) is not str or not 1 <= len(boot) <= 64:
        return None
    if type(seq) is not int or seq < 0:
        return None
    if type(ts) is float:
        if not (math.isfinite(ts) and 0.0 <= ts <= _TS_MAX):
            return None
    elif type(ts) is int:
        if not 0 <= ts <= _TS_MAX:
            return None
        ts = float(ts)
    else:
        return None
    interval = g("interval")
    if interval is not None:
        if type(interval) is int:
            interval = float(interval)
        if type(interval) is not float or not (math.isfinite(interval) and interval > 0):
            return None
    rev, pid, host = g("rev"), g("pid"), g("host")
    if not (_opt_count(rev) and _opt_count(pid)):
        return None
    if host is not None and (type(host) is not str or len(host) > 255):
        return None
    return FastHeartbeat(site, node, boot, seq, ts, rev, pid, host)
