"""``fleetwatch prober`` as a real subprocess: flags, results, metrics, signals, kill -9."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
from pathlib import Path

import aiohttp
from nats.aio.client import Client as NATS

from shared.codec import decode
from shared.models import Alert, ProbeResult
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import Collector, run_cli, spawn_cli, wait_for
from tests.integration.test_prober_service import Switch
from tests.integration.test_prober_support import endpoints, fresh_body, json200


def fast_args(url: str, prefix: str, *targets: str) -> list[str]:
    args = [
        "prober",
        "--nats",
        url,
        "--prefix",
        prefix,
        "--interval",
        "0.5",
        "--max-age",
        "3",
        "--timeout",
        "0.4",
        "--metrics-port",
        "0",
        "--instance",
        "e2e",
    ]
    for t in targets:
        args += ["--target", t]
    return args


async def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    await wait_for(lambda: proc.poll() is not None, timeout=10, what="prober exit")
    return int(proc.returncode)


def test_timeout_not_shorter_than_interval_is_refused() -> None:
    """--timeout >= --interval stops start-up with exit 2 and one line naming --timeout."""
    out = run_cli("prober", "--interval", "1", "--timeout", "1")
    assert out.returncode == 2
    assert "--timeout" in out.stderr and "shorter than --interval" in out.stderr


def test_zero_max_age_is_refused() -> None:
    """--max-age 0 (every node stale) stops start-up with exit 2 and one line naming it."""
    out = run_cli("prober", "--max-age", "0")
    assert out.returncode == 2
    assert "--max-age" in out.stderr and "greater than 0" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


async def test_cli_probes_serves_metrics_and_stops_on_sigterm(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str, tmp_path: Path
) -> None:
    """The CLI publishes results, answers status, serves /metrics and /healthz, exits 0 on TERM."""
    async with endpoints({"n": json200(fresh_body)}) as eps:
        res = await Collector.on(nc, subjects.probe_all)
        proc = spawn_cli(
            *fast_args(nats_server.url, prefix, f"s/n={eps['n'].url}"), log=tmp_path / "prober.log"
        )
        try:
            await res.wait_count(2, timeout=15)
            r = decode(ProbeResult, res.messages[0][1].data)
            assert (r.site, r.node, r.verdict) == ("s", "n", "fresh")
            msg = await nc.request(subjects.service_status("prober"), b"", timeout=2)
            status = json.loads(msg.data)
            metrics_url = status["metrics_url"]
            async with aiohttp.ClientSession() as http:
                async with http.get(metrics_url) as resp:
                    text = await resp.text()
                async with http.get(metrics_url.replace("/metrics", "/healthz")) as resp:
                    health = await resp.json()
                    assert resp.status == 200
            assert 'probe_success{node="n",site="s"} 1.0' in text
            assert "fleetwatch_prober_timeout_seconds 0.4" in text
            assert 'fleetwatch_prober_verdicts_total{verdict="fresh"}' in text
            assert "probe_duration_seconds_bucket" in text
            assert health["ok"] is True and health["targets"] == 1
        finally:
            code = await stop(proc)
        assert code == 0, (tmp_path / "prober.log").read_text()


async def test_open_alert_survives_kill_9(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, prefix: str, tmp_path: Path
) -> None:
    """A prober killed with SIGKILL while paging fires no second page and resolves once."""
    sw = Switch("503")
    async with endpoints({"n": sw.behaviour()}) as eps:
        al = await Collector.on(nc, subjects.alert_all)
        res = await Collector.on(nc, subjects.probe_all)
        args = fast_args(nats_server.url, prefix, f"s/n={eps['n'].url}")
        first = spawn_cli(*args, log=tmp_path / "first.log")
        try:
            await al.wait_count(1, timeout=15)
        finally:
            await stop(first, signal.SIGKILL)
        fired = decode(Alert, al.messages[0][1].data)
        n = len(res.messages)
        second = spawn_cli(*args, log=tmp_path / "second.log")
        try:
            await res.wait_count(n + 4, timeout=15)  # still failing after the restart
            assert len(al.messages) == 1
            sw.mode = "fresh"
            await al.wait_count(2, timeout=10)
            await asyncio.sleep(1.2)  # a couple more fresh probes: nothing else is published
        finally:
            assert await stop(second) == 0
        states = [(a.state, a.id) for a in (decode(Alert, m.data) for _, m in al.messages)]
        assert states == [("firing", fired.id), ("resolved", fired.id)]


async def test_taken_metrics_port_exits_1_naming_it(
    nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    """A metrics port already in use stops the prober with status 1 and a line naming it."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = fast_args(nats_server.url, prefix)
        args[args.index("--metrics-port") + 1] = str(port)
        out = await asyncio.to_thread(run_cli, *args)
    assert out.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in out.stderr


async def test_sigterm_while_nats_is_unreachable_exits_0(tmp_path: Path) -> None:
    """A prober still waiting for its broker stops promptly and cleanly on SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    log = tmp_path / "prober.log"
    proc = spawn_cli("prober", "--nats", f"nats://127.0.0.1:{dead}", "--metrics-port", "0", log=log)
    try:
        await wait_for(
            lambda: "nats prober" in log.read_text(),
            timeout=15,
            what="a failed connect attempt in the log",
        )
    finally:
        code = await stop(proc)
    assert code == 0, log.read_text()[-2000:]
