"""The fleet table: gathered from the services' own state (their status replies), never from a
cache of the CLI, and rendered for people (rich) or machines (JSON)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from rich.console import Group
from rich.table import Table
from rich.text import Text

from shared.codec import decode
from shared.durations import format_duration
from shared.models import Alert, ReconcileReport
from shared.subjects import Subjects

STATE_STYLE = {
    "up": "bold green",
    "late": "bold yellow",
    "down": "bold red",
    "never_seen": "bold red",
    "maintenance": "bold blue",
    "removed": "dim",
    "unjudged": "yellow",
    "waiting": "cyan",
}


async def request_status(
    nc: NATS, subjects: Subjects, service: str, *, timeout: float = 1.0
) -> dict[str, Any] | None:
    """A service's status reply, or None when no instance answered in time."""
    try:
        msg = await nc.request(subjects.service_status(service), b"{}", timeout=timeout)
    except Exception:
        return None
    try:
        obj = json.loads(msg.data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


@dataclass
class NodeRow:
    """One node as the services see it right now."""

    node: str
    state: str = "unknown"
    registered: bool = True
    last_seen: float | None = None
    hb_age: float | None = None
    verdict: str | None = None
    probe_age: float | None = None
    probe_detail: str = ""
    rev: int | None = None
    drift: list[str] = field(default_factory=list)
    outcome: str | None = None
    alert_id: str | None = None
    pid: int | None = None
    host: str | None = None

    @property
    def green(self) -> bool:
        """Heard from in time, answering fresh, and (where known) applying its desired state."""
        return (
            self.state == "up"
            and self.verdict in (None, "fresh")
            and self.outcome not in ("apply_failed", "unknown_desired", "stale_revision")
        )


@dataclass
class Snapshot:
    """Everything the table shows, at one instant."""

    at: float
    deadman: dict[str, Any] | None
    prober: dict[str, Any] | None
    rows: list[NodeRow]

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "deadman": None
            if self.deadman is None
            else {k: v for k, v in self.deadman.items() if k != "nodes"},
            "prober": None
            if self.prober is None
            else {k: v for k, v in self.prober.items() if k != "targets"},
            "nodes": [asdict(r) | {"green": r.green} for r in self.rows],
        }


async def snapshot(
    nc: NATS, subjects: Subjects, reports: dict[str, ReconcileReport] | None = None
) -> Snapshot:
    """Ask the deadman and the prober for their view and merge it per node."""
    deadman, prober = await asyncio.gather(
        request_status(nc, subjects, "deadman"), request_status(nc, subjects, "prober")
    )
    now = time.time()
    rows: dict[str, NodeRow] = {}
    for n in (deadman or {}).get("nodes", []):
        name = f"{n.get('site')}/{n.get('node')}"
        row = rows.setdefault(name, NodeRow(node=name))
        row.state = str(n.get("state", "unknown"))
        if n.get("maintenance"):
            row.state = "maintenance"
        elif row.state == "never_seen" and not n.get("alert_id"):
            row.state = "waiting"  # expected, not heard from yet, still inside its grace
        row.registered = bool(n.get("registered", True))
        row.last_seen = n.get("last_seen")
        row.hb_age = None if row.last_seen is None else max(0.0, now - float(row.last_seen))
        row.rev = n.get("rev")
        row.alert_id = n.get("alert_id")
        row.pid = n.get("pid")
        row.host = n.get("host")
    for t in (prober or {}).get("targets", []):
        name = f"{t.get('site')}/{t.get('node')}"
        row = rows.setdefault(name, NodeRow(node=name, state="unknown"))
        row.verdict = t.get("verdict")
        row.probe_age = t.get("age")
        row.probe_detail = str(t.get("detail") or "")
        if t.get("alert_id") and not row.alert_id:
            row.alert_id = t.get("alert_id")
    for name, rep in (reports or {}).items():
        seen = rows.get(name)
        if seen is None:
            continue  # a report alone (e.g. from a finished simulation) is no watched node
        seen.drift = list(rep.drift)
        seen.outcome = rep.outcome
        if rep.applied_rev is not None:
            seen.rev = rep.applied_rev
    return Snapshot(
        at=now, deadman=deadman, prober=prober, rows=sorted(rows.values(), key=lambda r: r.node)
    )


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(seconds)


def why(row: NodeRow) -> str:
    """One phrase saying why a row has its colour."""
    if row.state == "unjudged":
        return "expected (inventory), but no deadman is answering to judge it"
    if row.state == "waiting":
        return "expected; no heartbeat yet, still inside the startup grace"
    if row.state in ("down", "never_seen"):
        what = "never heard from" if row.state == "never_seen" else f"silent {_age(row.hb_age)}"
        return f"{what}; paged" if row.alert_id else what
    if row.state == "late":
        return f"silent {_age(row.hb_age)}, past the window"
    if row.verdict not in (None, "fresh"):
        return f"probe says {row.verdict}: {row.probe_detail}"[:70]
    if row.outcome in ("apply_failed", "read_error", "unknown_desired"):
        return f"reconcile: {row.outcome}"
    if row.state == "up":
        return (
            "heartbeat after real work; answer fresh"
            if row.verdict == "fresh"
            else "heartbeat after real work"
        )
    return ""


def render(snap: Snapshot, alerts: list[Alert], *, title: str = "fleetwatch") -> Group:
    """The live view: a row per node, then the latest alerts."""
    table = Table(title=title, expand=True)
    for col in ("node", "state", "last hb", "probe", "rev", "drift", "why"):
        table.add_column(col, no_wrap=col != "why")
    for r in snap.rows:
        style = STATE_STYLE.get(r.state, "")
        verdict = Text(
            r.verdict or "-",
            style="green" if r.verdict == "fresh" else ("red" if r.verdict else ""),
        )
        drift = ", ".join(r.drift) if r.drift else ("none" if r.outcome else "-")
        table.add_row(
            Text(r.node + ("" if r.registered else " (unregistered)")),
            Text(r.state, style=style),
            _age(r.hb_age),
            verdict,
            "-" if r.rev is None else str(r.rev),
            drift[:30],
            why(r),
        )
    if not snap.rows:
        table.add_row("(no nodes yet)", "", "", "", "", "", "")
    notes = []
    if snap.deadman is None:
        notes.append(Text("deadman: no answer (not running, or the broker is down)", style="red"))
    elif snap.deadman.get("blind"):
        notes.append(
            Text("deadman: BLIND - it cannot see the broker; node pages are held", style="bold red")
        )
    if snap.prober is None:
        notes.append(Text("prober: no answer", style="yellow"))
    else:
        for r in snap.prober.get("rejected") or []:
            notes.append(
                Text(
                    f"prober refuses {r.get('site')}/{r.get('node')}'s health URL "
                    f"{r.get('url')!r}: {r.get('reason')}",
                    style="yellow",
                )
            )
    green = sum(r.green for r in snap.rows)
    notes.append(Text(f"{green}/{len(snap.rows)} green", style="bold"))
    lines = [Text("latest alerts:", style="bold")]
    for a in alerts[-8:][::-1]:
        lines.append(format_alert(a))
    if len(lines) == 1:
        lines.append(Text("  none", style="dim"))
    return Group(table, *notes, *lines)


def format_alert(a: Alert) -> Text:
    """One line per alert transition."""
    stamp = time.strftime("%H:%M:%S", time.localtime(a.ts))
    style = ("bold red" if a.severity == "page" else "yellow") if a.state == "firing" else "green"
    who = f"{a.site}/{a.node}" if a.node else (a.site or a.source or "")
    return Text(
        f"  {stamp} {a.state.upper():8} {a.severity:7} {a.kind:10} {who:20} {a.summary}",
        style=style,
    )


async def recent_alerts(nc: NATS, subjects: Subjects, *, limit: int = 8) -> list[Alert]:
    """The last ``limit`` alert transitions stored in the alert stream, oldest first."""
    js = nc.jetstream(timeout=3)
    try:
        info = await js.stream_info(subjects.alerts_stream)
    except Exception:
        return []
    last, first = info.state.last_seq, info.state.first_seq
    out: list[Alert] = []
    seq = last
    while seq >= first and seq > 0 and len(out) < limit:
        try:
            raw = await js.get_msg(subjects.alerts_stream, seq=seq)
            if raw.data is not None:
                out.append(decode(Alert, raw.data))
        except Exception:
            pass  # a deleted or unreadable message: skip it
        seq -= 1
    return out[::-1]


async def inventory_rows(nc: NATS, subjects: Subjects) -> list[NodeRow]:
    """Expected nodes straight from the inventory, for when no deadman answers."""
    js = nc.jetstream(timeout=3)
    try:
        kv = await js.key_value(subjects.nodes_bucket)
        keys = await kv.keys()
    except Exception:
        return []
    rows = []
    for key in sorted(keys):
        rows.append(NodeRow(node=key.replace(".", "/", 1), state="unjudged"))
    return rows
