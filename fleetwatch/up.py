"""``fleetwatch up``: the whole fleet on this machine.

Embedded nats-server, the deadman, the prober and N agents, each a real process on loopback, and a
live table. One ``up`` at a time per run directory (a lock file says who holds it). Ctrl-C or
SIGTERM stops everything in order: the judges first (deadman, prober) so nobody pages for agents
that are being stopped on purpose, then the agents, then the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.live import Live

from fleetwatch.options import Parser, whole_number
from fleetwatch.procs import (
    Child,
    die_with_parent,
    fleetwatch_argv,
    free_ports,
    port_in_use,
    stop_all,
)
from fleetwatch.view import render, snapshot
from shared.bootstrap import ensure_fleet
from shared.bus import connect
from shared.codec import decode, encode_document
from shared.errors import BrokerUnreachable, DecodeError, ServerBinaryMissing
from shared.identity import NodeId
from shared.inventory import InventoryEntry, decode_entry
from shared.models import Alert, ReconcileReport
from shared.runtime import run, stop_on_signals
from shared.server import EmbeddedServer
from shared.subjects import DEFAULT_PREFIX, Subjects

log = logging.getLogger("fleetwatch.up")
SITE = "local"
MANAGED = "fleetwatch-up"


@dataclass(frozen=True)
class Timings:
    """Intervals for one run: the demo's (``--fast``) or DESIGN.md's defaults."""

    agent_interval: float
    window: float
    pending: float
    probe_interval: float
    max_age: float
    probe_timeout: float

    @classmethod
    def pick(cls, fast: bool) -> Timings:
        if fast:
            return cls(
                agent_interval=1,
                window=3,
                pending=2,
                probe_interval=1,
                max_age=3,
                probe_timeout=0.8,
            )
        return cls(
            agent_interval=30,
            window=90,
            pending=120,
            probe_interval=30,
            max_age=30,
            probe_timeout=5,
        )


def default_run_dir() -> Path:
    return Path(platformdirs.user_data_dir("fleetwatch")) / "up"


def parser() -> Parser:
    p = Parser(prog="fleetwatch up", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument(
        "--agents",
        type=whole_number("number of agents", lo=1, hi=200),
        default=5,
        help="number of local agents (default 5)",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="demo timings: agent 1s, window 3s, pending 2s, probe 1s",
    )
    p.add_argument(
        "--nats-port",
        type=whole_number("port", lo=1, hi=65535),
        default=4222,
        help="broker port (default 4222)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help=f"state, logs and lock (default {default_run_dir()})",
    )
    p.add_argument("--no-view", action="store_true", help="log lines instead of the live table")
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="subject prefix (default fleet)")
    return p


class AlreadyRunning(Exception):
    """Another ``up`` holds the lock of this run directory."""


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Any:
    """Hold ``up.lock`` for the life of this ``up``; say who holds it if taken."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "up.lock"
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        info = read_state(run_dir)
        who = f"pid {info.get('pid')}, NATS at {info.get('nats')}" if info else "see up.json"
        raise AlreadyRunning(
            f"fleetwatch up is already running from {run_dir} ({who}); stop it first "
            "(Ctrl-C in its terminal) or use another --run-dir and --nats-port"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def read_state(run_dir: Path) -> dict[str, Any]:
    """The running ``up``'s published facts (URL, pids), or {}."""
    try:
        obj = json.loads((run_dir / "up.json").read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


class Stack:
    """The processes of one ``up`` and what the live view needs."""

    def __init__(self, args: Any, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.timings = Timings.pick(args.fast)
        self.subjects = Subjects(args.prefix)
        self.server: EmbeddedServer | None = None
        self.judges: list[Child] = []
        self.agents: dict[str, Child] = {}
        self.judge_ports: list[int] = []
        self.reports: dict[str, ReconcileReport] = {}
        self.alerts: list[Alert] = []
        self.console = Console(stderr=False, width=None if sys.stdout.isatty() else 140)

    # ---- start --------------------------------------------------------------------------

    def start_server(self) -> EmbeddedServer:
        if port_in_use(self.args.nats_port):
            raise RuntimeError(
                f"port {self.args.nats_port} is already in use (another broker?); "
                "pick another with --nats-port"
            )
        server = EmbeddedServer(
            store_dir=self.run_dir / "jetstream",
            port=self.args.nats_port,
            log_file=self.run_dir / "logs" / "nats-server.log",
            monitor_port=None,
            preexec_fn=die_with_parent,
        )
        server.start()
        self.server = server
        return server

    def _child(self, name: str, *args: str) -> Child:
        return Child(
            name=name,
            argv=fleetwatch_argv(*args),
            log=self.run_dir / "logs" / f"{name}.log",
            env=_child_env(),
        )

    async def register(self, nc: NATS) -> list[tuple[NodeId, int]]:
        """Put this run's agents in the inventory, drop agents of a larger earlier run."""
        store = await ensure_fleet(nc.jetstream(timeout=5), self.subjects)
        wanted: list[tuple[NodeId, int]] = []
        ports = free_ports(self.args.agents + 2)
        self.judge_ports = ports[-2:]
        for i, port in zip(range(1, self.args.agents + 1), ports, strict=False):
            node = NodeId(SITE, f"agent-{i}")
            entry = InventoryEntry(
                site=node.site,
                node=node.node,
                health_url=f"http://127.0.0.1:{port}/healthz",
                labels={"managed-by": MANAGED},
                added=time.time(),
            )
            await store.nodes.put(node.key, entry.encode())
            try:
                await store.desired.get(node.key)
            except NotFoundError:
                doc = {"image": "demo:v1", "files": {"motd.txt": f"hello from {node}\n"}}
                await store.desired.put(node.key, encode_document(doc))
            wanted.append((node, port))
        keep = {n.key for n, _ in wanted}
        with contextlib.suppress(Exception):
            for key in await store.nodes.keys():
                if key in keep:
                    continue
                with contextlib.suppress(Exception):
                    e = decode_entry(key, (await store.nodes.get(key)).value)
                    if e.labels.get("managed-by") == MANAGED:
                        await store.nodes.delete(key)
        return wanted

    async def start_services(self, url: str, wanted: list[tuple[NodeId, int]]) -> None:
        """Agents first, and the judges once the agents listen, so nothing is judged (or
        called blind) for the second it takes a process to start."""
        t = self.timings
        conn = ["--nats", url, "--prefix", self.subjects.prefix]
        for node, port in wanted:
            c = self._child(
                node.node,
                "agent",
                *conn,
                "--node",
                str(node),
                "--interval",
                str(t.agent_interval),
                "--health-port",
                str(port),
                "--state-dir",
                str(self.run_dir / "agents" / node.node),
            )
            c.start()
            self.agents[str(node)] = c
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(port_in_use(p) for _, p in wanted):  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # polling other processes' ports: no event to wait on
        dm_port, pr_port = self.judge_ports
        self.judges = [
            self._child(
                "deadman",
                "deadman",
                *conn,
                "--window",
                str(t.window),
                "--pending",
                str(t.pending),
                "--metrics-port",
                str(dm_port),
                "--instance",
                "up",
            ),
            self._child(
                "prober",
                "prober",
                *conn,
                "--interval",
                str(t.probe_interval),
                "--max-age",
                str(t.max_age),
                "--timeout",
                str(t.probe_timeout),
                "--metrics-port",
                str(pr_port),
                "--instance",
                "up",
            ),
        ]
        for c in self.judges:
            c.start()

    def write_state(self, url: str) -> None:
        state = {
            "pid": os.getpid(),
            "nats": url,
            "prefix": self.subjects.prefix,
            "started": time.time(),
            "timings": self.timings.__dict__,
            "children": {c.name: c.pid for c in [*self.judges, *self.agents.values()]},
        }
        # atomic: a reader (drill, tests, a second `up`) never sees a half-written file
        tmp = self.run_dir / "up.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.run_dir / "up.json")

    # ---- run ----------------------------------------------------------------------------

    async def on_reconcile(self, msg: Msg) -> None:
        try:
            node = self.subjects.node_of(msg.subject, "reconcile")
            self.reports[str(node)] = decode(ReconcileReport, msg.data, subject_node=node)
        except (DecodeError, ValueError):
            pass

    async def on_alert(self, msg: Msg) -> None:
        try:
            self.alerts.append(decode(Alert, msg.data))
        except DecodeError:
            return
        del self.alerts[:-50]

    async def on_restart(self, msg: Msg) -> None:
        """``drill --restore`` asks ``up`` to start a killed agent again, with the same argv."""
        try:
            name = str(NodeId.parse(json.loads(msg.data)["node"]))
            child = self.agents[name]
        except (ValueError, KeyError, TypeError):
            await msg.respond(json.dumps({"ok": False, "error": "unknown node"}).encode())
            return
        if child.alive():
            await msg.respond(json.dumps({"ok": True, "pid": child.pid, "was": "running"}).encode())
            return
        child.start()
        child.restarts += 1
        if self.server is not None:
            self.write_state(self.server.url)
        await msg.respond(json.dumps({"ok": True, "pid": child.pid, "was": "dead"}).encode())

    def supervise(self) -> None:
        """Restart a judge that crashed (their restart contract covers it); agents stay dead
        on purpose: a dead agent is what the drill and the deadman are for."""
        for c in self.judges:
            if not c.alive() and not c.expected_dead:
                log.warning(
                    "%s exited (%s); restarting it", c.name, c.proc.returncode if c.proc else "?"
                )
                c.start()
                c.restarts += 1

    def stop(self) -> None:
        stop_all(self.judges)
        stop_all(list(self.agents.values()))
        if self.server is not None:
            self.server.stop()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _run(stack: Stack) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    server = await asyncio.to_thread(stack.start_server)
    nc = await connect(server.url, name="fleetwatch-up", ping_interval=2)
    try:
        wanted = await stack.register(nc)
        await stack.start_services(server.url, wanted)
        stack.write_state(server.url)
        s = stack.subjects
        await nc.subscribe(s.reconcile_all, cb=stack.on_reconcile)
        await nc.subscribe(s.alert_all, cb=stack.on_alert)
        await nc.subscribe(s.service_request("up", "restart"), cb=stack.on_restart)
        print(
            f"fleetwatch up: NATS at {server.url}; {len(wanted)} agents; logs in "
            f"{stack.run_dir / 'logs'}; Ctrl-C stops everything",
            flush=True,
        )
        if stack.args.no_view:
            await _plain(stack, nc, stop)
        else:
            await _live(stack, nc, stop)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
        await asyncio.to_thread(stack.stop)
        with contextlib.suppress(OSError):
            (stack.run_dir / "up.json").unlink()
    print("fleetwatch up: stopped", flush=True)
    return 0


async def _live(stack: Stack, nc: NATS, stop: asyncio.Event) -> None:
    timing = " (fast demo timings)" if stack.args.fast else ""
    title = f"fleetwatch - {stack.args.agents} agents{timing}"
    with Live(console=stack.console, refresh_per_second=4, screen=False) as live:
        while not stop.is_set():
            stack.supervise()
            snap = await snapshot(nc, stack.subjects, stack.reports)
            live.update(render(snap, stack.alerts, title=title))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def _plain(stack: Stack, nc: NATS, stop: asyncio.Event) -> None:
    last = ""
    while not stop.is_set():
        stack.supervise()
        snap = await snapshot(nc, stack.subjects, stack.reports)
        line = f"{sum(r.green for r in snap.rows)}/{len(snap.rows)} green; " + ", ".join(
            f"{r.node}={r.state}/{r.verdict or '-'}" for r in snap.rows
        )
        if line != last:
            print(time.strftime("%H:%M:%S"), line, flush=True)
            last = line
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


def main(argv: list[str]) -> int:
    """Run the stack until Ctrl-C or SIGTERM."""
    args = parser().parse_args(argv)
    run_dir = args.run_dir or default_run_dir()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        with run_lock(run_dir):
            stack = Stack(args, run_dir)
            try:
                return run(_run(stack))
            except (RuntimeError, TimeoutError, ServerBinaryMissing, BrokerUnreachable) as e:
                stack.stop()
                print(f"fleetwatch up: {e}", file=sys.stderr)
                return 1
    except AlreadyRunning as e:
        print(f"fleetwatch up: {e}", file=sys.stderr)
        return 1
