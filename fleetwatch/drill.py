"""``fleetwatch drill``: kill -9 random live agents and prove each page lands inside its window.

A page is on time when the drill receives it in
``[last_heartbeat + window + pending - slack, last_heartbeat + window + pending + tolerance]``,
where ``last_heartbeat`` is when the drill itself last received the victim's heartbeat. The drill
refuses to start when the deadman cannot see (a blind deadman fails the drill with that reason
rather than blaming nodes) and reports any other page raised while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from rich.console import Console
from rich.table import Table

from fleetwatch.options import Parser, add_connection, duration, whole_number
from fleetwatch.view import request_status
from shared.bus import connect_once
from shared.codec import decode
from shared.errors import BrokerUnreachable, DecodeError
from shared.identity import NodeId
from shared.models import Alert, Heartbeat
from shared.subjects import Subjects

EARLY_SLACK = 0.25


@dataclass
class Victim:
    """One killed agent and what the drill saw of it."""

    node: str
    pid: int | None
    host: str | None
    boot: str | None
    last_hb: float | None = None
    killed_at: float | None = None
    paged_at: float | None = None
    alert_id: str | None = None
    severity: str | None = None
    expected_at: float | None = None
    verdict: str = "pending"
    restored: str | None = None
    resolved_at: float | None = None
    cmdline: list[str] = field(default_factory=list)
    cwd: str | None = None
    kill_error: str | None = None


def parser() -> Parser:
    p = Parser(prog="fleetwatch drill", description=__doc__.split("\n\n")[0] if __doc__ else "")
    add_connection(p)
    p.add_argument(
        "--kill",
        type=whole_number("count", lo=1),
        default=3,
        help="how many agents to kill (default 3)",
    )
    p.add_argument(
        "--kill-mode",
        choices=["auto", "local", "docker", "cmd"],
        default="auto",
        help="local: kill the pid; docker: docker kill the container named by the "
        "agent's host; cmd: run --kill-cmd (auto: cmd if --kill-cmd, else local)",
    )
    p.add_argument(
        "--kill-cmd",
        help="template, e.g. 'ssh {host} kill -9 {pid}' ({host} {pid} {site} {node} {boot})",
    )
    p.add_argument(
        "--restore",
        action="store_true",
        help="restart the victims afterwards and check each alert resolves",
    )
    p.add_argument("--restore-cmd", help="template to restart a victim in cmd mode")
    p.add_argument(
        "--tolerance",
        type=duration,
        default=1.0,
        help="how late past window+pending a page may land (default 1s)",
    )
    p.add_argument("--report", type=Path, help="write the results as JSON to this file")
    p.add_argument("--seed", type=int, help="seed for choosing victims (repeatable drills)")
    p.add_argument(
        "--node",
        dest="nodes",
        action="append",
        default=[],
        metavar="SITE/NODE",
        help="kill exactly these nodes instead of random ones (repeatable)",
    )
    return p


class DrillError(Exception):
    """The drill could not be run (as opposed to: it ran and a page was missed)."""


class Drill:
    def __init__(self, args: Any, nc: NATS) -> None:
        self.args = args
        self.nc = nc
        self.subjects = Subjects(args.prefix)
        self.last_hb: dict[str, tuple[float, Heartbeat]] = {}
        self.alerts: list[tuple[float, Alert]] = []
        self.victims: dict[str, Victim] = {}
        self.window = 0.0
        self.pending = 0.0
        self.console = Console(stderr=False, width=None if sys.stdout.isatty() else 140)

    async def on_hb(self, msg: Msg) -> None:
        try:
            node = self.subjects.node_of(msg.subject, "hb")
            hb = decode(Heartbeat, msg.data, subject_node=node)
        except (DecodeError, ValueError):
            return
        self.last_hb[str(node)] = (time.time(), hb)

    async def on_alert(self, msg: Msg) -> None:
        try:
            self.alerts.append((time.time(), decode(Alert, msg.data)))
        except DecodeError:
            pass

    def mode(self) -> str:
        if self.args.kill_mode != "auto":
            return str(self.args.kill_mode)
        return "cmd" if self.args.kill_cmd else "local"

    async def preflight(self) -> list[dict[str, Any]]:
        status = await request_status(self.nc, self.subjects, "deadman", timeout=3.0)
        if status is None:
            raise DrillError(
                f"no deadman answered on {self.subjects.service_status('deadman')}: "
                "is it running against this broker and prefix?"
            )
        if status.get("blind"):
            raise DrillError(
                "the deadman is blind (it cannot see the broker or its own ingest);"
                " a drill now would blame nodes for the monitor's fault"
            )
        self.window = float(status["window"])
        self.pending = float(status["pending"])
        nodes: list[dict[str, Any]] = [
            n
            for n in status.get("nodes", [])
            if n.get("state") == "up" and not n.get("maintenance")
        ]
        if self.mode() == "local":
            here = socket.gethostname()
            nodes = [n for n in nodes if n.get("pid") and n.get("host") in (None, here)]
        return nodes

    def choose(self, live: list[dict[str, Any]]) -> list[dict[str, Any]]:
        by_name = {f"{n['site']}/{n['node']}": n for n in live}
        if self.args.nodes:
            missing = [n for n in self.args.nodes if n not in by_name]
            if missing:
                raise DrillError(f"not live (or not killable from here): {', '.join(missing)}")
            return [by_name[n] for n in self.args.nodes]
        if len(live) < self.args.kill:
            raise DrillError(
                f"asked to kill {self.args.kill} agents but only {len(live)} are "
                "live and killable from here"
            )
        return random.Random(self.args.seed).sample(
            sorted(live, key=lambda n: (n["site"], n["node"])), self.args.kill
        )

    async def kill(self, v: Victim) -> None:
        mode = self.mode()
        site, node = v.node.split("/")
        if mode == "local":
            assert v.pid is not None
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{v.pid}/cmdline").read_bytes()  # noqa: ASYNC240 - procfs
                v.cmdline = [a.decode() for a in raw.split(b"\0")[:-1]]
                v.cwd = os.readlink(f"/proc/{v.pid}/cwd")
            try:
                os.kill(v.pid, signal.SIGKILL)
            except OSError as e:
                v.kill_error = f"kill -9 {v.pid}: {e}"
        else:
            if mode == "docker":
                cmd = ["docker", "kill", "--signal", "KILL", str(v.host)]
            else:
                text = str(self.args.kill_cmd).format(
                    host=v.host, pid=v.pid, site=site, node=node, boot=v.boot
                )
                cmd = shlex.split(text)
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                v.kill_error = f"{shlex.join(cmd)} exited {proc.returncode}: {out.decode()[-200:]}"
        v.killed_at = time.time()

    def page_for(self, v: Victim) -> tuple[float, Alert] | None:
        for at, a in self.alerts:
            if (
                a.kind in ("silent", "never_seen")
                and a.state == "firing"
                and f"{a.site}/{a.node}" == v.node
                and at >= (v.killed_at or 0) - 0.05
            ):
                return at, a
        return None

    async def run(self) -> int:
        s = self.subjects
        await self.nc.subscribe(s.hb_all, cb=self.on_hb)
        await self.nc.subscribe(s.alert_all, cb=self.on_alert)
        await self.nc.flush()
        live = await self.preflight()
        chosen = self.choose(live)
        for n in chosen:
            name = f"{n['site']}/{n['node']}"
            self.victims[name] = Victim(
                node=name, pid=n.get("pid"), host=n.get("host"), boot=n.get("boot")
            )
        # a fresh heartbeat from each victim first, so "last heartbeat" is one the drill saw
        t0 = time.time()
        hb_wait = max(5.0, self.window)
        while any(self.last_hb.get(n, (0.0,))[0] < t0 for n in self.victims):
            if time.time() - t0 > hb_wait:
                quiet = [n for n in self.victims if self.last_hb.get(n, (0.0,))[0] < t0]
                raise DrillError(f"no heartbeat within {hb_wait:.0f}s from {', '.join(quiet)}")
            await asyncio.sleep(0.02)
        self.console.print(
            f"drill: window {self.window:g}s + pending {self.pending:g}s; killing "
            f"{', '.join(self.victims)} ({self.mode()})"
        )
        await asyncio.gather(*(self.kill(v) for v in self.victims.values()))
        for v in self.victims.values():
            if v.kill_error:
                v.verdict = "kill failed"
        await self.await_pages()
        if self.args.restore:
            await self.restore()
        return self.finish()

    async def await_pages(self) -> None:
        budget = self.window + self.pending + self.args.tolerance + 3.0
        deadline = time.time() + budget
        while time.time() < deadline:
            open_ = [v for v in self.victims.values() if v.verdict == "pending"]
            for v in open_:
                v.last_hb = max(
                    (
                        at
                        for at, hb in [self.last_hb.get(v.node, (0.0, None))]
                        if hb is not None and hb.boot == v.boot
                    ),
                    default=v.last_hb,
                )
                hit = self.page_for(v)
                if hit is not None:
                    self.judge(v, *hit)
            if not any(v.verdict == "pending" for v in self.victims.values()):
                break
            await asyncio.sleep(0.02)
        for v in self.victims.values():
            if v.verdict == "pending":
                v.verdict = "missed"
                if v.last_hb is not None:
                    v.expected_at = v.last_hb + self.window + self.pending

    def judge(self, v: Victim, at: float, alert: Alert) -> None:
        v.paged_at, v.alert_id, v.severity = at, alert.id, alert.severity
        base = v.last_hb if v.last_hb is not None else (v.killed_at or at)
        v.expected_at = base + self.window + self.pending
        if at < v.expected_at - EARLY_SLACK:
            v.verdict = "early"
        elif at > v.expected_at + self.args.tolerance:
            v.verdict = "late"
        else:
            v.verdict = "on time"

    async def restore(self) -> None:
        for v in self.victims.values():
            v.restored = await self.restart(v)
        deadline = time.time() + self.window + self.pending + 15.0
        while time.time() < deadline:
            for v in self.victims.values():
                if v.resolved_at is None and v.alert_id:
                    for at, a in self.alerts:
                        if a.id == v.alert_id and a.state == "resolved":
                            v.resolved_at = at
            if all(v.resolved_at is not None or not v.alert_id for v in self.victims.values()):
                return
            await asyncio.sleep(0.05)

    async def restart(self, v: Victim) -> str:
        mode = self.mode()
        site, node = v.node.split("/")
        if mode == "local":
            with contextlib.suppress(Exception):
                reply = await self.nc.request(
                    self.subjects.service_request("up", "restart"),
                    json.dumps({"node": v.node}).encode(),
                    timeout=3,
                )
                if json.loads(reply.data).get("ok"):
                    return "restarted by fleetwatch up"
            if not v.cmdline:
                return "cannot restart: command line unknown"
            subprocess.Popen(  # noqa: ASYNC220 - detached on purpose, never awaited
                v.cmdline,
                cwd=v.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            return "restarted from its command line"
        if mode == "docker":
            cmd = ["docker", "start", str(v.host)]
        elif self.args.restore_cmd:
            cmd = shlex.split(
                str(self.args.restore_cmd).format(
                    host=v.host, pid=v.pid, site=site, node=node, boot=v.boot
                )
            )
        else:
            return "cannot restart: no --restore-cmd"
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        return "restarted" if await proc.wait() == 0 else f"{shlex.join(cmd)} failed"

    def unexpected(self) -> list[Alert]:
        """Pages during the drill that were not about a victim (site alerts of a victim's
        site and probe alerts of victims are consequences, not surprises)."""
        sites = {v.node.split("/")[0] for v in self.victims.values()}
        out = []
        for _, a in self.alerts:
            if a.state != "firing" or a.severity != "page":
                continue
            if a.node is not None and f"{a.site}/{a.node}" in self.victims:
                continue
            if a.kind == "site" and a.site in sites:
                continue
            out.append(a)
        return out

    def finish(self) -> int:
        table = Table(
            title="fleetwatch drill",
            caption=f"due = last heartbeat + window {self.window:g}s + pending {self.pending:g}s; "
            f"a page is on time from {EARLY_SLACK:g}s before due to "
            f"{self.args.tolerance:g}s after",
        )
        for col in ("node", "killed at", "last heartbeat", "due", "paged at", "late by", "verdict"):
            table.add_column(col)
        if self.args.restore:
            table.add_column("resolved")

        def t(x: float | None) -> str:
            return (
                "-"
                if x is None
                else time.strftime("%H:%M:%S", time.localtime(x)) + f".{int((x % 1) * 1000):03d}"
            )

        for v in self.victims.values():
            late_by = (
                "-"
                if v.paged_at is None or v.expected_at is None
                else f"{v.paged_at - v.expected_at:+.3f}s"
            )
            row = [
                v.node,
                t(v.killed_at),
                t(v.last_hb),
                t(v.expected_at),
                t(v.paged_at),
                late_by,
                v.verdict if not v.kill_error else f"kill failed: {v.kill_error}",
            ]
            if self.args.restore:
                row.append(t(v.resolved_at) if v.resolved_at else f"no ({v.restored})")
            table.add_row(*row)
        self.console.print(table)
        surprises = self.unexpected()
        for a in surprises:
            self.console.print(
                f"[red]unexpected page during the drill: {a.kind} "
                f"{a.site}/{a.node} {a.summary}[/red]"
            )
        ok = all(v.verdict == "on time" for v in self.victims.values()) and not surprises
        if self.args.restore:
            ok = ok and all(v.resolved_at is not None for v in self.victims.values())
        if self.args.report:
            report = {
                "ok": ok,
                "window": self.window,
                "pending": self.pending,
                "tolerance": self.args.tolerance,
                "victims": [
                    {k: val for k, val in asdict(v).items() if k not in ("cmdline", "cwd")}
                    for v in self.victims.values()
                ],
                "unexpected": [a.model_dump() for a in surprises],
            }
            self.args.report.write_text(json.dumps(report, indent=2))
        self.console.print("drill passed: every page landed in time" if ok else "drill FAILED")
        return 0 if ok else 1


async def _main(args: Any) -> int:
    nc = await connect_once(args.nats, name="fleetwatch-drill")
    try:
        return await Drill(args, nc).run()
    finally:
        await nc.close()


def main(argv: list[str]) -> int:
    """Run one drill; exit 0 only if every page landed in time."""
    args = parser().parse_args(argv)
    if args.kill_mode == "cmd" and not args.kill_cmd:
        parser().error("--kill-mode cmd needs --kill-cmd")
    for n in args.nodes:
        try:
            NodeId.parse(n)
        except ValueError as e:
            parser().error(f"--node: {e}")
    if args.nodes:
        args.kill = len(args.nodes)
    try:
        return asyncio.run(_main(args))
    except (DrillError, BrokerUnreachable) as e:
        print(f"fleetwatch drill: {e}", file=sys.stderr)
        return 1
