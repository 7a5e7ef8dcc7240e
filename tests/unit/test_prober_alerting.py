"""When probe alerts fire and resolve, and when the prober calls itself blind."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.prober.alerting import Alerting, OpenAlert, Transition
from shared.identity import NodeId
from shared.models import VERDICT_RANK, Verdict

A, B, C = NodeId("s", "a"), NodeId("s", "b"), NodeId("s", "c")


def feed(
    al: Alerting, node: NodeId, verdicts: list[Verdict], *, t0: float = 100.0
) -> list[Transition]:
    out: list[Transition] = []
    for i, v in enumerate(verdicts):
        out += al.observe(node, v, f"{v} #{i}", now=t0 + i)
    return out


def with_healthy_peer() -> Alerting:
    """Two targets, the peer fresh, so blindness never kicks in."""
    al = Alerting()
    al.observe(B, "fresh", "", now=1.0)
    return al


@pytest.mark.parametrize(
    ("verdicts", "want"),
    [
        (["timeout", "timeout"], []),
        (["timeout", "timeout", "timeout"], ["firing"]),
        (["refused", "unhealthy", "bad_body"], ["firing"]),  # any non-fresh mix counts
        (["timeout", "fresh", "timeout", "timeout"], []),  # a fresh result resets the count
        (["stale"], ["firing"]),  # a lie pages at once
        (["future"], ["firing"]),
        (["timeout"] * 3 + ["fresh"], ["firing"]),
        (["timeout"] * 3 + ["fresh", "fresh"], ["firing", "resolved"]),
        (["timeout"] * 3 + ["fresh", "timeout", "fresh"], ["firing"]),
        (["timeout"] * 6, ["firing"]),  # fires once per episode
        (["stale", "stale", "fresh", "fresh", "stale"], ["firing", "resolved", "firing"]),
    ],
)
def test_fire_and_resolve_table(verdicts: list[Verdict], want: list[str]) -> None:
    """Failure threshold 3, success threshold 2, lies immediate."""
    al = with_healthy_peer()
    assert [t.state for t in feed(al, A, verdicts)] == want


def test_resolve_carries_the_firing_id_and_since() -> None:
    """The resolve has the id and start of the episode it closes."""
    al = with_healthy_peer()
    fired, resolved = feed(al, A, ["timeout"] * 3 + ["fresh"] * 2, t0=50.0)
    assert fired.since == 50.0 and fired.alert_id == resolved.alert_id
    assert resolved.since == 50.0


def test_restored_alert_does_not_fire_again_and_resolves_once() -> None:
    """An alert reloaded after a restart stays open through failures and resolves once."""
    al = with_healthy_peer()
    al.restore(A, OpenAlert("probe.s.a.1", 1.0, "timeout", "x"))
    assert feed(al, A, ["timeout"] * 5 + ["stale"]) == []
    (res,) = feed(al, A, ["fresh", "fresh", "fresh"])
    assert (res.state, res.alert_id) == ("resolved", "probe.s.a.1")


def test_removal_resolves_an_open_alert() -> None:
    """Removing a node with an open alert resolves it as removed."""
    al = with_healthy_peer()
    feed(al, A, ["stale"])
    (tr,) = al.remove(A, now=200.0)
    assert (tr.state, tr.verdict) == ("resolved", "removed")
    assert al.remove(A, now=201.0) == []


def test_blind_when_every_target_fails() -> None:
    """All targets failing: one self alert, no node pages; a fresh answer ends it."""
    al = Alerting()
    out: list[Transition] = []
    for i in range(5):
        for n in (A, B, C):
            out += al.observe(n, "timeout", "t", now=float(i))
    assert [(t.state, t.node) for t in out] == [("firing", None)]
    assert al.blind
    out = al.observe(A, "fresh", "", now=10.0)
    assert [(t.state, t.node) for t in out] == [("resolved", None)]
    # B has failed five times: its next failure pages now that we can see
    (page,) = al.observe(B, "timeout", "t", now=11.0)
    assert (page.state, page.node) == ("firing", B)


def test_single_target_is_never_blind() -> None:
    """With one target we cannot tell our fault from its own: it pages normally."""
    al = Alerting()
    assert [t.node for t in feed(al, A, ["timeout"] * 3)] == [A]


def test_open_alert_document_round_trip() -> None:
    """An open alert survives being written as a document and read back."""
    a = OpenAlert("id1", 12.5, "stale", "old")
    assert OpenAlert.from_doc(a.to_doc()) == a
    with pytest.raises(ValueError):
        OpenAlert.from_doc({"since": 1})
    with pytest.raises(ValueError):
        OpenAlert.from_doc({"id": "x", "since": True})


@given(st.lists(st.sampled_from(sorted(VERDICT_RANK)), max_size=60))
def test_firing_and_resolving_alternate(verdicts: list[Verdict]) -> None:
    """Whatever the sequence, a node's transitions alternate firing/resolved, starting firing."""
    al = with_healthy_peer()
    states = [t.state for t in feed(al, A, verdicts)]
    assert states == ["firing", "resolved"] * (len(states) // 2) + ["firing"] * (len(states) % 2)


@given(
    st.lists(
        st.tuples(
            st.sampled_from([A, B, C]), st.sampled_from(["fresh", "timeout", "stale", "remove"])
        ),
        max_size=80,
    )
)
def test_blind_matches_its_definition(steps: list[tuple[NodeId, str]]) -> None:
    """After any sequence, blind holds exactly as the rule says, with O(1) running counts."""
    al = Alerting()
    for i, (node, what) in enumerate(steps):
        if what == "remove":
            al.remove(node, now=float(i))
        else:
            al.observe(node, what, "", now=float(i))  # type: ignore[arg-type]
        last = [s.last_verdict for s in al.targets.values() if s.last_verdict is not None]
        if "fresh" in last:
            assert not al.blind
        elif len(last) >= 2:
            assert al.blind


def test_maintenance_pages_nothing_until_it_ends() -> None:
    """Quiet results count but page nothing, lies included; the first loud failure pages."""
    al = with_healthy_peer()
    out: list[Transition] = []
    for i, v in enumerate(["timeout", "timeout", "stale", "timeout"]):
        out += al.observe(A, v, "", now=float(i), quiet=True)  # type: ignore[arg-type]
    assert out == []
    (page,) = al.observe(A, "timeout", "", now=10.0)
    assert (page.state, page.since) == ("firing", 0.0)


def test_alert_messages_for_node_and_self() -> None:
    """A node transition becomes a probe Alert on its subject; a blind one a self Alert."""
    from services.prober.outbox import build_alert
    from shared.subjects import Subjects

    subjects = Subjects("fleet")
    node_tr = Transition("firing", A, "probe.s.a.1", 5.0, "stale", "body is 99s old")
    subject, alert = build_alert(
        node_tr,
        subjects=subjects,
        instance="p1",
        now=9.0,
        url="http://127.0.0.1:1/h",
        last_fresh=4.0,
    )
    assert subject == "fleet.alert.probe.s.a"
    assert (alert.kind, alert.state, alert.severity, alert.reason) == (
        "probe",
        "firing",
        "page",
        "stale",
    )
    assert (alert.site, alert.node, alert.since, alert.last_seen, alert.ts) == (
        "s",
        "a",
        5.0,
        4.0,
        9.0,
    )
    assert "http://127.0.0.1:1/h" in alert.summary
    self_tr = Transition("resolved", None, "self.prober.p1.1", 5.0, "fresh", "back")
    subject, alert = build_alert(
        self_tr, subjects=subjects, instance="p1", now=9.0, url=None, last_fresh=None
    )
    assert subject == "fleet.alert.self.prober.p1"
    assert (alert.kind, alert.state, alert.node, alert.reason) == (
        "self",
        "resolved",
        None,
        "recovered",
    )
