"""The prober's verdict: a pure function of status, headers, body, now and the rules."""

from __future__ import annotations

import json
import math
import socket
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.prober.verdict import BadTimestamp, Rules, classify_error, judge, parse_timestamp
from shared.models import VERDICT_RANK

NOW = 1_800_000_000.0
RULES = Rules(max_age=30.0, future_tolerance=5.0)


def verdict(
    status: int,
    body: bytes | str,
    *,
    truncated: bool = False,
    rules: Rules = RULES,
    headers: dict[str, str] | None = None,
) -> str:
    data = body.encode() if isinstance(body, str) else body
    return judge(
        status=status, headers=headers or {}, body=data, truncated=truncated, now=NOW, rules=rules
    ).verdict


def j(**fields: object) -> str:
    return json.dumps(fields)


@pytest.mark.parametrize(
    ("status", "body", "want"),
    [
        (200, j(ok=True, ts=NOW - 1), "fresh"),
        (200, j(ts=NOW), "fresh"),  # no ok field: the timestamp alone is the claim
        (200, j(ok=True, ts=NOW - 30), "fresh"),  # exactly max-age is still fresh
        (200, j(ok=True, ts=NOW - 30.001), "stale"),
        (200, j(ok=True, ts=NOW + 5), "fresh"),
        (200, j(ok=True, ts=NOW + 5.5), "future"),
        (200, j(ok=True, ts=NOW + 3600), "future"),
        (200, j(ok=True, ts=int(NOW * 1e3)), "fresh"),
        (200, j(ok=True, ts=int(NOW * 1e6)), "fresh"),
        (200, j(ok=True, ts=int(NOW * 1e9)), "fresh"),
        (200, j(ok=True, ts="2027-01-15T08:00:00Z"), "fresh"),
        (200, j(ok=True, ts="2027-01-15T09:00:00+01:00"), "fresh"),
        (200, j(ok=True, ts="2027-01-15T08:00:00"), "bad_body"),  # naive
        (200, j(ok=True, ts="2027-01-15"), "bad_body"),
        (200, j(ok=True, ts="1800000000"), "bad_body"),  # a number in a string
        (200, j(ok=True, ts=True), "bad_body"),
        (200, j(ok=True, ts=None), "bad_body"),
        (200, '{"ok": true, "ts": NaN}', "bad_body"),
        (200, '{"ok": true, "ts": Infinity}', "bad_body"),
        (200, j(ok=True, ts=-5), "bad_body"),
        (200, j(status="ok"), "bad_body"),
        (200, "<html>OK</html>", "bad_body"),
        (200, "", "bad_body"),
        (200, "[1, 2]", "bad_body"),
        (200, b"\xff\xfe", "bad_body"),
        (200, j(ok=False, ts=NOW), "unhealthy"),
        (200, j(ok="yes", ts=NOW), "bad_body"),
        (200, j(ok=False, ts=NOW - 3600), "stale"),  # a lie outranks what the body claims
        (503, j(ok=True, ts=NOW), "unhealthy"),
        (500, "oops", "unhealthy"),
        (302, "", "redirect"),
        (301, "", "redirect"),
        (404, j(ok=True, ts=NOW), "http_error"),
        (204, "", "bad_body"),
        (101, "", "http_error"),
    ],
)
def test_verdict_table(status: int, body: str, want: str) -> None:
    """Each (status, body) pair gets the verdict DESIGN.md ranks for it."""
    assert verdict(status, body) == want


def test_stale_age_is_reported() -> None:
    """A stale verdict carries the body's age and says how old it is."""
    out = judge(
        status=200, headers={}, body=j(ts=NOW - 120).encode(), truncated=False, now=NOW, rules=RULES
    )
    assert out.age == pytest.approx(120.0) and "120.000s old" in out.detail


def test_truncated_body_is_bad_body() -> None:
    """A body cut at the size limit is never parsed."""
    assert verdict(200, j(ts=NOW), truncated=True) == "bad_body"


def test_alternative_timestamp_field() -> None:
    """--ts-field timestamp reads that field; the first present field of the list wins."""
    rules = Rules(ts_fields=("timestamp", "ts"))
    assert verdict(200, j(timestamp=NOW), rules=rules) == "fresh"
    assert verdict(200, j(timestamp=NOW - 999, ts=NOW), rules=rules) == "stale"
    assert verdict(200, j(timestamp=NOW), rules=Rules()) == "bad_body"


def test_redirect_detail_names_location() -> None:
    """The redirect detail names where it pointed (and that we did not follow)."""
    out = judge(
        status=302,
        headers={"Location": "http://127.0.0.1/x"},
        body=b"",
        truncated=False,
        now=NOW,
        rules=RULES,
    )
    assert "http://127.0.0.1/x" in out.detail and "not followed" in out.detail


def test_rfc3339_forms() -> None:
    """RFC 3339 with Z, offsets, lower-case t, space, and nanosecond fractions."""
    base = datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp()
    assert parse_timestamp("2027-01-15T08:00:00Z") == base
    assert parse_timestamp("2027-01-15t08:00:00z") == base
    assert parse_timestamp("2027-01-15 10:00:00+02:00") == base
    assert parse_timestamp("2027-01-15T08:00:00.123456789Z") == pytest.approx(base + 0.123456)
    with pytest.raises(BadTimestamp, match="no UTC offset"):
        parse_timestamp("2027-01-15T08:00:00")
    with pytest.raises(BadTimestamp):
        parse_timestamp("2027-13-45T08:00:00Z")


@given(st.floats(min_value=1e8, max_value=9e10))
def test_units_are_told_apart_by_magnitude(seconds: float) -> None:
    """Seconds, ms, us and ns of one instant parse to the same seconds."""
    for scale in (1, 1e3, 1e6, 1e9):
        assert parse_timestamp(seconds * scale) == pytest.approx(seconds, rel=1e-9)


@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.integers()),
    )
)
def test_junk_timestamps_never_crash(value: object) -> None:
    """Any JSON value either parses to a finite positive time or raises BadTimestamp."""
    try:
        out = parse_timestamp(value)
    except BadTimestamp:
        return
    assert math.isfinite(out) and out > 0


@given(st.binary(max_size=200), st.integers(min_value=100, max_value=999))
def test_junk_bodies_never_crash(body: bytes, status: int) -> None:
    """Any bytes and status give one of the known verdicts."""
    out = judge(status=status, headers={}, body=body, truncated=False, now=NOW, rules=RULES)
    assert out.verdict in VERDICT_RANK


def test_lies_rank_worst() -> None:
    """stale and future rank below every honest failure."""
    honest = [v for v in VERDICT_RANK if v not in ("stale", "future")]
    assert min(VERDICT_RANK["stale"], VERDICT_RANK["future"]) > max(VERDICT_RANK[v] for v in honest)


@pytest.mark.parametrize(
    ("exc", "want"),
    [
        (TimeoutError(), "timeout"),
        (ConnectionRefusedError(111, "refused"), "refused"),
        (socket.gaierror(-2, "Name or service not known"), "dns"),
        (ConnectionResetError(104, "reset"), "refused"),
        (OSError("weird"), "refused"),
    ],
)
def test_transport_failures_are_named(exc: BaseException, want: str) -> None:
    """Transport exceptions map to the unreachable verdicts."""
    assert classify_error(exc)[0] == want


def test_aiohttp_wrapped_errors_are_unwrapped() -> None:
    """aiohttp's connector errors are classified by the socket error they carry."""
    import aiohttp
    from aiohttp.client_reqrep import ConnectionKey

    key = ConnectionKey("h.invalid", 80, False, True, None, None, None)
    dns = aiohttp.ClientConnectorDNSError(key, socket.gaierror(-2, "not known"))
    refused = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    assert classify_error(dns)[0] == "dns"
    assert classify_error(refused)[0] == "refused"
