"""Helpers for tests: wait on outcomes with timeouts, run the real CLI, collect NATS messages."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

ROOT = Path(__file__).resolve().parent.parent


def unique_prefix() -> str:
    """A subject prefix no other test uses."""
    return "t" + uuid.uuid4().hex[:12]


async def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def wait_for_sync(predicate: Callable[[], Any], *, timeout: float = 10.0, what: str = "") -> Any:
    """``wait_for`` for synchronous tests."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


class Collector:
    """Subscribe to a subject and keep every message, with the local receive time."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, Msg]] = []
        self._event = asyncio.Event()

    async def cb(self, msg: Msg) -> None:
        self.messages.append((time.monotonic(), msg))
        self._event.set()

    @classmethod
    async def on(cls, nc: NATS, subject: str) -> Collector:
        c = cls()
        await nc.subscribe(subject, cb=c.cb)
        await nc.flush()
        return c

    def subjects(self) -> list[str]:
        return [m.subject for _, m in self.messages]

    async def wait_count(self, n: int, *, timeout: float = 10.0) -> list[tuple[float, Msg]]:
        await wait_for(
            lambda: len(self.messages) >= n,
            timeout=timeout,
            what=f"{n} messages (have {len(self.messages)})",
        )
        return self.messages


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running the CLI as a subprocess from this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(
    *args: str, timeout: float = 30.0, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``fleetwatch ARGS`` to completion (``python -m fleetwatch.cli`` of this interpreter)."""
    return subprocess.run(
        [sys.executable, "-m", "fleetwatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        cwd=ROOT,
        input=input,
    )


def spawn_cli(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``fleetwatch ARGS`` in the background, output to ``log``."""
    fh = open(log, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetwatch.cli", *args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or cli_env(),
            cwd=ROOT,
            start_new_session=True,
        )
    finally:
        fh.close()


async def until(awaitable_factory: Callable[[], Awaitable[Any]], *, timeout: float) -> Any:
    """Await with a timeout that names what was awaited."""
    return await asyncio.wait_for(awaitable_factory(), timeout)
