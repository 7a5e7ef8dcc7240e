"""``fleetwatch COMMAND ...``: one console script; each command owns its own argument parser."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence

# command -> (module, function, one-line help); modules load only when their command runs
COMMANDS: dict[str, tuple[str, str, str]] = {
    "server": ("fleetwatch.server_cmd", "main", "run the embedded nats-server with JetStream"),
    "deadman": ("services.deadman.__main__", "main", "page on silence, per node"),
    "prober": ("services.prober.__main__", "main", "probe health URLs, demand fresh answers"),
    "agent": ("services.reconciler.__main__", "main", "the node agent: reconcile, then heartbeat"),
    "up": ("fleetwatch.up", "main", "the whole stack on this machine with a live view"),
    "drill": ("fleetwatch.drill", "main", "kill -9 agents and prove the pages land in time"),
    "status": ("fleetwatch.status", "main", "the fleet table from the services' state"),
    "alerts": ("fleetwatch.alerts", "main", "alerts from the alert stream"),
    "sim": ("fleetwatch.sim", "main", "many simulated agents in one process"),
    "node": ("fleetwatch.admin", "node_main", "inventory: node add/remove/list/maintain"),
    "desired": ("fleetwatch.admin", "desired_main", "desired state: desired get/set/delete"),
}


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: fleetwatch COMMAND [ARGS...]", "", "commands:"]
    for name, (_, _, text) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {text}")
    lines.append("")
    lines.append("`fleetwatch COMMAND --help` describes one command.")
    return "\n".join(lines)


def resolve(command: str) -> Callable[[list[str]], int] | None:
    """The main function of a command, or None if there is no such command."""
    spec = COMMANDS.get(command)
    if spec is None:
        return None
    module = importlib.import_module(spec[0])
    fn: Callable[[list[str]], int] = getattr(module, spec[1])
    return fn


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fleetwatch`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--version":
        print(f"fleetwatch {version()}")
        return 0
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    fn = resolve(args[0])
    if fn is None:
        print(f"fleetwatch: error: unknown command {args[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        return fn(args[1:])
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`fleetwatch status | head`): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def version() -> str:
    """The installed distribution's version (or "dev" from a bare checkout)."""
    try:
        return importlib.metadata.version("fleetwatch")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


if __name__ == "__main__":
    sys.exit(main())
