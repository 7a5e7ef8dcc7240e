"""``fleetwatch alerts``: alert transitions from the alert stream, replaying what was missed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from rich.console import Console

from fleetwatch.options import Parser, add_connection, duration
from fleetwatch.view import format_alert
from shared.bus import connect, connect_once
from shared.codec import decode
from shared.errors import BrokerUnreachable, DecodeError
from shared.models import Alert
from shared.runtime import stop_on_signals
from shared.subjects import Subjects


def parser() -> Parser:
    p = Parser(prog="fleetwatch alerts", description=__doc__)
    add_connection(p)
    p.add_argument(
        "--since",
        type=duration,
        default=3600.0,
        help="replay alerts from this long ago (default 1h)",
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new alerts")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


async def _main(args: Any) -> int:
    subjects = Subjects(args.prefix)
    nc = await (
        connect(args.nats, name="fleetwatch-alerts")
        if args.follow
        else connect_once(args.nats, name="fleetwatch-alerts")
    )
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    stop = asyncio.Event()
    stop_on_signals(stop)
    caught_up = asyncio.Event()
    shown = 0

    async def on_msg(msg: Any) -> None:
        nonlocal shown
        try:
            alert = decode(Alert, msg.data)
        except DecodeError as e:
            # stderr, so `--json` output stays one JSON object per line
            print(f"skipping an unreadable alert on {msg.subject}: {e}", file=sys.stderr)
        else:
            shown += 1
            if args.json:
                print(json.dumps(alert.model_dump()), flush=True)
            else:
                console.print(format_alert(alert))
        if msg.metadata.num_pending == 0:
            caught_up.set()

    try:
        js = nc.jetstream(timeout=5)
        try:
            info = await js.stream_info(subjects.alerts_stream)
        except NotFoundError:
            print(
                f"no alert stream {subjects.alerts_stream} yet: nothing has alerted",
                file=sys.stderr,
            )
            return 0
        start = datetime.fromtimestamp(time.time() - args.since, tz=UTC)
        cfg = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=start,
        )
        sub = await js.subscribe(
            subjects.alert_all,
            cb=on_msg,
            ordered_consumer=True,
            config=cfg,
            stream=subjects.alerts_stream,
        )
        if not args.follow:
            if info.state.messages == 0:
                caught_up.set()
            # no message after the start time: the consumer is silent, so give it a moment
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(caught_up.wait(), 2.0)
            if shown == 0 and not args.json:
                console.print(f"no alerts in the last {args.since:g}s")
        else:
            await stop.wait()
        await sub.unsubscribe()
    finally:
        await nc.close()
    return 0


def main(argv: list[str]) -> int:
    """Print alerts since --since; with --follow keep going until Ctrl-C."""
    args = parser().parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except BrokerUnreachable as e:
        print(f"fleetwatch alerts: {e}", file=sys.stderr)
        return 1
