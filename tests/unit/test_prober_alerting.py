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
    steps: list[Verdict] = ["timeout", "timeout", "timeout", "fresh", "fresh"]
    fired, resolved = feed(al, A, steps, t0=50.0)
    assert fired.since == 50.0 and fired.alert_id == resolved.alert_id
    assert resolved.since == 50.0


def test_restored_alert_does_not_fire_again_and_resolves_once() -> None:
    """An alert reloaded after a restart stays open through failures and resolves once."""
    al = with_healthy_peer()
    al.restore(A, OpenAlert("probe.s.a.1", 1.0, "timeout", "x"))
    failing: list[Verdict] = ["timeout"] * 5
    assert feed(al, A, [*failing, "stale"]) == []
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
    # B failed five times while blind: those do not count, it needs three new ones
    assert al.observe(B, "timeout", "t", now=11.0) == []
    assert al.observe(B, "timeout", "t", now=12.0) == []
    (page,) = al.observe(B, "timeout", "t", now=13.0)
    assert (page.state, page.node, page.since) == ("firing", B, 11.0)


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
        elif len(last) >= 3:
            assert al.blind
        elif not al.blind:
            assert len(last) < 3  # two failing targets are not enough to call ourselves blind


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


def blind_abc(al: Alerting, *, t0: float = 0.0) -> None:
    """Drive A, B and C into blindness (two rounds of timeouts)."""
    for i in range(2):
        for n in (A, B, C):
            al.observe(n, "timeout", "t", now=t0 + i)
    assert al.blind


@pytest.mark.parametrize("rounds_before", [0, 1])
def test_no_false_page_after_sight_returns(rounds_before: int) -> None:
    """Streaks reset when blindness starts and ends: a node needs a full threshold of new
    failures after sight returns, however long the outage (defect: paged on the first one)."""
    al = Alerting(failure_threshold=3)
    for i in range(rounds_before):  # B already failing a little before the outage
        al.observe(B, "timeout", "t", now=float(i))
        al.observe(A, "fresh", "", now=float(i))
    blind_abc(al, t0=10.0)
    for i in range(20):  # a long outage: blind, no streak grows
        for n in (A, B, C):
            assert al.observe(n, "timeout", "t", now=20.0 + i) == []
        assert all(s.failing == 0 for s in al.targets.values())
    assert [t.state for t in al.observe(A, "fresh", "", now=50.0)] == ["resolved"]
    out: list[Transition] = []
    for i in range(2):  # agents still 503 for a cycle or two: no page
        out += al.observe(B, "unhealthy", "503", now=51.0 + i)
        out += al.observe(C, "timeout", "t", now=51.0 + i)
    assert out == []
    (page,) = al.observe(B, "unhealthy", "503", now=60.0)
    assert (page.node, page.since) == (B, 51.0)


def test_lie_after_sight_returns_needs_the_threshold_until_fresh() -> None:
    """After blindness a stale body counts like any failure until the node answers fresh once;
    after that a lie pages at once again."""
    al = Alerting(failure_threshold=3)
    blind_abc(al)
    al.observe(A, "fresh", "", now=5.0)
    assert al.observe(B, "stale", "old", now=6.0) == []
    assert al.observe(B, "stale", "old", now=7.0) == []
    assert [t.node for t in al.observe(B, "stale", "old", now=8.0)] == [B]
    al.observe(C, "fresh", "", now=9.0)
    assert [t.node for t in al.observe(C, "stale", "old", now=10.0)] == [C]


def test_two_failing_targets_are_not_blind() -> None:
    """Fewer than three failing targets page as nodes: two cannot tell us from them."""
    al = Alerting()
    out: list[Transition] = []
    for i in range(3):
        out += al.observe(A, "timeout", "t", now=float(i))
        out += al.observe(B, "timeout", "t", now=float(i))
    assert not al.blind
    assert sorted(str(t.node) for t in out) == ["s/a", "s/b"]


def test_no_blind_page_in_the_first_interval_after_start() -> None:
    """At start only a few of many targets have answered: no blind verdict within one
    interval, nor before every target answered (defect: 'all 2 targets failing' at restart)."""
    nodes = [NodeId("s", f"n{i}") for i in range(33)]
    al = Alerting(interval=30.0, started=1000.0)
    for n in nodes:
        al.add(n)
    for i, n in enumerate(nodes[:3]):
        assert al.observe(n, "timeout", "t", now=1000.0 + i) == []
    assert not al.blind
    # a whole interval later, still only 3 of 33 answered: the round is incomplete
    assert al.observe(nodes[0], "timeout", "t", now=1031.0) == []
    assert not al.blind
    # every target has answered, all failing: now it is blindness
    out: list[Transition] = []
    for n in nodes[3:]:
        out += al.observe(n, "timeout", "t", now=1040.0)
    assert [(t.state, t.node) for t in out] == [("firing", None)]
    assert "all 33 targets" in out[0].reason


def test_blind_judged_after_two_intervals_even_with_an_unanswered_target() -> None:
    """A target that never answers cannot postpone the blind verdict past two intervals."""
    al = Alerting(interval=10.0, started=0.0)
    al.add(NodeId("s", "late"))
    for n in (A, B, C):
        al.observe(n, "timeout", "t", now=15.0)
    assert not al.blind
    (tr,) = al.observe(A, "timeout", "t", now=21.0)
    assert (tr.state, tr.node) == ("firing", None)


def test_lie_in_the_first_interval_counts_but_does_not_page_at_once() -> None:
    """Before the first interval is over (blindness not judgeable yet) a lie needs the threshold;
    after it, a lie pages at once."""
    al = Alerting(interval=10.0, started=0.0)
    al.observe(B, "fresh", "", now=1.0)
    assert al.observe(A, "stale", "old", now=1.0) == []
    (tr,) = al.observe(C, "stale", "old", now=11.0)
    assert tr.node == C
