"""Deadman figures (issue 3) on this machine, against its own embedded nats-server on loopback.

    .venv/bin/python bench/deadman.py [--nodes 100000] [--rounds 4] [--silence 1000]
                                      [--sustain 60000] [--period 5]

Phases, each printed with the baseline it compares against in the same run:
1. bare: a nats-py subscriber with an empty callback (separate process) receives NODES*ROUNDS
   heartbeats blasted by a publisher process; its receive rate is the baseline.
2. ingest: the real deadman (``python -m services.deadman``) receives the same load; rate,
   ratio to the baseline, backlog after the publisher finished, losses. Then the same volume
   paced at SUSTAIN hb/s: the lag after the publisher finished shows whether it keeps up.
   (A flat-out blast puts the deadman behind: its canary queues behind the backlog and it says
   it is blind until it caught up; the silence phase starts after 2 s of clear sight.)
3. memory: resident memory of the deadman after tracking NODES nodes minus before, per node.
4. silence: the fleet keeps heartbeating every PERIOD; SILENCE nodes stop at once; page lateness
   after ``last_seen + window + pending`` (the alert's own last_seen), p50/p99; false pages.
5. restart: SIGTERM (final save), start again; time from spawn to a status reply with NODES nodes.
"""

# ruff: noqa: ASYNC110, ASYNC240  (a benchmark polls on purpose)
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
import nats  # noqa: E402

from shared.server import EmbeddedServer  # noqa: E402
from shared.subjects import Subjects  # noqa: E402

PREFIX = "bench"
WINDOW, PENDING = 10.0, 5.0


def node_key(i: int) -> tuple[str, str]:
    return f"s{i % 10}", f"n{i}"


# ---- roles run in child processes ------------------------------------------------------------
async def publisher(
    url: str,
    nodes: int,
    rounds: int,
    period: float,
    silence: int,
    silence_after: int,
    rate: float = 0.0,
) -> None:
    """Publish ``rounds`` heartbeats per node; 0 period = as fast as possible."""
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    subjects = [f"{PREFIX}.hb.{s}.{n}" for s, n in (node_key(i) for i in range(nodes))]
    boot = f"bench-{os.getpid()}"
    pack = msgpack.Packer(use_bin_type=True)
    start = time.monotonic()
    sent = 0
    for r in range(rounds):
        round_start = time.monotonic()
        first = silence if r >= silence_after else 0
        if r == silence_after and silence:
            print(json.dumps({"silenced_at": time.time()}), flush=True)
        ts = time.time()
        for i in range(first, nodes):
            s, n = node_key(i)
            await nc.publish(
                subjects[i],
                pack.pack({"v": 1, "site": s, "node": n, "boot": boot, "seq": r + 1, "ts": ts}),
            )
            sent += 1
            if sent % 2000 == 0:
                if rate:
                    ahead = round_start + (i - first) / rate - time.monotonic()
                    await asyncio.sleep(max(0.0, ahead))
                else:
                    await asyncio.sleep(0)
        await nc.flush()
        if period:
            left = period - (time.monotonic() - round_start)
            if left > 0:
                await asyncio.sleep(left)
    await nc.flush()
    print(
        json.dumps({"sent": sent, "seconds": time.monotonic() - start, "done": time.time()}),
        flush=True,
    )
    await nc.close()


async def bare(url: str) -> None:
    """An empty-callback subscriber; answers ``bench.count`` with how many it received."""
    nc = await nats.connect(url)
    count = 0

    async def cb(_msg: Any) -> None:
        nonlocal count
        count += 1

    async def ask(msg: Any) -> None:
        await msg.respond(json.dumps({"heartbeats": count}).encode())

    await nc.subscribe(f"{PREFIX}.hb.*.*", cb=cb)
    await nc.subscribe("bench.count", cb=ask)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


# ---- orchestration --------------------------------------------------------------------------
def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "ab") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def count_of(nc: Any, subject: str) -> dict[str, Any] | None:
    try:
        msg = await nc.request(subject, b'{"limit": 0}', timeout=2)
    except Exception:
        return None
    out: dict[str, Any] = json.loads(msg.data)
    return out


async def measure(
    nc: Any,
    subject: str,
    total: int,
    pub: subprocess.Popen[bytes],
) -> dict[str, float]:
    """Poll the receiver's count; rate from the 10 % and 90 % crossings."""
    marks: list[tuple[float, int]] = []
    last_change = time.monotonic()
    prev = -1
    pub_done: float | None = None
    first = await count_of(nc, subject)
    start = first["heartbeats"] if first else 0
    while True:
        st = await count_of(nc, subject)
        now = time.monotonic()
        n = st["heartbeats"] if st else prev
        marks.append((now, n))
        if pub_done is None and pub.poll() is not None:
            pub_done = now
        if n != prev:
            last_change = now
            prev = n
        if n - start >= total or (pub_done is not None and now - last_change > 3):
            break
        await asyncio.sleep(0.05)
    base = start
    lo, hi = base + 0.1 * (total), base + 0.9 * (total)
    t_lo = next(t for t, c in marks if c >= lo)
    t_hi = next((t for t, c in marks if c >= hi), marks[-1][0])
    c_hi = next((c for t, c in marks if t >= t_hi), marks[-1][1])
    c_lo = next(c for t, c in marks if t >= t_lo)
    rate = (c_hi - c_lo) / max(1e-9, t_hi - t_lo)
    done = next((t for t, c in marks if c >= prev), marks[-1][0])
    lag = max(0.0, done - (pub_done or done))
    return {"rate": rate, "received": prev - base, "lag": lag}


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fleetwatch-bench-"))
    server = EmbeddedServer(store_dir=tmp / "js").start()
    py = sys.executable
    me = str(Path(__file__).resolve())
    nodes, rounds = args.nodes, args.rounds
    total = nodes * rounds
    print(
        f"machine: {os.cpu_count()} cores; nodes {nodes}; {rounds} rounds = {total} heartbeats;"
        f" server {server.url}; logs {tmp}"
    )
    nc = await nats.connect(server.url)
    procs: list[subprocess.Popen[bytes]] = []

    def publish(
        rounds: int, period: float = 0.0, silence: int = 0, after: int = 0, rate: float = 0.0
    ) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [
                py,
                me,
                "--role",
                "publisher",
                "--url",
                server.url,
                "--nodes",
                str(nodes),
                "--rounds",
                str(rounds),
                "--period",
                str(period),
                "--silence",
                str(silence),
                "--silence-after",
                str(after),
                "--rate",
                str(rate),
            ],
            stdout=subprocess.PIPE,
            stderr=open(tmp / "pub.log", "ab"),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        procs.append(p)
        return p

    try:
        # 1. baseline
        b = spawn([py, me, "--role", "bare", "--url", server.url], tmp / "bare.log")
        procs.append(b)
        while await count_of(nc, "bench.count") is None:
            await asyncio.sleep(0.1)
        pub = publish(rounds)
        base = await measure(nc, "bench.count", total, pub)
        pub.wait()
        b.send_signal(signal.SIGTERM)
        b.wait()
        print(
            f"bare subscriber (baseline): {base['rate']:,.0f} hb/s, received "
            f"{base['received']:,}/{total:,}"
        )

        # 2. ingest
        status = Subjects(PREFIX).service_status("deadman")
        dm_args = [
            py,
            "-m",
            "services.deadman",
            "--nats",
            server.url,
            "--prefix",
            PREFIX,
            "--window",
            str(WINDOW),
            "--pending",
            str(PENDING),
            "--startup-grace",
            "20",
            "--metrics-port",
            "0",
            "--persist-every",
            "5",
            "--instance",
            "bench",
            "--log-level",
            "warning",
        ]
        dm = spawn(dm_args, tmp / "deadman.log")
        procs.append(dm)
        while await count_of(nc, status) is None:
            await asyncio.sleep(0.1)
        rss0 = rss(dm.pid)
        # one paced round first, so the memory figure is the tracker's, not a burst's buffers
        pop = publish(1, rate=args.populate_rate)
        await asyncio.get_running_loop().run_in_executor(None, pop.wait)
        while ((await count_of(nc, status)) or {}).get("heartbeats", 0) < nodes:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        rss1 = rss(dm.pid)
        pub = publish(rounds)
        got = await measure(nc, status, total, pub)
        pub.wait()
        ratio = got["rate"] / base["rate"]
        print(
            f"deadman ingest: {got['rate']:,.0f} hb/s = {ratio:.0%} of the bare subscriber; "
            f"received {got['received']:,}/{total:,}; lag after publisher done "
            f"{got['lag']:.2f}s  (goal >= 50,000 hb/s and >= 50%)"
        )

        # 2b. bounded lag at a sustained, paced rate
        pub = publish(rounds, rate=args.sustain)
        sus = await measure(nc, status, total, pub)
        pub.wait()
        print(
            f"deadman at a paced {args.sustain:,.0f} hb/s: received {sus['received']:,}/"
            f"{total:,}, {sus['rate']:,.0f} hb/s, lag after publisher done {sus['lag']:.2f}s"
        )

        # 3. memory
        st = await count_of(nc, status)
        tracked = st["total"] if st else 0
        print(
            f"memory: RSS {rss0 / 2**20:.1f} MiB -> {rss1 / 2**20:.1f} MiB for {tracked:,} "
            f"nodes = {(rss1 - rss0) / max(1, tracked):.0f} B/node  (goal <= 500)"
        )

        # a flat-out blast puts the deadman behind: its canary queues behind the backlog and it
        # declares itself blind (no judging) until it has caught up; wait for sight to return
        t_wait = time.monotonic()
        clear_since: float | None = None
        while clear_since is None or time.monotonic() - clear_since < 2.0:
            st = await count_of(nc, status)
            if st is not None and not st["blind"]:
                clear_since = clear_since or time.monotonic()
            else:
                clear_since = None
            await asyncio.sleep(0.1)
        print(f"sight: clear for 2s, {time.monotonic() - t_wait:.1f}s after the sustained phase")
        selfs: list[dict[str, Any]] = []

        async def on_self(msg: Any) -> None:
            selfs.append(msgpack.unpackb(msg.data))

        await nc.subscribe(f"{PREFIX}.alert.self.>", cb=on_self)

        # 4. silence SILENCE nodes at once while the rest keep heartbeating
        alerts: list[tuple[float, dict[str, Any]]] = []

        async def on_alert(msg: Any) -> None:
            alerts.append((time.time(), msgpack.unpackb(msg.data)))

        await nc.subscribe(f"{PREFIX}.alert.silent.>", cb=on_alert)
        steady_rounds = int((WINDOW + PENDING + 3) / args.period) + 2
        pub = publish(
            steady_rounds,
            period=args.period,
            silence=args.silence,
            after=1,
            rate=nodes / (0.8 * args.period),
        )  # a fleet beats spread over time
        await asyncio.get_running_loop().run_in_executor(None, pub.wait)
        deadline = time.time() + 3
        while time.time() < deadline and len(alerts) < args.silence:
            await asyncio.sleep(0.1)
        firing = [(at, a) for at, a in alerts if a["state"] == "firing"]
        silenced = {node_key(i)[1] for i in range(args.silence)}
        late = sorted(
            at - (a["last_seen"] + WINDOW + PENDING) for at, a in firing if a["node"] in silenced
        )
        judged = sorted(
            a["ts"] - (a["last_seen"] + WINDOW + PENDING)
            for _, a in firing
            if a["node"] in silenced
        )
        false_pages = sum(1 for _, a in firing if a["node"] not in silenced)
        if late:
            p99 = late[min(len(late) - 1, int(0.99 * len(late)))]
            print(
                f"silence: {len(late)}/{args.silence} paged; lateness after last_seen+window+"
                f"pending p50 {statistics.median(late) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms,"
                f" max {late[-1] * 1000:.0f} ms; false pages {false_pages}  (goal p99 <= 250"
                f" ms; fleet heartbeating every {args.period}s meanwhile)"
            )
            print(
                f"  of which judging (alert ts - due): p50 {statistics.median(judged) * 1000:.0f}"
                f" ms, max {judged[-1] * 1000:.0f} ms; the rest is queue + JetStream publish"
            )
        else:
            print(f"silence: no page arrived (alerts seen: {len(alerts)})")
        print(f"  self alerts during the silence phase: {len(selfs)}")

        # 5. restart
        dm.send_signal(signal.SIGTERM)
        dm.wait(30)
        t0 = time.monotonic()
        dm = spawn(dm_args, tmp / "deadman.log")
        procs.append(dm)
        while True:
            st = await count_of(nc, status)
            if st is not None and st["total"] >= nodes:
                break
            await asyncio.sleep(0.05)
        print(
            f"restart-to-ready: {time.monotonic() - t0:.2f}s from spawn to a status reply with"
            f" {st['total']:,} restored nodes (includes interpreter start)  (goal <= 5 s)"
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        await nc.close()
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--role", default="main", choices=["main", "publisher", "bare"])
    ap.add_argument("--url", default="")
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--period", type=float, default=5.0)
    ap.add_argument("--silence", type=int, default=1000)
    ap.add_argument("--silence-after", type=int, default=1)
    ap.add_argument("--rate", type=float, default=0.0, help="publisher pace (0 = flat out)")
    ap.add_argument("--populate-rate", type=float, default=30_000.0)
    ap.add_argument("--sustain", type=float, default=60_000.0, help="paced rate for the lag")
    args = ap.parse_args()
    from shared.runtime import run as runner  # uvloop when available, like the services

    if args.role == "publisher":
        runner(
            publisher(
                args.url,
                args.nodes,
                args.rounds,
                args.period,
                args.silence,
                args.silence_after,
                args.rate,
            )
        )
    elif args.role == "bare":
        runner(bare(args.url))
    else:
        runner(run(args))


if __name__ == "__main__":
    main()
