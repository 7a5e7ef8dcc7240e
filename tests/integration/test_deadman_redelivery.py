"""No second page on the core subject after a restart: alerts a previous run queued are looked
up in FLEET_ALERTS first, and a new alert waits for the state save that holds it."""

from __future__ import annotations

import time

from nats.aio.client import Client as NATS

from services.deadman.publisher import AlertPublisher, Outgoing
from shared.bootstrap import ensure_fleet
from shared.identity import NodeId
from shared.models import Alert
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, wait_for


def page(node: str, state: str = "firing") -> Alert:
    """A node alert as the deadman would send it."""
    now = time.time()
    return Alert(
        id=f"silent.dc1.{node}.abc",
        kind="silent",
        state=state,  # type: ignore[arg-type]
        severity="page",
        site="dc1",
        node=node,
        ts=now,
        since=now - 2,
        last_seen=now - 2,
        reason="no heartbeat",
        summary=f"dc1/{node} is silent",
    )


async def test_alert_of_a_dead_run_already_stored_is_not_sent_again(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects
) -> None:
    """A queued alert the previous run published before kill -9 reaches core subscribers once;
    one it never published is sent."""
    js = nc.jetstream()
    await ensure_fleet(js, subjects)
    col = await Collector.on(nc, subjects.alert_all)
    sent_before: list[Outgoing] = []
    first = AlertPublisher(js, stream=subjects.alerts_stream)
    first.submit(subjects.alert_silent(NodeId("dc1", "a")), page("a"))
    first.submit(subjects.alert_silent(NodeId("dc1", "b")), page("b"))
    sent_before.extend(first.queue)
    assert await first.step()  # "a" and "b" published; the run dies before saving its queue
    await col.wait_count(2)
    done: list[tuple[str, bool]] = []
    again = AlertPublisher(
        js, stream=subjects.alerts_stream, on_published=lambda o, d: done.append((o.msg_id, d))
    )
    unsent = AlertPublisher(js, stream=subjects.alerts_stream)
    unsent.submit(subjects.alert_silent(NodeId("dc1", "c")), page("c"))
    again.resubmit([*sent_before, *unsent.queue])  # the queue the dead run had saved
    while await again.step():
        pass
    assert not again.queue
    await col.wait_count(3)  # "c", sent after "a" and "b" were considered, has arrived
    nodes = [m.subject.rsplit(".", 1)[-1] for _, m in col.messages]
    assert sorted(nodes) == ["a", "b", "c"]
    assert sorted(done) == sorted(
        [*((o.msg_id, True) for o in sent_before), (unsent.queue[0].msg_id, False)]
    )


async def test_new_alert_waits_for_the_save_that_holds_it(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects
) -> None:
    """With persist_first, a queued page asks for a save and is sent once that save was
    attempted (release), not before; with no save it goes out after max_hold anyway."""
    js = nc.jetstream()
    await ensure_fleet(js, subjects)
    col = await Collector.on(nc, subjects.alert_all)
    asked: list[int] = []
    pub = AlertPublisher(
        js, stream=subjects.alerts_stream, persist_first=lambda: asked.append(1), max_hold=60
    )
    pub.submit(subjects.alert_silent(NodeId("dc1", "a")), page("a"))
    assert asked == [1]
    assert not await pub.step()  # held: the save has not happened yet
    pub.release(pub.serial)
    assert await pub.step()
    await col.wait_count(1)
    slow = AlertPublisher(
        js, stream=subjects.alerts_stream, persist_first=lambda: None, max_hold=0.2
    )
    slow.submit(subjects.alert_silent(NodeId("dc1", "b")), page("b"))
    await wait_for(lambda: slow._ready(), timeout=5, what="the hold to run out")
    assert await slow.step()
    await col.wait_count(2)
