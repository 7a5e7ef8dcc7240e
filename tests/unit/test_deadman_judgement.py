"""Issue-4 judgement in the pure tracker: site partitions, suspecting itself, flapping."""

from __future__ import annotations

from services.deadman.tracker import Judgement, Tracker, Transition
from shared.clock import FakeClock

W, P = 1.0, 0.5


def make(c: FakeClock, **kw: float) -> Tracker:
    return Tracker(window=W, pending=P, grace=0.0, now=c.monotonic(), judgement=Judgement(**kw))  # type: ignore[arg-type]


def beat_all(t: Tracker, c: FakeClock, keys: list[str], seq: int) -> list[Transition]:
    out = []
    for k in keys:
        r = t.heartbeat(k, c.monotonic(), "b", seq)
        if r is not None:
            out.append(r)
    return out + t.advance(c.monotonic())


def run(t: Tracker, c: FakeClock, seconds: float, keep: list[str], seq0: int) -> list[Transition]:
    """Advance in 50 ms steps, beating ``keep`` every 200 ms."""
    out: list[Transition] = []
    steps = int(seconds / 0.05)
    for i in range(steps):
        c.advance(0.05)
        if i % 4 == 0:
            out += beat_all(t, c, keep, seq0 + i)
        out += t.advance(c.monotonic())
    return out


def test_site_partition_pages_once_node_alerts_are_warnings() -> None:
    """40 of 50 nodes of one site silent together: one site page, 40 warnings, then resolves."""
    c = FakeClock()
    t = make(c)
    a = [f"dc1.n{i}" for i in range(50)]
    b = [f"dc2.n{i}" for i in range(10)]
    beat_all(t, c, a + b, 1)
    out = run(t, c, 3.0, keep=a[40:] + b, seq0=2)
    site = [x for x in out if x.kind == "site"]
    nodes = [x for x in out if x.kind == "silent"]
    assert [(x.state, x.key) for x in site] == [("firing", "dc1")]
    assert len(nodes) == 40 and {x.severity for x in nodes} == {"warning"}
    assert all(site[0].alert_id in x.reason for x in nodes)
    back = beat_all(t, c, a, 1000)
    assert [x.state for x in back if x.kind == "site"] == ["resolved"]
    assert sum(1 for x in back if x.kind == "silent" and x.state == "resolved") == 40


def test_few_nodes_of_a_site_page_normally() -> None:
    """Below the threshold (2 of 50) each silent node pages on its own."""
    c = FakeClock()
    t = make(c)
    a = [f"dc1.n{i}" for i in range(50)]
    beat_all(t, c, a, 1)
    out = run(t, c, 3.0, keep=a[2:], seq0=2)
    assert [x.severity for x in out] == ["page", "page"]


def test_every_site_silent_suspects_itself() -> None:
    """Every site silent at once: one self page, no node page; heartbeats end it."""
    c = FakeClock()
    t = make(c)
    keys = [f"dc{s}.n{i}" for s in range(3) for i in range(5)]
    beat_all(t, c, keys, 1)
    out = run(t, c, 4.0, keep=[], seq0=2)
    assert [(x.kind, x.state) for x in out] == [("self", "firing")]
    back = beat_all(t, c, keys[:1], 100)
    assert [(x.kind, x.state) for x in back] == [("self", "resolved")]
    assert run(t, c, W + P - 0.1, keep=keys, seq0=200) == []


def test_flapping_notifies_once_and_needs_good_streak() -> None:
    """A flapping node keeps one open alert; it resolves only after K good beats over a window."""
    c = FakeClock()
    t = make(c, flap_changes=4, flap_period=60.0, flap_good=3)
    k = "dc1.f"
    events: list[Transition] = []
    seq = 0
    for _ in range(4):  # down, up, down, up ... each cycle is a real page and resolve
        seq += 1
        r = t.heartbeat(k, c.monotonic(), "b", seq)
        events += [r] if r else []
        for _ in range(40):
            c.advance(0.05)
            events += t.advance(c.monotonic())
    fires = [e for e in events if e.state == "firing"]
    resolves = [e for e in events if e.state == "resolved"]
    assert len(fires) == 3 and len(resolves) == 2  # the third episode stays open (flapping)
    assert t.flapping(t.nodes[k], c.monotonic())
    # good heartbeats: the first two do not resolve; three spanning a window do
    seen = []
    for _ in range(6):
        seq += 1
        r = t.heartbeat(k, c.monotonic(), "b", seq)
        seen.append(r)
        c.advance(0.3)
        assert t.advance(c.monotonic()) == []
    closes = [r for r in seen if r is not None]
    assert len(closes) == 1 and seen.index(closes[0]) >= 3


def test_blip_shorter_than_pending_notifies_nothing() -> None:
    """A silence longer than the window but shorter than window+pending notifies nothing."""
    c = FakeClock()
    t = make(c)
    t.heartbeat("dc1.n", c.monotonic(), "b", 1)
    c.advance(W + P * 0.9)
    assert t.advance(c.monotonic()) == []
    assert t.heartbeat("dc1.n", c.monotonic(), "b", 2) is None
