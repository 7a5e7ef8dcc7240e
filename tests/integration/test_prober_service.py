"""The prober service against a real nats-server and real loopback endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError

from services.prober.schedule import phase
from services.prober.service import Prober
from services.prober.settings import ProberSettings
from shared.bootstrap import ensure_fleet
from shared.bus import connect
from shared.codec import decode
from shared.identity import NodeId
from shared.inventory import InventoryEntry
from shared.models import Alert, ProbeResult
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, wait_for
from tests.integration.test_prober_support import (
    Behaviour,
    answer,
    case_behaviours,
    doc,
    endpoints,
    fresh_body,
    json200,
    never,
    refused_url,
    response,
)

FAST = {"interval": 0.25, "timeout": 0.2, "max_age": 3.0}


def settings(url: str, prefix: str, targets: dict[str, str], **extra: Any) -> ProberSettings:
    """Settings as the CLI would build them, plus test timings."""
    args: dict[str, Any] = {
        "nats": url,
        "prefix": prefix,
        "metrics_port": 0,
        "instance": "t1",
        "target": [f"{k}={v}" for k, v in targets.items()],
    }
    args.update(extra)
    return ProberSettings(**args)


@contextlib.asynccontextmanager
async def running(s: ProberSettings) -> AsyncIterator[Prober]:
    """A prober running in this loop with its own connection; stopped and drained after."""
    conn = await connect(s.nats, name="prober-test")
    prober = Prober(nc=conn, settings=s)
    stop = asyncio.Event()
    task = asyncio.create_task(prober.run(stop))
    try:
        await wait_for(lambda: prober.ready.is_set() or task.done(), timeout=10, what="ready")
        if task.done():
            task.result()
        yield prober
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await conn.drain()


class Switch:
    """An endpoint whose answer a test flips: fresh, 503, stale."""

    def __init__(self, mode: str = "fresh") -> None:
        self.mode = mode
        self.boot = time.time() - 600

    def behaviour(self) -> Behaviour:
        def make() -> bytes:
            if self.mode == "503":
                return response(503, fresh_body())
            if self.mode == "stale":
                return response(200, doc(ok=True, ts=self.boot))
            return response(200, fresh_body())

        return answer(make)


def results(c: Collector) -> list[ProbeResult]:
    return [decode(ProbeResult, m.data) for _, m in c.messages]


def alerts(c: Collector) -> list[Alert]:
    return [decode(Alert, m.data) for _, m in c.messages]


async def test_service_publishes_each_case_verdict(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Every issue case, probed by the running service, is published with its verdict."""
    async with endpoints({"landing": json200(fresh_body)}) as landing:
        cases = case_behaviours(landing["landing"].url)
        async with endpoints({k: b for k, (b, _) in cases.items()}) as eps:
            names = {k: f"c/{k.replace('_', '-')}" for k in eps} | {"refused": "c/refused"}
            urls = {k: e.url for k, e in eps.items()} | {"refused": refused_url()}
            want = {names[k]: v for k, (_, v) in cases.items()} | {"c/refused": "refused"}
            col = await Collector.on(nc, subjects.probe_all)
            s = settings(
                nats_server.url,
                prefix,
                {names[k]: urls[k] for k in urls},
                interval=1.0,
                timeout=0.8,
                max_age=3.0,
                failure_threshold=100,
            )
            async with running(s):
                await wait_for(
                    lambda: {f"{r.site}/{r.node}" for r in results(col)} >= set(want),
                    timeout=10,
                    what="a result per case",
                )
            got: dict[str, str] = {}
            for r in results(col):
                got.setdefault(f"{r.site}/{r.node}", r.verdict)
            assert got == want
            assert landing["landing"].hits == 0


async def test_ten_hanging_targets_do_not_delay_ninety_good_ones(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Ten listeners that never answer do not delay the verdicts of ninety good targets."""
    behaviours: dict[str, Behaviour] = {f"hang{i}": never for i in range(10)}
    behaviours |= {f"good{i}": json200(fresh_body) for i in range(90)}
    async with endpoints(behaviours) as eps:
        col = await Collector.on(nc, subjects.probe_all)
        s = settings(
            nats_server.url,
            prefix,
            {f"h/{k}": e.url for k, e in eps.items()},
            interval=1.0,
            timeout=0.8,
            max_age=3.0,
            failure_threshold=100,
        )
        async with running(s):
            await wait_for(
                lambda: len({r.node for r in results(col)}) == 100,
                timeout=10,
                what="a result from each of 100 targets",
            )
        first: dict[str, ProbeResult] = {}
        for r in results(col):
            first.setdefault(r.node, r)
    delays = {}
    for name, r in first.items():
        slot_phase = phase(NodeId("h", name), 1.0)
        delays[name] = (r.ts - slot_phase) % 1.0  # how long after its slot the verdict came
    good = [n for n in first if n.startswith("good")]
    assert all(first[n].verdict == "fresh" for n in good)
    assert all(first[n].verdict == "timeout" for n in first if n.startswith("hang"))
    worst = max(delays[n] for n in good)
    assert worst < 0.5, sorted((delays[n], n) for n in good)[-5:]
    assert max(first[n].latency for n in good) < 0.5


async def test_probe_alert_fires_after_threshold_and_resolves_with_same_id(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Three failures page once; two fresh results resolve that page with its id, in the stream."""
    sw = Switch("fresh")
    async with endpoints({"n": sw.behaviour()}) as eps:
        res = await Collector.on(nc, subjects.probe_all)
        al = await Collector.on(nc, subjects.alert_all)
        async with running(settings(nats_server.url, prefix, {"s/n": eps["n"].url}, **FAST)):
            await wait_for(lambda: any(r.ok for r in results(res)), timeout=5)
            sw.mode = "503"
            await al.wait_count(1, timeout=5)
            bad = [r for r in results(res) if not r.ok]
            assert len(bad) >= 3  # not before the third failure
            fired = alerts(al)[0]
            assert (fired.state, fired.kind, fired.reason) == ("firing", "probe", "unhealthy")
            n_before = len(res.messages)
            sw.mode = "fresh"
            await al.wait_count(2, timeout=5)
            fresh_after = [r for r in results(res)[n_before:] if r.ok]
            assert len(fresh_after) >= 2
        resolved = alerts(al)[1]
        assert (resolved.state, resolved.id) == ("resolved", fired.id)
        assert len(al.messages) == 2
        js = nc.jetstream()
        info = await js.stream_info(subjects.alerts_stream)
        assert info.state.messages == 2


async def test_a_lie_pages_at_once(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """A stale body pages without waiting for the failure threshold (once the first interval
    is over: before it, a wrong clock of our own could not be told from lying nodes)."""
    sw = Switch("stale")
    async with endpoints({"n": sw.behaviour()}) as eps:
        res = await Collector.on(nc, subjects.probe_all)
        al = await Collector.on(nc, subjects.alert_all)
        async with running(settings(nats_server.url, prefix, {"s/liar": eps["n"].url}, **FAST)):
            await al.wait_count(1, timeout=5)
            assert alerts(al)[0].reason == "stale"
            assert len(res.messages) <= 2  # the threshold is 3


async def test_open_alert_survives_restart_no_second_firing_one_resolve(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """An alert open when the prober stops is still open after restart and resolves exactly once."""
    sw = Switch("503")
    async with endpoints({"n": sw.behaviour()}) as eps:
        al = await Collector.on(nc, subjects.alert_all)
        res = await Collector.on(nc, subjects.probe_all)
        s = settings(nats_server.url, prefix, {"s/n": eps["n"].url}, **FAST)
        async with running(s):
            await al.wait_count(1, timeout=5)
        fired = alerts(al)[0]
        n_before = len(res.messages)
        async with running(s) as second:
            # several more failures: the restored alert must not fire again
            await wait_for(lambda: len(res.messages) >= n_before + 4, timeout=5)
            assert len(al.messages) == 1
            assert second.status()["targets"][0]["alert_id"] == fired.id
            sw.mode = "fresh"
            await al.wait_count(2, timeout=5)
            resolved = alerts(al)[1]
            assert (resolved.state, resolved.id) == ("resolved", fired.id)
            kv = await nc.jetstream().key_value(subjects.state_bucket("prober"))
            with pytest.raises(KeyNotFoundError):
                await kv.get("s.n")
        assert len(al.messages) == 2


async def test_blind_prober_raises_one_self_alert_and_no_node_pages(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Every target failing at once: one self alert, no probe alerts; fresh again resolves it,
    and the others page only after a full threshold of failures counted from then."""
    a, b, c = Switch("503"), Switch("503"), Switch("503")
    behaviours = {"a": a.behaviour(), "b": b.behaviour(), "c": c.behaviour()}
    async with endpoints(behaviours) as eps:
        al = await Collector.on(nc, subjects.alert_all)
        res = await Collector.on(nc, subjects.probe_all)
        targets = {f"s/{k}": e.url for k, e in eps.items()}
        async with running(settings(nats_server.url, prefix, targets, **FAST)) as p:
            await al.wait_count(1, timeout=5)
            # well past the failure threshold on all three: still only the self alert
            await wait_for(lambda: len(res.messages) >= 15, timeout=5)
            assert [x.kind for x in alerts(al)] == ["self"]
            assert al.messages[0][1].subject == subjects.alert_self("prober", "t1")
            assert p.status()["blind"] is True
            a.mode = "fresh"
            await wait_for(lambda: len(al.messages) >= 4, timeout=5)
            kinds = [(x.kind, x.state, x.node) for x in alerts(al)]
            assert kinds[1] == ("self", "resolved", None)
            assert sorted(kinds[2:]) == [("probe", "firing", "b"), ("probe", "firing", "c")]
            sight = min(r.ts for r in results(res) if r.ok)
            for page in alerts(al)[2:]:
                assert page.since > sight  # the streak began after sight returned
                after = [r for r in results(res) if r.node == page.node and r.ts > sight]
                assert len(after) >= 3


class Outage:
    """Agents around a broker outage: fresh, then 503 while it lasts; after it the first agent
    is back at once and the others, once it is, answer 503 one more time (their first cycle after
    the outage) and then fresh."""

    def __init__(self) -> None:
        self.phase = "up"  # up | down | back
        self.first_back = False
        self.late: set[str] = set()  # agents that have served their one late 503

    def behaviour(self, name: str, *, first: bool = False) -> Behaviour:
        def make() -> bytes:
            fresh = response(200, fresh_body())
            if self.phase == "up":
                return fresh
            if self.phase == "back" and first:
                self.first_back = True
                return fresh
            if self.phase == "back" and self.first_back:
                if name in self.late:
                    return fresh
                self.late.add(name)
            return response(503, fresh_body())

        return answer(make)


async def test_no_false_pages_after_a_broker_outage(
    dedicated_server: EmbeddedServer, subjects: Subjects, prefix: str
) -> None:
    """Broker down, every agent 503: blind, no node pages; broker back, agents that still 503 for
    a cycle do not page (the streaks built while blind do not count)."""
    o = Outage()
    behaviours = {"a": o.behaviour("a", first=True), "b": o.behaviour("b")}
    behaviours["c"] = o.behaviour("c")
    async with endpoints(behaviours) as eps:
        targets = {f"s/{k}": e.url for k, e in eps.items()}
        s = settings(dedicated_server.url, prefix, targets, **FAST)
        async with running(s) as p:
            await wait_for(
                lambda: all(t.last is not None and t.last.ok for t in p.targets.values()),
                timeout=5,
            )
            dedicated_server.stop()
            o.phase = "down"
            await wait_for(lambda: p.alerting.blind, timeout=5, what="blind while all 503")
            for _ in range(2):  # two more failures each: past the threshold while blind
                seen = {node: t.last for node, t in p.targets.items()}
                await wait_for(
                    lambda: all(t.last is not seen[n] for n, t in p.targets.items()),  # noqa: B023
                    timeout=5,
                )
            dedicated_server.start()
            o.phase = "back"
            await wait_for(
                lambda: (
                    not p.alerting.blind
                    and all(t.last is not None and t.last.ok for t in p.targets.values())
                ),
                timeout=10,
                what="everyone fresh again",
            )
            conn = await connect(dedicated_server.url, name="check")
            try:
                js = conn.jetstream()

                async def only_self() -> bool:
                    info = await js.stream_info(subjects.alerts_stream)
                    return bool(info.state.messages == 2 and p._outbox and p._outbox.pending == 0)

                await wait_for(only_self, timeout=10, what="blind fired and resolved, stored")
                for seq in (1, 2):
                    msg = await js.get_msg(subjects.alerts_stream, seq)
                    assert msg.data is not None and decode(Alert, msg.data).kind == "self"
            finally:
                await conn.close()
            assert all(row["alert_id"] is None for row in p.status()["targets"])


async def test_two_failing_targets_page_as_nodes_not_blind(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Two targets failing together are not enough to call the prober blind: both page."""
    async with endpoints({"a": Switch("503").behaviour(), "b": Switch("503").behaviour()}) as eps:
        al = await Collector.on(nc, subjects.alert_all)
        targets = {f"s/{k}": e.url for k, e in eps.items()}
        async with running(settings(nats_server.url, prefix, targets, **FAST)) as p:
            await al.wait_count(2, timeout=5)
            assert sorted((x.kind, x.node) for x in alerts(al)) == [
                ("probe", "a"),
                ("probe", "b"),
            ]
            assert p.status()["blind"] is False


async def test_bad_inventory_url_is_rejected_with_its_reason_and_never_probed(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """A file:// or spaced health_url written straight into KV is rejected: counted once,
    shown with its reason in the status reply, never probed; a fixed URL is probed."""
    async with endpoints({"n": json200(fresh_body)}) as eps:
        store = await ensure_fleet(nc.jetstream(), subjects)
        raw = {
            "inv.f": {"site": "inv", "node": "f", "health_url": "file:///etc/passwd"},
            "inv.sp": {"site": "inv", "node": "sp", "health_url": eps["n"].url + " x"},
            "inv.ok": {"site": "inv", "node": "ok", "health_url": eps["n"].url},
        }
        for key, body in raw.items():
            await store.nodes.put(key, json.dumps(body).encode())
        res = await Collector.on(nc, subjects.probe_all)
        async with running(settings(nats_server.url, prefix, {}, resync=0.3, **FAST)) as p:
            await wait_for(lambda: len(res.messages) >= 3, timeout=5)
            await wait_for(lambda: len(p.status()["rejected"]) == 2, timeout=5)
            assert {r.node for r in results(res)} == {"ok"}
            msg = await nc.request(subjects.service_status("prober"), b"", timeout=2)
            rejected = {r["node"]: r for r in json.loads(msg.data)["rejected"]}
            assert "scheme 'file'" in rejected["f"]["reason"]
            assert rejected["f"]["url"] == "file:///etc/passwd"
            assert "whitespace" in rejected["sp"]["reason"]
            assert [t["node"] for t in json.loads(msg.data)["targets"]] == ["ok"]
            errors = p.metrics.errors.labels("bad_health_url")
            await asyncio.sleep(0)
            # resync re-reads them every 0.3 s: still counted once each
            n = len(res.messages)
            await wait_for(lambda: len(res.messages) >= n + 4, timeout=5)
            assert errors._value.get() == 2
            fixed = dict(raw["inv.f"], health_url=eps["n"].url)
            await store.nodes.put("inv.f", json.dumps(fixed).encode())
            await wait_for(lambda: "f" in {r.node for r in results(res)}, timeout=5)
            assert [r["node"] for r in p.status()["rejected"]] == ["sp"]


async def test_page_with_no_stream_and_no_subscriber_recreates_the_stream(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """Alert stream deleted and nobody subscribed ("no responders"): counted, the stream is
    recreated and the page stored in it with its id, no retry loop."""
    sw = Switch("fresh")
    async with endpoints({"n": sw.behaviour()}) as eps:
        res = await Collector.on(nc, subjects.probe_all)
        js = nc.jetstream()
        async with running(settings(nats_server.url, prefix, {"s/n": eps["n"].url}, **FAST)) as p:
            await wait_for(lambda: any(r.ok for r in results(res)), timeout=5)
            await js.delete_stream(subjects.alerts_stream)
            sw.mode = "503"
            missing = p.metrics.errors.labels("alert_stream_missing")
            await wait_for(lambda: missing._value.get() == 1, timeout=5, what="counted")
            await wait_for(lambda: p._outbox is not None and p._outbox.pending == 0, timeout=5)
            msg = await js.get_last_msg(
                subjects.alerts_stream, subjects.alert_probe(NodeId("s", "n"))
            )
            assert msg.data is not None and decode(Alert, msg.data).state == "firing"
            assert p.metrics.publish_retries.labels("nostreamresponseerror")._value.get() == 0


async def test_deleted_state_bucket_and_stream_do_not_block_pages(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """With the state bucket deleted the page is still stored (bucket recreated, counted); with
    the alert stream deleted too, subscribers get it and the stream is recreated to store it."""
    sw = Switch("fresh")
    async with endpoints({"n": sw.behaviour()}) as eps:
        res = await Collector.on(nc, subjects.probe_all)
        al = await Collector.on(nc, subjects.alert_all)
        js = nc.jetstream()
        bucket = subjects.state_bucket("prober")
        async with running(settings(nats_server.url, prefix, {"s/n": eps["n"].url}, **FAST)) as p:
            await wait_for(lambda: any(r.ok for r in results(res)), timeout=5)
            await js.delete_key_value(bucket)
            sw.mode = "503"
            await al.wait_count(1, timeout=5)
            fired = alerts(al)[0]
            assert fired.state == "firing"
            errors = p.metrics.errors.labels("state_bucket_missing")
            assert errors._value.get() == 1
            kv = await js.key_value(bucket)  # recreated, with the open alert in it
            assert (await kv.get("s.n")).value is not None
            info = await js.stream_info(subjects.alerts_stream)
            assert info.state.messages == 1
            await js.delete_key_value(bucket)
            await js.delete_stream(subjects.alerts_stream)
            sw.mode = "fresh"
            await al.wait_count(2, timeout=5)
            resolved = alerts(al)[1]
            assert (resolved.state, resolved.id) == ("resolved", fired.id)
            missing = p.metrics.errors.labels("alert_stream_missing")
            await wait_for(lambda: missing._value.get() == 1, timeout=5, what="counted")
            # the stream was recreated and the resolve stored there with its id
            await wait_for(lambda: p._outbox is not None and p._outbox.pending == 0, timeout=5)
            info = await js.stream_info(subjects.alerts_stream)
            assert info.state.messages == 1
        # subscribers saw the resolve with the failed publish and again when it was stored
        assert {(x.state, x.id) for x in alerts(al)[1:]} == {("resolved", fired.id)}


async def test_inventory_targets_come_and_go_without_restart(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """A node added to fleet_nodes is probed; removed, its open alert resolves as removed."""
    sw = Switch("fresh")
    async with endpoints({"n": sw.behaviour()}) as eps:
        js = nc.jetstream()
        store = await ensure_fleet(js, subjects)
        res = await Collector.on(nc, subjects.probe_all)
        al = await Collector.on(nc, subjects.alert_all)
        async with running(settings(nats_server.url, prefix, {}, resync=1.0, **FAST)) as p:
            entry = InventoryEntry(site="inv", node="n1", health_url=eps["n"].url)
            await store.nodes.put("inv.n1", entry.encode())
            await wait_for(lambda: len(res.messages) >= 1, timeout=5)
            assert results(res)[0].node == "n1"
            sw.mode = "503"
            await al.wait_count(1, timeout=5)
            await store.nodes.delete("inv.n1")
            await al.wait_count(2, timeout=5)
            gone = alerts(al)[1]
            assert (gone.state, gone.reason, gone.id) == ("resolved", "removed", alerts(al)[0].id)
            assert p.status()["targets"] == []
            n = len(res.messages)
            await asyncio.sleep(0.6)  # > two intervals: no probe of a removed node
            assert len(res.messages) == n


async def test_no_page_during_maintenance(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """A failing node in a maintenance window pages nothing; ending the window lets it page."""
    sw = Switch("503")
    async with endpoints({"n": sw.behaviour()}) as eps:
        store = await ensure_fleet(nc.jetstream(), subjects)
        entry = InventoryEntry(
            site="inv", node="m", health_url=eps["n"].url, maintenance_until=time.time() + 600
        )
        await store.nodes.put("inv.m", entry.encode())
        res = await Collector.on(nc, subjects.probe_all)
        al = await Collector.on(nc, subjects.alert_all)
        async with running(settings(nats_server.url, prefix, {}, **FAST)) as p:
            await wait_for(lambda: len(res.messages) >= 5, timeout=5)
            assert al.messages == []
            assert p.status()["targets"][0]["maintenance"] is True
            ended = entry.model_copy(update={"maintenance_until": None})
            await store.nodes.put("inv.m", ended.encode())
            await al.wait_count(1, timeout=5)
            assert alerts(al)[0].state == "firing"


async def test_status_request_answers_with_targets(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str
) -> None:
    """A request on the status subject gets the JSON view fleetwatch status shows."""
    async with endpoints({"n": json200(fresh_body)}) as eps:
        res = await Collector.on(nc, subjects.probe_all)
        async with running(settings(nats_server.url, prefix, {"s/n": eps["n"].url}, **FAST)):
            await wait_for(lambda: len(res.messages) >= 1, timeout=5)
            msg = await nc.request(subjects.service_status("prober"), b"", timeout=2)
    body = json.loads(msg.data)
    assert body["service"] == "prober" and body["instance"] == "t1"
    assert body["interval"] == 0.25 and body["blind"] is False
    assert body["metrics_url"].startswith("http://127.0.0.1:")
    (row,) = body["targets"]
    assert {
        k: row[k] for k in ("site", "node", "verdict", "ok", "status", "alert_id", "failing")
    } == {
        "site": "s",
        "node": "n",
        "verdict": "fresh",
        "ok": True,
        "status": 200,
        "alert_id": None,
        "failing": 0,
    }
    assert row["ts"] > 0 and row["latency"] >= 0 and row["age"] is not None


async def test_alert_is_stored_after_the_broker_comes_back(
    dedicated_server: EmbeddedServer, subjects: Subjects, prefix: str
) -> None:
    """A page raised while JetStream is down is retried and stored once when the broker returns."""
    sw = Switch("fresh")
    async with endpoints({"n": sw.behaviour()}) as eps:
        s = settings(dedicated_server.url, prefix, {"s/n": eps["n"].url}, **FAST)
        async with running(s) as p:
            await wait_for(lambda: p.targets[NodeId("s", "n")].last is not None, timeout=5)
            dedicated_server.stop()
            sw.mode = "503"
            await wait_for(
                lambda: p.status()["targets"][0]["alert_id"] is not None,
                timeout=5,
                what="alert decided while the broker is down",
            )
            dedicated_server.start()
            conn = await connect(dedicated_server.url, name="check")
            try:
                js = conn.jetstream()

                async def stored() -> int:
                    info = await js.stream_info(subjects.alerts_stream)
                    return int(info.state.messages)

                await wait_for(stored, timeout=15, what="alert stored after restart")
                await asyncio.sleep(0.5)
                assert await stored() == 1
            finally:
                await conn.close()
