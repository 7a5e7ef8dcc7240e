"""kill -9 of the real deadman process mid-run, then a restart: the restart contract still holds."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, run_cli, spawn_cli, wait_for
from tests.integration.test_deadman_support import Beater, alerts


def start(
    url: str, prefix: str, log: Path, grace: str, *extra: str, instance: str = "e2e"
) -> subprocess.Popen[bytes]:
    """The real deadman CLI with the test timings (window 1 s, pending 0.5 s)."""
    return spawn_cli(
        "deadman",
        "--nats",
        url,
        "--prefix",
        prefix,
        "--window",
        "1",
        "--pending",
        "500ms",
        "--startup-grace",
        grace,
        "--metrics-port",
        "0",
        "--persist-every",
        "0.2",
        "--instance",
        instance,
        *extra,
        log=log,
    )


async def ready(nc: NATS, subjects: Subjects, proc: subprocess.Popen[bytes]) -> dict[str, object]:
    async def ask() -> dict[str, object] | None:
        assert proc.poll() is None, "deadman exited"
        try:
            msg = await nc.request(subjects.service_status("deadman"), b"", timeout=0.5)
        except (NoRespondersError, NatsTimeout):
            return None
        st: dict[str, object] = json.loads(msg.data)
        return st

    st: dict[str, object] = await wait_for(ask, timeout=20, what="deadman status reply")
    return st


async def persisted(nc: NATS, subjects: Subjects, alert_id: str) -> bool:
    kv = await nc.jetstream().key_value(subjects.state_bucket("deadman"))
    for key in await kv.keys():
        entry = await kv.get(key)
        if entry.value and alert_id.encode() in entry.value:
            return True
    return False


async def test_kill_9_then_restart_keeps_the_contract(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str, tmp_path: Path
) -> None:
    """After kill -9 and restart: healthy node silent, dead-meanwhile node pages once after grace,
    a firing alert is not fired again and resolves with its original id."""
    col = await Collector.on(nc, subjects.alert_all)
    healthy = Beater(nc, subjects, "dc1/ok")
    dies = Beater(nc, subjects, "dc1/dies")
    firing = Beater(nc, subjects, "dc1/firing")
    stop_ok, stop_dies = asyncio.Event(), asyncio.Event()
    bg = [
        asyncio.create_task(healthy.keep_beating(stop_ok)),
        asyncio.create_task(dies.keep_beating(stop_dies)),
    ]
    log = tmp_path / "deadman.log"
    proc = start(nats_server.url, prefix, log, grace="0")
    try:
        st = await ready(nc, subjects, proc)
        assert st["blind"] is False
        await firing.beat()
        await wait_for(lambda: alerts(col, "dc1/firing"), timeout=8)
        first = alerts(col, "dc1/firing")[0][1]
        await wait_for(
            lambda: persisted(nc, subjects, first.id), timeout=5, what="firing episode saved"
        )
        proc.kill()  # SIGKILL: no final save, no drain
        proc.wait(5)
        stop_dies.set()
        await asyncio.sleep(0.3)
        restarted = time.monotonic()
        proc = start(nats_server.url, prefix, log, grace="1.5")
        await ready(nc, subjects, proc)
        await wait_for(lambda: alerts(col, "dc1/dies"), timeout=10)
        at, page = alerts(col, "dc1/dies")[0]
        assert page.state == "firing" and at >= restarted + 1.5
        await firing.beat()
        await wait_for(lambda: len(alerts(col, "dc1/firing")) >= 2, timeout=5)
        await asyncio.sleep(0.3)
    finally:
        stop_ok.set()
        await asyncio.gather(*bg)
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    assert alerts(col, "dc1/ok") == [], log.read_text()
    assert [a.state for _, a in alerts(col, "dc1/dies")] == ["firing"]
    assert [(a.state, a.id) for _, a in alerts(col, "dc1/firing")] == [
        ("firing", first.id),
        ("resolved", first.id),
    ]
    selfs = [a for _, a in alerts(col) if a.kind == "self"]
    assert len(selfs) == 1 and "restarted after a gap" in selfs[0].reason


async def test_taken_metrics_port_exits_1_with_one_line(
    nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    """A metrics port already in use stops the deadman with status 1 and one line, no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = await asyncio.to_thread(
            run_cli,
            "deadman",
            "--nats",
            nats_server.url,
            "--prefix",
            prefix,
            "--metrics-port",
            str(port),
        )
    assert out.returncode == 1, out.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in out.stderr
    assert "Traceback" not in out.stderr
