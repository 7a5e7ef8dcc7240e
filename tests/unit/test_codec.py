"""The codec: strict decoding of every wire message, one DecodeError per bad input."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.codec import MAX_PAYLOAD, decode, decode_document, encode
from shared.errors import DecodeError
from shared.identity import NodeId
from shared.models import Alert, Heartbeat, ProbeResult, ReconcileReport

GOOD: dict[str, Any] = {
    "v": 1,
    "site": "dc1",
    "node": "n1",
    "boot": "b1",
    "seq": 3,
    "ts": 1_700_000_000.25,
    "interval": 30.0,
    "rev": 7,
    "pid": 1234,
}


def mp(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def with_(**changes: Any) -> dict[str, Any]:
    d = dict(GOOD)
    d.update(changes)
    return d


BAD_INPUTS = [
    ("truncated msgpack", mp(GOOD)[:-3], "bad_msgpack", "msgpack"),
    (
        "not utf-8 in msgpack",
        mp({"v": 1, "site": "dc1"})[:-3] + b"\xa3\xff\xfe\xfd",
        "not_utf8",
        "UTF-8",
    ),
    ("not utf-8 json", b'{"v": 1, "site": "\xff"}', "not_utf8", "UTF-8"),
    ("json array", b"[1, 2, 3]", "not_a_map", "list/array"),
    ("msgpack array", mp([1, 2]), "not_a_map", "list/array"),
    ("map without v", mp({k: v for k, v in GOOD.items() if k != "v"}), "no_version", "'v'"),
    ("v: 2", mp(with_(v=2)), "bad_version", "version 2"),
    ("v: true", mp(with_(v=True)), "bad_version", "integer"),
    ("ts true", mp(with_(ts=True)), "invalid", "ts"),
    ("ts NaN", mp(with_(ts=math.nan)), "invalid", "finite"),
    ("ts Infinity", mp(with_(ts=math.inf)), "invalid", "finite"),
    ("ts NaN in JSON", json.dumps(with_(ts="@")).replace('"@"', "NaN").encode(), "bad_json", "NaN"),
    (
        "ts Infinity in JSON",
        json.dumps(with_(ts="@")).replace('"@"', "Infinity").encode(),
        "bad_json",
        "Infinity",
    ),
    ("ts string", mp(with_(ts="1700000000")), "invalid", "ts"),
    ("ts negative", mp(with_(ts=-5)), "invalid", "greater than or equal to 0"),
    ("ts in milliseconds", mp(with_(ts=1_700_000_000_000)), "invalid", "ts"),
    ("seq true", mp(with_(seq=True)), "invalid", "seq"),
    ("site with a dot", mp(with_(site="dc.1")), "invalid", "site"),
    ("oversized", b"{" + b" " * MAX_PAYLOAD + b"}", "too_large", "limit"),
    ("empty", b"", "empty", "empty"),
    ("bad json", b'{"v": 1,', "bad_json", "JSON"),
    ("binary where a string belongs", mp(with_(boot=b"\x00\x01")), "invalid", "boot"),
    ("int map keys", mp({1: 2}), "bad_msgpack", "msgpack"),
]


@pytest.mark.parametrize(
    ("label", "data", "reason", "fragment"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
def test_bad_heartbeats_give_one_clear_decode_error(
    label: str, data: bytes, reason: str, fragment: str
) -> None:
    """Every kind of bad input becomes one DecodeError with a reason label and a readable text."""
    with pytest.raises(DecodeError) as err:
        decode(Heartbeat, data, subject_node=NodeId("dc1", "n1"))
    assert err.value.reason == reason, str(err.value)
    assert fragment in str(err.value)


def test_body_naming_another_node_than_its_subject_is_rejected() -> None:
    """The subject is authoritative: a body for dc1/n2 on dc1.n1's subject is refused."""
    with pytest.raises(DecodeError) as err:
        decode(Heartbeat, mp(with_(node="n2")), subject_node=NodeId("dc1", "n1"))
    assert err.value.reason == "wrong_subject"
    assert "dc1/n2" in str(err.value) and "dc1/n1" in str(err.value)


def test_json_and_msgpack_decode_to_the_same_heartbeat() -> None:
    """A JSON object published by plain tooling equals the msgpack the library writes."""
    hb = Heartbeat.model_validate(GOOD)
    from_mp = decode(Heartbeat, encode(hb))
    from_json = decode(Heartbeat, b"  " + json.dumps(GOOD).encode())
    assert from_mp == from_json == hb


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    """A newer writer's extra field does not break this reader."""
    assert decode(Heartbeat, mp(with_(future_field=[1, 2]))).seq == 3


@pytest.mark.parametrize(
    "msg",
    [
        Heartbeat.model_validate(GOOD),
        Alert(
            id="silent:dc1.n1:1",
            kind="silent",
            state="firing",
            severity="page",
            site="dc1",
            node="n1",
            ts=1.0,
            since=0.5,
            last_seen=None,
            reason="silent",
            summary="s",
        ),
        ProbeResult(
            site="dc1",
            node="n1",
            ts=1.0,
            url="http://x/healthz",
            verdict="stale",
            ok=False,
            status=200,
            age=100.0,
            latency=0.01,
            detail="old",
        ),
        ReconcileReport(
            site="dc1",
            node="n1",
            ts=1.0,
            boot="b",
            seq=0,
            outcome="converged",
            rev=3,
            applied_rev=3,
            drift=["a"],
            applied=[],
            errors=[],
        ),
    ],
)
def test_every_message_round_trips(msg: Any) -> None:
    """encode then decode gives back the same message for every v1 model."""
    assert decode(type(msg), encode(msg)) == msg


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_a_heartbeat_or_a_decode_error(data: bytes) -> None:
    """Junk never raises anything but DecodeError."""
    try:
        decode(Heartbeat, data, subject_node=NodeId("dc1", "n1"))
    except DecodeError:
        pass


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(GOOD), "x"]), json_values, max_size=10))
def test_arbitrary_maps_give_a_heartbeat_or_a_decode_error(obj: dict[str, Any]) -> None:
    """Maps with the right keys and wrong values never escape as anything but DecodeError."""
    for data in (mp(obj), json.dumps(obj).encode()):
        try:
            decode(Heartbeat, data)
        except DecodeError:
            pass


def test_deeply_nested_json_is_a_decode_error() -> None:
    """A pathological nesting depth is refused, not a crash."""
    with pytest.raises(DecodeError):
        decode_document(b"{" + b'"a":[' * 50000 + b"]" * 50000 + b"}", what="doc")


def test_document_must_be_an_object() -> None:
    """A desired document that is a list is refused."""
    with pytest.raises(DecodeError) as err:
        decode_document(b"[]", what="desired state")
    assert err.value.reason == "not_a_map"
