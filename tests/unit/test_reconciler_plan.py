"""The reconciler's pure core: diff, decide, schedule, freshness, node naming, settings."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.reconciler.plan import (
    MAX_DRIFT,
    cycle_delay,
    decide,
    default_max_age,
    diff,
    expand_node,
    first_delay,
    freshness,
    read_error_reason,
    retry_delay,
    sanitize_hostname,
)
from services.reconciler.settings import AgentSettings
from shared.inventory import DesiredRead
from shared.settings import load_settings

DOC = {"files": {"a.txt": "x"}, "replicas": 2}


@pytest.mark.parametrize(
    ("desired", "current", "want"),
    [
        ({}, {}, []),
        ({"a": 1}, {"a": 1}, []),
        ({"a": 1}, {}, ["a: missing"]),
        ({}, {"a": 1}, ["a: not desired"]),
        ({"a": 1}, {"a": 2}, ["a: changed"]),
        ({"a": 1}, {"a": True}, ["a: changed"]),
        ({"a": 1}, {"a": 1.0}, ["a: changed"]),
        ({"f": {"x": "1", "y": "2"}}, {"f": {"x": "1"}}, ["f.y: missing"]),
        ({"f": {"x": "1"}}, {"f": {"x": "edited"}}, ["f.x: changed"]),
        ({"l": [1, 2]}, {"l": [2, 1]}, ["l: changed"]),
        ({"f": {"x": "1"}}, {"f": "flat"}, ["f: changed"]),
    ],
)
def test_diff_names_each_drifted_field(
    desired: dict[str, Any], current: dict[str, Any], want: list[str]
) -> None:
    """diff lists exactly the fields that differ, recursing into maps, type-strict."""
    assert diff(desired, current) == want


@pytest.mark.parametrize(
    ("read", "applied", "current", "action"),
    [
        (DesiredRead("ok", 5, DOC), None, {}, "apply"),
        (DesiredRead("ok", 5, DOC), 4, DOC, "converged"),
        (DesiredRead("ok", 5, DOC), 5, DOC, "converged"),
        (DesiredRead("ok", 5, DOC), 5, {"files": {}, "replicas": 2}, "apply"),
        (DesiredRead("ok", 3, DOC), 5, {}, "stale_revision"),
        (DesiredRead("missing", error="no desired state"), 5, DOC, "unknown_desired"),
        (DesiredRead("deleted", 6, error="deleted"), 5, DOC, "unknown_desired"),
        (DesiredRead("invalid", 7, error="not_a_map"), 5, DOC, "unknown_desired"),
        (DesiredRead("read_error", error="timed out"), 5, DOC, "read_error"),
    ],
)
def test_decide_changes_the_node_only_for_a_valid_newer_document(
    read: DesiredRead, applied: int | None, current: dict[str, Any], action: str
) -> None:
    """Only an ok read at a revision not below the applied one may lead to an apply."""
    d = decide(read, applied_rev=applied, current=current)
    assert d.action == action
    assert d.read_ok == (action != "read_error")
    if action in ("unknown_desired", "stale_revision", "read_error"):
        assert d.detail


def test_decide_caps_drift_lines() -> None:
    """A huge drift is cut to what the report model holds, with a count of the rest."""
    doc = {f"k{i}": i for i in range(MAX_DRIFT + 50)}
    d = decide(DesiredRead("ok", 1, doc), applied_rev=None, current={})
    assert len(d.drift) == MAX_DRIFT
    assert d.drift[-1].startswith("... and 51 more")


@given(st.floats(min_value=0.05, max_value=3600), st.floats(min_value=0, max_value=0.999999))
def test_cycle_delay_stays_within_ten_percent(interval: float, u: float) -> None:
    """Each cycle lasts the interval give or take 10 %."""
    d = cycle_delay(interval, u)
    assert interval * 0.9 - 1e-9 <= d <= interval * 1.1 + 1e-9


@given(
    st.integers(min_value=1, max_value=10_000),
    st.floats(min_value=0.05, max_value=600),
    st.floats(min_value=0, max_value=0.999999),
)
def test_retry_delay_is_capped_at_the_interval(attempt: int, interval: float, u: float) -> None:
    """Backoff after failed reads never waits longer than one interval, never zero."""
    d = retry_delay(attempt, interval, u)
    assert 0 < d <= interval


def test_retry_delay_grows_then_caps() -> None:
    """Backoff ceilings double per attempt until they reach the interval."""
    tops = [retry_delay(a, 10.0, 0.999999) for a in range(1, 10)]
    assert tops == sorted(tops)
    assert tops[0] < 0.21 and tops[-1] == pytest.approx(10.0, rel=1e-4)


def test_first_delays_spread_over_one_interval() -> None:
    """500 loops started together begin their first cycles across the whole interval."""
    rng = random.Random(7)
    starts = sorted(first_delay(2.0, rng.random()) for _ in range(500))
    per_bucket = [sum(1 for s in starts if b * 0.2 <= s < (b + 1) * 0.2) for b in range(10)]
    assert max(per_bucket) <= 2 * 50


@pytest.mark.parametrize(
    ("last", "kv_ok", "ok", "reason"),
    [
        (99.0, True, True, "ok"),
        (None, True, False, "no cycle"),
        (80.0, True, False, "last cycle"),
        (99.0, False, False, "control plane unreachable"),
    ],
)
def test_freshness_needs_a_recent_cycle_and_a_broker_answer(
    last: float | None, kv_ok: bool, ok: bool, reason: str
) -> None:
    """/healthz is ok only with a recent completed cycle and a KV read that worked now."""
    f = freshness(now=100.0, last_cycle=last, max_age=10.0, kv_ok=kv_ok, kv_error="timeout")
    assert f.ok is ok
    assert f.reason.startswith(reason)


def test_default_max_age_allows_three_jittered_cycles() -> None:
    """The default freshness limit tolerates two missed cycles at the longest jitter."""
    assert default_max_age(1.0) == pytest.approx(3.3)


@pytest.mark.parametrize(
    ("host", "node"),
    [
        ("web1", "web1"),
        ("web1.example.com", "web1-example-com"),
        ("a b@c", "a-b-c"),
        ("...", "host"),
        ("x" * 80, "x" * 64),
        ("3f2a9c1b0d4e", "3f2a9c1b0d4e"),
    ],
)
def test_hostnames_become_valid_node_names(host: str, node: str) -> None:
    """SITE/@hostname yields a node name matching [A-Za-z0-9_-]{1,64}."""
    assert sanitize_hostname(host) == node
    assert expand_node("dc1/@hostname", host) == f"dc1/{node}"
    assert expand_node("dc1/n1", host) == "dc1/n1"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("desired read timed out after 2s", "timeout"),
        ("desired read failed: bucket not found", "bucket_missing"),
        ("desired read failed: NoRespondersError: nats: no responders", "no_responders"),
        ("desired read failed: ConnectionClosedError", "disconnected"),
        ("something else", "read_failed"),
    ],
)
def test_read_errors_get_short_reasons(error: str, reason: str) -> None:
    """Failed reads are counted under a small, fixed set of reason labels."""
    assert read_error_reason(error) == reason


def test_settings_defaults_and_hostname_node() -> None:
    """Flags parse with the documented defaults; SITE/@hostname is expanded at start."""
    s = load_settings(AgentSettings, ["--node", "dc1/@hostname"], environ={})
    assert s.interval == 30.0 and s.health_port == 9100 and s.health_host == "127.0.0.1"
    assert s.register is False and s.apply_cmd is None
    assert s.node_id.site == "dc1" and "@" not in s.node_id.node
    assert s.effective_max_age == pytest.approx(99.0)
    assert s.effective_state_dir.name == s.node_id.key


@pytest.mark.parametrize(
    "argv",
    [
        ["--node", "dc1"],
        ["--node", "dc1/a.b"],
        ["--node", "d/n", "--interval", "0"],
        ["--node", "d/n", "--advertise-url", "ftp://x"],
        ["--node", "d/n", "--health-port", "-1"],
    ],
)
def test_bad_settings_exit_2_naming_the_flag(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad flag stops start-up with exit status 2 and one line naming it."""
    with pytest.raises(SystemExit) as e:
        load_settings(AgentSettings, argv, environ={})
    assert e.value.code == 2
    flag = argv[-2]
    assert flag in capsys.readouterr().err


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
_docs = st.dictionaries(st.text(max_size=4), _json, max_size=4)


@given(_docs, _docs)
def test_diff_is_empty_exactly_when_documents_are_equal(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    """No drift means equal documents (and equal documents mean no drift), for any JSON."""
    assert diff(a, a) == []
    assert (diff(a, b) == []) == (a == b and _same_types(a, b))


def _same_types(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return all(_same_types(a[k], b[k]) for k in a)
    return type(a) is type(b)


@given(_docs, st.integers(min_value=0, max_value=10), st.one_of(st.none(), st.integers(0, 10)))
def test_decide_never_applies_below_the_applied_revision(
    doc: dict[str, Any], rev: int, applied: int | None
) -> None:
    """Whatever the document, an apply only ever happens at or above the applied revision."""
    d = decide(DesiredRead("ok", rev, doc), applied_rev=applied, current={})
    if d.action == "apply":
        assert applied is None or rev >= applied
    if applied is not None and rev < applied:
        assert d.action == "stale_revision"
