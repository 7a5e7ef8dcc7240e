"""``fleetwatch deadman`` / ``python -m services.deadman``."""

from __future__ import annotations

import asyncio
import logging
import sys

from services.deadman.service import Deadman, ListenError
from services.deadman.settings import DeadmanSettings
from shared.runtime import run, setup_logging, stop_on_signals
from shared.settings import load_settings

log = logging.getLogger("services.deadman")


async def _serve(settings: DeadmanSettings) -> int:
    stop = asyncio.Event()
    stop_on_signals(stop)
    try:
        await Deadman(settings).run(stop)
    except ListenError as e:
        log.error("%s", e)
        return 1
    return 0


def main(argv: list[str]) -> int:
    """Parse flags, run the deadman until SIGINT/SIGTERM; exit status."""
    settings = load_settings(DeadmanSettings, argv, prog="fleetwatch deadman")
    setup_logging(settings.log_level)
    return run(_serve(settings))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
