"""Benchmark: CPU seconds per probe of ``fleetwatch prober`` against 1,000 local targets, beside
Prometheus's blackbox exporter and a plain aiohttp loop probing the same targets at the same rate.

    .venv/bin/python bench/prober.py [--targets 1000] [--interval 5] [--seconds 15] [--rounds 3]

Everything runs on 127.0.0.1. The targets are one separate process (8 ports, an agent-like JSON
body with ``ts`` computed per request). Each contender runs alone in its own process for
``--seconds`` after one interval of warm-up; its CPU is read from /proc (user + system). The
exporter is installed with apt-get if missing (``--no-install`` to skip); it is driven through its
``/probe`` endpoint by this script (whose own CPU is not counted), like Prometheus would scrape it.
Printed: probes/s, CPU ms per probe, and our CPU per probe as a ratio of each baseline (medians
over ``--rounds``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TICK = os.sysconf("SC_CLK_TCK")
EXPORTER = "prometheus-blackbox-exporter"


# ---- helpers run in child processes --------------------------------------------------------


def serve_targets(n_ports: int) -> None:
    """Child: answer every GET with a fresh agent-like JSON body, then close."""
    import uvloop

    class Health(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if b"\r\n\r\n" in self.buf:
                now = time.time()
                body = b'{"ok":true,"ts":%.6f,"node":"b/n","last_cycle":%.6f,"age":0.1,"rev":1}' % (
                    now,
                    now - 0.1,
                )
                head = (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
                )
                self.t.write(head + body)  # type: ignore[attr-defined]
                self.t.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ports = []
        for _ in range(n_ports):
            srv = await loop.create_server(Health, "127.0.0.1", 0, backlog=4096)
            ports.append(srv.sockets[0].getsockname()[1])
        print(json.dumps(ports), flush=True)
        await asyncio.Event().wait()

    uvloop.run(main())


def plain_loop(urls_file: str, interval: float, count_file: str) -> None:
    """Child: the simplest honest prober, aiohttp with a new connection per probe, no verdicts."""
    import aiohttp
    import uvloop

    urls = json.loads(Path(urls_file).read_text())
    done = 0

    async def one(session: aiohttp.ClientSession, url: str, offset: float) -> None:
        nonlocal done
        await asyncio.sleep(offset)
        while True:
            start = time.monotonic()
            try:
                async with asyncio.timeout(2):
                    async with session.get(url, allow_redirects=False) as resp:
                        await resp.read()
            except Exception:
                pass
            done += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - start)))

    async def report() -> None:
        while True:
            tmp = count_file + ".tmp"
            Path(tmp).write_text(str(done))  # noqa: ASYNC240 - a few bytes on tmpfs
            os.replace(tmp, count_file)
            await asyncio.sleep(0.1)

    async def main() -> None:
        conn = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            tasks = [
                asyncio.create_task(one(session, u, i * interval / len(urls)))
                for i, u in enumerate(urls)
            ]
            tasks.append(asyncio.create_task(report()))
            await asyncio.gather(*tasks)

    uvloop.run(main())


# ---- measurement ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (and its reaped children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_exporter(install: bool) -> tuple[str | None, str]:
    """The exporter binary, installing the Debian package if allowed; else (None, why)."""
    found = shutil.which(EXPORTER) or (
        f"/usr/bin/{EXPORTER}" if Path(f"/usr/bin/{EXPORTER}").exists() else None
    )
    if found:
        return found, "already installed"
    if not install:
        return None, "not installed and --no-install given"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", EXPORTER]
    if os.geteuid() != 0 and shutil.which("sudo"):
        cmd = ["sudo", "-n", *cmd]
    for attempt in (1, 2):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode == 0:
            break
        if attempt == 1:
            subprocess.run(
                [*cmd[: cmd.index("apt-get") + 1], "update"],
                env=env,
                capture_output=True,
                text=True,
            )
    else:
        return None, f"apt-get install failed: {r.stderr.strip().splitlines()[-1:]}"
    # the package may start its own service on :9115; we run our own instance on loopback
    found = shutil.which(EXPORTER) or f"/usr/bin/{EXPORTER}"
    return (found, "installed now with apt-get") if Path(found).exists() else (None, "no binary")


async def metric_total(url: str, name: str) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as s, s.get(url) as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def measure(pid: int, count: object, warmup: float, seconds: float) -> tuple[float, float]:
    """(probes per second, CPU seconds per probe) of ``pid`` over a window after warm-up."""
    await asyncio.sleep(warmup)
    c0, p0, t0 = cpu_seconds(pid), await _count(count), time.monotonic()
    await asyncio.sleep(seconds)
    c1, p1, t1 = cpu_seconds(pid), await _count(count), time.monotonic()
    probes = p1 - p0
    return probes / (t1 - t0), (c1 - c0) / max(probes, 1)


async def _count(count: object) -> float:
    r = count()  # type: ignore[operator]
    return float(await r) if asyncio.iscoroutine(r) else float(r)


async def run_prober(
    urls: list[str], args: argparse.Namespace, nats_url: str
) -> tuple[float, float]:
    import nats

    from shared.subjects import Subjects

    log = open(Path(args.tmp) / "prober.log", "ab")  # noqa: ASYNC230
    cmd = [
        sys.executable,
        "-m",
        "services.prober",
        "--nats",
        nats_url,
        "--prefix",
        "bench",
        "--interval",
        str(args.interval),
        "--timeout",
        str(min(2.0, args.interval * 0.8)),
        "--max-age",
        "30",
        "--metrics-port",
        "0",
        "--instance",
        "bench",
        "--log-level",
        "warning",
    ]
    for i, u in enumerate(urls):
        cmd += ["--target", f"b/n{i}={u}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(  # noqa: ASYNC220 - starting a process does not block
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
    )
    nc = await nats.connect(nats_url)
    try:
        status: dict[str, object] = {}
        for _ in range(100):
            try:
                msg = await nc.request(Subjects("bench").service_status("prober"), b"", timeout=1)
                status = json.loads(msg.data)
                break
            except Exception:
                await asyncio.sleep(0.2)
        if "metrics_url" not in status:
            raise RuntimeError(
                "prober did not answer status: "
                + (Path(args.tmp) / "prober.log").read_text()[-2000:]
            )
        metrics_url = str(status["metrics_url"])
        verdicts: dict[str, float] = {}

        async def count() -> float:
            return await metric_total(metrics_url, "fleetwatch_prober_verdicts_total")

        rate, cpu = await measure(proc.pid, count, args.interval + 1, args.seconds)
        import aiohttp

        async with aiohttp.ClientSession() as s, s.get(metrics_url) as r:
            for line in (await r.text()).splitlines():
                if line.startswith("fleetwatch_prober_verdicts_total{"):
                    verdicts[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
        print(f"    prober verdicts so far: {verdicts}")
        return rate, cpu
    finally:
        await nc.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()


async def run_exporter(
    binary: str, urls: list[str], args: argparse.Namespace
) -> tuple[float, float]:
    import aiohttp

    cfg = Path(args.tmp) / "blackbox.yml"
    cfg.write_text(
        "modules:\n  fw:\n    prober: http\n    timeout: 2s\n    http:\n"
        "      method: GET\n      valid_status_codes: [200]\n      no_follow_redirects: true\n"
        "      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n"
        "      fail_if_body_not_matches_regexp: ['\"ts\":']\n"
    )
    port = free_port()
    log = open(Path(args.tmp) / "blackbox.log", "ab")  # noqa: ASYNC230
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived server, not awaited
        [
            binary,
            f"--config.file={cfg}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    done = ok = 0
    base = f"http://127.0.0.1:{port}/probe"
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as s:
            for _ in range(100):
                try:
                    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)

            async def one(url: str, offset: float) -> None:
                nonlocal done, ok
                await asyncio.sleep(offset)
                while True:
                    start = time.monotonic()
                    try:
                        async with s.get(base, params={"module": "fw", "target": url}) as r:
                            text = await r.text()
                        ok += "\nprobe_success 1" in text
                    except aiohttp.ClientError:
                        pass
                    done += 1
                    await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - start)))

            tasks = [
                asyncio.create_task(one(u, i * args.interval / len(urls)))
                for i, u in enumerate(urls)
            ]
            try:
                result = await measure(proc.pid, lambda: done, args.interval + 1, args.seconds)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        print(f"    exporter probes: {done}, probe_success 1: {ok}")
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()


async def run_plain(urls: list[str], args: argparse.Namespace) -> tuple[float, float]:
    urls_file = Path(args.tmp) / "urls.json"
    urls_file.write_text(json.dumps(urls))
    count_file = Path(args.tmp) / "plain.count"
    count_file.write_text("0")
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived server, not awaited
        [
            sys.executable,
            __file__,
            "--_plain",
            str(urls_file),
            str(args.interval),
            str(count_file),
        ],
        cwd=ROOT,
    )
    try:
        return await measure(
            proc.pid, lambda: float(count_file.read_text() or 0), args.interval + 1, args.seconds
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def show(name: str, row: tuple[float, float]) -> None:
    print(f"  {name:<14}{row[0]:7.1f} probes/s  {row[1] * 1e3:.3f} ms CPU/probe", flush=True)


async def bench(args: argparse.Namespace) -> int:
    from shared.server import EmbeddedServer

    binary, why = ensure_exporter(not args.no_install)
    print(f"blackbox exporter: {binary or 'UNAVAILABLE'} ({why})")
    targets = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, __file__, "--_serve", "8"], stdout=subprocess.PIPE
    )
    assert targets.stdout is not None
    ports = json.loads(targets.stdout.readline())
    urls = [f"http://127.0.0.1:{ports[i % len(ports)]}/healthz/{i}" for i in range(args.targets)]
    server = EmbeddedServer(store_dir=Path(args.tmp) / "js").start()
    rows: dict[str, list[tuple[float, float]]] = {"prober": [], "plain aiohttp": [], "exporter": []}
    try:
        print(
            f"{args.targets} targets, interval {args.interval}s "
            f"(offered {args.targets / args.interval:.0f} probes/s), window {args.seconds}s, "
            f"{args.rounds} round(s), {os.cpu_count()} CPUs"
        )
        for r in range(args.rounds):
            print(f"round {r + 1}")
            rows["prober"].append(await run_prober(urls, args, server.url))
            show("prober", rows["prober"][-1])
            rows["plain aiohttp"].append(await run_plain(urls, args))
            show("plain aiohttp", rows["plain aiohttp"][-1])
            if binary:
                rows["exporter"].append(await run_exporter(binary, urls, args))
                show("exporter", rows["exporter"][-1])
    finally:
        server.stop()
        targets.kill()
        targets.wait()
    med = {
        k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        for k, v in rows.items()
        if v
    }
    print("\nmedians over rounds")
    for k, row in med.items():
        show(k, row)
    ours = med["prober"][1]
    print(f"  prober / plain aiohttp CPU per probe: {ours / med['plain aiohttp'][1]:.2f}")
    if "exporter" in med:
        print(
            f"  prober / blackbox exporter CPU per probe: {ours / med['exporter'][1]:.2f}"
            f"   (goal <= 0.5)"
        )
        print(
            f"  plain aiohttp / blackbox exporter: "
            f"{med['plain aiohttp'][1] / med['exporter'][1]:.2f}"
        )
    else:
        print("  blackbox exporter unavailable: compared with the plain aiohttp loop only")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_serve":
        serve_targets(int(sys.argv[2]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--_plain":
        plain_loop(sys.argv[2], float(sys.argv[3]), sys.argv[4])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-install", action="store_true", help="do not apt-get the exporter")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="fw-bench-") as tmp:
        args.tmp = tmp
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(bench(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
