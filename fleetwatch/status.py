"""``fleetwatch status``: the fleet table, asked of the running services (not a CLI cache)."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from rich.console import Console

from fleetwatch.options import Parser, add_connection
from fleetwatch.view import inventory_rows, recent_alerts, render, snapshot
from shared.bus import connect_once
from shared.errors import BrokerUnreachable
from shared.subjects import Subjects


def parser() -> Parser:
    p = Parser(prog="fleetwatch status", description=__doc__)
    add_connection(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


async def _main(args: Any) -> int:
    nc = await connect_once(args.nats, name="fleetwatch-status")
    subjects = Subjects(args.prefix)
    try:
        snap = await snapshot(nc, subjects)
        alerts = await recent_alerts(nc, subjects)
        if snap.deadman is None and not snap.rows:
            snap.rows = await inventory_rows(nc, subjects)
    finally:
        await nc.close()
    if args.json:
        out = snap.to_json()
        out["recent_alerts"] = [a.model_dump() for a in alerts]
        print(json.dumps(out, indent=2))
    else:
        width = None if sys.stdout.isatty() else 140
        Console(width=width).print(render(snap, alerts, title="fleetwatch status"))
    if snap.deadman is None:
        print(
            "fleetwatch status: no deadman answered; the table may be incomplete", file=sys.stderr
        )
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Print the fleet table once."""
    args = parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except BrokerUnreachable as e:
        print(f"fleetwatch status: {e}", file=sys.stderr)
        return 1
