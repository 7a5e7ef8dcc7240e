"""The main job end to end: `fleetwatch up`, a drill with kill -9 and restore, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from fleetwatch.procs import free_ports
from tests.harness import cli_env, run_cli, spawn_cli, wait_for_sync


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _status(url: str) -> dict[str, Any] | None:
    r = run_cli("status", "--json", "--nats", url, timeout=20)
    if r.returncode != 0:
        return None
    obj: dict[str, Any] = json.loads(r.stdout)
    return obj


def _green(url: str, n: int) -> bool:
    st = _status(url)
    return st is not None and sum(1 for x in st["nodes"] if x["green"]) == n


def _children(run_dir: Path) -> list[int]:
    state = json.loads((run_dir / "up.json").read_text())
    pids = [int(p) for p in state["children"].values()]
    return pids


@pytest.fixture
def up(tmp_path: Path) -> Any:
    (port,) = free_ports(1)
    run_dir = tmp_path / "run"
    log = tmp_path / "up.log"
    started = time.monotonic()
    proc = spawn_cli(
        "up",
        "--fast",
        "--no-view",
        "--agents",
        "5",
        "--run-dir",
        str(run_dir),
        "--nats-port",
        str(port),
        log=log,
        env=cli_env(),
    )
    url = f"nats://127.0.0.1:{port}"
    try:
        yield proc, url, run_dir, log, started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_goes_green_drill_pages_on_time_restore_resolves_and_stop_leaves_nothing(
    up: Any, tmp_path: Path
) -> None:
    """5 agents go green fast; kill -9 of 2 pages both on time; restore resolves both; a second
    `up` is refused; SIGTERM stops every process."""
    proc, url, run_dir, log, started = up
    # DESIGN goal: green within 10 s; the bound here allows for a loaded 2-core CI machine.
    wait_for_sync(lambda: _green(url, 5), timeout=25, what=f"5 green nodes; log: {log}")
    assert time.monotonic() - started < 25

    second = run_cli("up", "--fast", "--no-view", "--run-dir", str(run_dir), "--nats-port", "1")
    assert second.returncode == 1
    assert "already running" in second.stderr

    report = tmp_path / "drill.json"
    r = run_cli(
        "drill", "--kill", "2", "--restore", "--report", str(report), "--nats", url, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(report.read_text())
    assert rep["ok"] is True and len(rep["victims"]) == 2
    for v in rep["victims"]:
        assert v["verdict"] == "on time"
        assert v["resolved_at"] is not None
        lateness = v["paged_at"] - v["expected_at"]
        assert -0.25 <= lateness <= 1.0
    wait_for_sync(lambda: _green(url, 5), timeout=15, what="all green again after restore")

    pids = _children(run_dir)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "stopped" in log.read_text()
    wait_for_sync(lambda: not any(_alive(p) for p in pids), timeout=10, what="every child gone")
    assert not (run_dir / "up.json").exists()


def test_killed_up_takes_its_children_with_it(up: Any) -> None:
    """kill -9 of `up` itself leaves no agent, judge or broker behind."""
    proc, url, run_dir, _, _ = up
    wait_for_sync(lambda: (run_dir / "up.json").exists(), timeout=20, what="up.json")
    pids = _children(run_dir)
    proc.kill()
    proc.wait()
    wait_for_sync(lambda: not any(_alive(p) for p in pids), timeout=10, what="children die with up")
    r = run_cli("status", "--nats", url, timeout=20)
    assert r.returncode == 1 and "cannot reach NATS" in r.stderr
