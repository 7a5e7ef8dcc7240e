"""``fleetwatch server``: the embedded nats-server (JetStream on) until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import platformdirs

from fleetwatch.options import Parser, whole_number
from fleetwatch.procs import die_with_parent
from shared.errors import ServerBinaryMissing
from shared.server import EmbeddedServer


def default_store() -> Path:
    """Where JetStream data lives when --store-dir is not given."""
    return Path(platformdirs.user_data_dir("fleetwatch")) / "jetstream"


def parser() -> Parser:
    p = Parser(prog="fleetwatch server", description=__doc__)
    p.add_argument(
        "--port",
        type=whole_number("port number", lo=1, hi=65535, also=(-1,)),
        default=4222,
        help="client port (default 4222; -1: any)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--store-dir", type=Path, default=None, help=f"JetStream store (default {default_store()})"
    )
    p.add_argument(
        "--monitor-port",
        type=whole_number("port number", lo=1, hi=65535, also=(-1,)),
        default=None,
        help="HTTP monitor port",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="extra nats-server config file (e.g. subject mappings, cluster)",
    )
    return p


def main(argv: list[str]) -> int:
    """Run the server in the foreground."""
    args = parser().parse_args(argv)
    store = args.store_dir or default_store()
    try:
        server = EmbeddedServer(
            store_dir=store,
            port=args.port,
            host=args.host,
            monitor_port=args.monitor_port,
            config_file=args.config,
            preexec_fn=die_with_parent,  # a killed `fleetwatch server` takes its broker along
        )
    except ServerBinaryMissing as e:
        print(f"fleetwatch server: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except (RuntimeError, TimeoutError) as e:
        print(f"fleetwatch server: could not start nats-server: {e}", file=sys.stderr)
        return 1
    print(
        f"nats-server ready at {server.url} (JetStream store {store}; log {server.log_file})",
        flush=True,
    )
    try:
        while not stop.is_set():
            if not server.running():
                print(
                    f"fleetwatch server: nats-server exited unexpectedly; see {server.log_file}",
                    file=sys.stderr,
                )
                return 1
            stop.wait(0.5)
    finally:
        server.stop()
    print("nats-server stopped", flush=True)
    return 0
