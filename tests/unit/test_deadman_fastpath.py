"""The heartbeat fast path never accepts what the Heartbeat model refuses, and agrees with it."""

from __future__ import annotations

import math
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from services.deadman.fastpath import fast_heartbeat
from shared.codec import decode, encode
from shared.errors import DecodeError
from shared.models import Heartbeat

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64) + 1, 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=70),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=2),
)
fields = {
    "v": st.one_of(st.just(1), anything),
    "site": st.sampled_from(["dc1", "a-b_c"]),
    "node": st.sampled_from(["n1", "N_2"]),
    "boot": st.one_of(st.text(min_size=1, max_size=64), anything),
    "seq": st.one_of(st.integers(0, 2**40), anything),
    "ts": st.one_of(st.floats(0, 1e11), st.integers(0, 10**11), anything),
    "interval": st.one_of(st.none(), st.floats(0.001, 1e6), anything),
    "rev": st.one_of(st.none(), st.integers(0, 2**40), anything),
    "pid": st.one_of(st.none(), st.integers(0, 2**31), anything),
    "host": st.one_of(st.none(), st.text(max_size=255), anything),
}


valid = {
    "v": st.just(1),
    "site": fields["site"],
    "node": fields["node"],
    "boot": st.text(min_size=1, max_size=64),
    "seq": st.integers(0, 2**40),
    "ts": st.one_of(st.floats(0, 1e11), st.integers(0, 10**11)),
    "interval": st.one_of(st.none(), st.floats(0.001, 1e6)),
    "rev": st.one_of(st.none(), st.integers(0, 2**40)),
    "pid": st.one_of(st.none(), st.integers(0, 2**31)),
    "host": st.one_of(st.none(), st.text(max_size=255)),
}


@st.composite
def maps(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid heartbeats with zero to two fields poisoned or dropped."""
    obj = {k: draw(strategy) for k, strategy in valid.items()}
    for k in draw(st.sets(st.sampled_from(list(fields)), max_size=2)):
        if draw(st.booleans()):
            obj[k] = draw(fields[k])
        else:
            obj.pop(k, None)
    return obj


@settings(max_examples=600, deadline=None)
@given(maps())
def test_fast_path_accepts_only_what_the_model_accepts(obj: dict[str, Any]) -> None:
    """Whenever the fast path accepts a map, the full decoder accepts it with the same values."""
    try:
        data = msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    fast = fast_heartbeat(data)
    if fast is None:
        return
    try:
        full = decode(Heartbeat, data)
    except DecodeError as e:  # pragma: no cover - this is the failure being hunted
        raise AssertionError(f"fast path accepted what the model refuses: {e}") from None
    assert (fast.site, fast.node, fast.boot, fast.seq, fast.rev, fast.pid, fast.host) == (
        full.site,
        full.node,
        full.boot,
        full.seq,
        full.rev,
        full.pid,
        full.host,
    )
    assert math.isclose(fast.ts, full.ts)


def test_fast_path_takes_an_ordinary_heartbeat() -> None:
    """What agents publish goes the fast way."""
    hb = Heartbeat(
        site="dc1", node="n1", boot="b", seq=3, ts=1.7e9, rev=2, pid=10, host="h", interval=30.0
    )
    fast = fast_heartbeat(encode(hb))
    assert fast is not None and fast.seq == 3 and fast.host == "h"


def test_fast_path_declines_json_and_junk() -> None:
    """JSON, non-maps and NaN go to the full decoder (which explains the rejection)."""
    assert fast_heartbeat(b'{"v":1}') is None
    assert fast_heartbeat(msgpack.packb([1, 2])) is None
    nan = {"v": 1, "site": "a", "node": "b", "boot": "x", "seq": 1, "ts": float("nan")}
    assert fast_heartbeat(msgpack.packb(nan)) is None
    assert fast_heartbeat(msgpack.packb({**nan, "ts": 1.0, "seq": True})) is None
