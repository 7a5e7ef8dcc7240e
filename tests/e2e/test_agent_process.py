"""The real agent and example worker as subprocesses, against a real nats-server, killed and
stopped with real signals: kill -9, SIGSTOP, a worker that dies inside a live process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS

from shared.bootstrap import ensure_fleet
from shared.codec import decode
from shared.identity import NodeId
from shared.inventory import decode_entry
from shared.models import Heartbeat
from shared.server import EmbeddedServer
from shared.subjects import Subjects
from tests.harness import ROOT, Collector, cli_env, spawn_cli, wait_for, wait_for_sync

NODE = NodeId.parse("dc1/e2e")
_URL = re.compile(r"health on (http://\S+/healthz)")


def start_agent(
    url: str, prefix: str, state: Path, log: Path, *extra: str
) -> subprocess.Popen[bytes]:
    return spawn_cli(
        "agent",
        "--nats",
        url,
        "--prefix",
        prefix,
        "--node",
        str(NODE),
        "--interval",
        "0.3",
        "--health-port",
        "0",
        "--state-dir",
        str(state),
        *extra,
        log=log,
    )


@contextmanager
def reaped(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Whatever happens in the test, the child does not outlive it."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def spawn_example(
    url: str, prefix: str, stream: str, subject: str, log: Path
) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "examples" / "queue_worker.py"),
                "--nats",
                url,
                "--prefix",
                prefix,
                "--node",
                str(NODE),
                "--stream",
                stream,
                "--subject",
                subject,
                "--health-port",
                "0",
                "--interval",
                "0.2",
                "--max-age",
                "1",
                "--crash-after",
                "3",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=cli_env(),
            cwd=ROOT,
            start_new_session=True,
        )


async def health_url_from_log(log: Path, proc: subprocess.Popen[bytes]) -> str:
    def find() -> str | None:
        assert proc.poll() is None, log.read_text()
        m = _URL.search(log.read_text()) if log.exists() else None
        return m.group(1) if m else None

    url: str = await wait_for(find, timeout=20, what="health URL in the log")
    return url


async def get(url: str, limit: float = 1.0) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit)) as s:
        async with s.get(url) as r:
            return r.status, await r.json()


def beats(col: Collector) -> list[Heartbeat]:
    return [decode(Heartbeat, m.data, subject_node=NODE) for _, m in col.messages]


async def test_kill_9_silences_heartbeats_and_a_restart_is_a_new_boot(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, tmp_path: Path
) -> None:
    """kill -9: heartbeats stop; the restarted agent has a new boot, seq from 0, the same rev."""
    store = await ensure_fleet(nc.jetstream(), subjects)
    rev = await store.desired.put(NODE.key, json.dumps({"files": {"a": "1"}}).encode())
    hbs = await Collector.on(nc, subjects.hb(NODE))
    with reaped(
        start_agent(nats_server.url, subjects.prefix, tmp_path / "s", tmp_path / "a1.log")
    ) as first:
        await hbs.wait_count(3, timeout=20)
        hb = beats(hbs)[0]
        assert (hb.pid, hb.host, hb.seq, hb.rev) == (first.pid, socket.gethostname(), 0, rev)
        first.send_signal(signal.SIGKILL)
        first.wait(5)
    await nc.flush()
    count = len(hbs.messages)
    await asyncio.sleep(1.0)  # three intervals: silence is what we are checking
    assert len(hbs.messages) == count
    with reaped(
        start_agent(nats_server.url, subjects.prefix, tmp_path / "s", tmp_path / "a2.log")
    ) as second:
        await hbs.wait_count(count + 1, timeout=20)
        new = beats(hbs)[count]
        assert new.boot != hb.boot and new.seq == 0 and new.pid == second.pid
        assert new.rev == rev  # the applied revision survived in the state dir
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0


async def test_sigstop_means_no_heartbeats_and_no_health_answer(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, tmp_path: Path
) -> None:
    """A SIGSTOPped agent sends nothing and its registered health URL does not answer in time."""
    store = await ensure_fleet(nc.jetstream(), subjects)
    hbs = await Collector.on(nc, subjects.hb(NODE))
    with reaped(
        start_agent(
            nats_server.url, subjects.prefix, tmp_path / "s", tmp_path / "a.log", "--register"
        )
    ) as proc:

        async def registered() -> str | None:
            try:
                entry = decode_entry(NODE.key, (await store.nodes.get(NODE.key)).value)
            except Exception:
                return None
            return entry.health_url

        url: str = await wait_for(registered, timeout=20, what="inventory registration")
        await hbs.wait_count(2, timeout=20)
        assert (await get(url))[0] == 200
        proc.send_signal(signal.SIGSTOP)
        try:
            await nc.flush()
            count = len(hbs.messages)
            t0 = time.monotonic()
            try:
                await get(url, limit=1.0)
                answered = True
            except TimeoutError:
                answered = False
            assert not answered and time.monotonic() - t0 < 3
            assert len(hbs.messages) == count
        finally:
            proc.send_signal(signal.SIGCONT)
        await hbs.wait_count(count + 1, timeout=10)  # and it carries on once continued
        assert beats(hbs)[-1].seq > beats(hbs)[count - 1].seq


async def test_example_worker_dies_inside_a_live_process(
    nats_server: EmbeddedServer, nc: NATS, subjects: Subjects, tmp_path: Path
) -> None:
    """Example worker: jobs drain, /healthz has queue depth; once the worker dies: 503, silence."""
    stream = f"{subjects.prefix.upper()}_JOBS"
    subject = f"{subjects.prefix}.jobs"
    log = tmp_path / "worker.log"
    hbs = await Collector.on(nc, subjects.hb(NODE))
    proc = spawn_example(nats_server.url, subjects.prefix, stream, subject, log)
    with reaped(proc):
        url = await health_url_from_log(log, proc)
        await hbs.wait_count(2, timeout=20)
        status, body = await get(url)
        assert status == 200 and body["queue_depth"] == 0
        js = nc.jetstream()
        for i in range(5):
            await js.publish(subject, f"job {i}".encode())
        await wait_for(lambda: "worker died" in log.read_text(), timeout=10)
        died = time.monotonic()

        async def unhealthy() -> dict[str, Any] | None:
            status, body = await get(url)
            return body if status == 503 else None

        body = await wait_for(unhealthy, timeout=5, what="503 after the worker died")
        assert time.monotonic() - died < 1.0 + 1.5  # max-age plus slack
        assert body["work"] == 3 and body["queue_depth"] == 2  # the broker, asked now
        await nc.flush()
        count = len(hbs.messages)
        await asyncio.sleep(0.6)  # three heartbeat intervals
        assert len(hbs.messages) == count
        assert proc.poll() is None  # the process itself is alive: that is the point
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0


def test_sigterm_ends_an_agent_still_waiting_for_its_first_broker(tmp_path: Path) -> None:
    """With no broker yet the agent waits to connect, yet SIGTERM still ends it cleanly."""
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "a.log"
    with reaped(start_agent(f"nats://127.0.0.1:{port}", "tnobroker", tmp_path / "s", log)) as p:
        wait_for_sync(
            lambda: log.exists() and log.stat().st_size > 0,
            timeout=20,
            what="the agent trying to connect",
        )
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0
