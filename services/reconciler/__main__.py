"""``fleetwatch agent`` / ``python -m services.reconciler``."""

from __future__ import annotations

import asyncio
import sys

from services.reconciler.service import run_agent
from services.reconciler.settings import AgentSettings
from shared.runtime import run, setup_logging, stop_on_signals
from shared.settings import load_settings


def main(argv: list[str]) -> int:
    """Parse flags (exit 2 naming a bad one), then run the agent until SIGINT/SIGTERM."""
    settings = load_settings(AgentSettings, argv, prog="fleetwatch agent")
    setup_logging(settings.log_level)

    async def go() -> int:
        stop = asyncio.Event()
        stop_on_signals(stop)
        return await run_agent(settings, stop=stop)

    return run(go())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
