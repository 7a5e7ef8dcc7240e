"""`fleetwatch sim` drives a real deadman; `fleetwatch alerts` replays what it paged."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from shared.codec import decode_document
from shared.models import Alert
from shared.server import EmbeddedServer
from tests.harness import run_cli, spawn_cli, wait_for_sync


def _deadman_status(url: str, prefix: str) -> dict[str, object] | None:
    r = run_cli("status", "--json", "--nats", url, "--prefix", prefix, timeout=20)
    if not r.stdout.strip():
        return None
    obj = json.loads(r.stdout)
    deadman = obj.get("deadman")
    return obj if deadman else None


def test_sim_nodes_are_tracked_then_page_when_the_sim_stops(
    nats_server: EmbeddedServer, prefix: str, tmp_path: Path
) -> None:
    """30 simulated agents read KV and heartbeat; the deadman sees all 30 up; when the sim
    stops, their silence pages and `alerts` replays the pages from the stream."""
    url = nats_server.url
    conn = ["--nats", url, "--prefix", prefix]
    deadman = spawn_cli(
        "deadman",
        *conn,
        "--window",
        "1",
        "--pending",
        "0.5",
        "--metrics-port",
        "0",
        log=tmp_path / "deadman.log",
    )
    try:
        sim = spawn_cli(
            "sim",
            *conn,
            "--nodes",
            "30",
            "--sites",
            "3",
            "--interval",
            "0.3s",
            "--report-every",
            "1s",
            "--keep",
            log=tmp_path / "sim.log",
        )

        def all_up() -> bool:
            st = _deadman_status(url, prefix)
            if st is None:
                return False
            nodes = st["nodes"]
            assert isinstance(nodes, list)
            return sum(1 for n in nodes if n["state"] == "up") == 30

        wait_for_sync(all_up, timeout=20, what="30 simulated nodes up in the deadman")
        wait_for_sync(
            lambda: "cycles/s" in (tmp_path / "sim.log").read_text(),
            timeout=10,
            what="a progress line from the sim",
        )
        sim.send_signal(signal.SIGTERM)
        assert sim.wait(timeout=20) == 0

        def paged() -> list[Alert]:
            r = run_cli("alerts", "--since", "5m", "--json", *conn, timeout=20)
            assert r.returncode == 0, r.stderr
            alerts = [
                Alert.model_validate(decode_document(line.encode(), what="alert"))
                for line in r.stdout.splitlines()
                if line.strip()
            ]
            # every simulated site falls silent at once, so the deadman may rightly suspect
            # itself (one `self` page) instead of paging each site
            kinds = ("silent", "site", "self")
            return [a for a in alerts if a.state == "firing" and a.kind in kinds]

        got = wait_for_sync(paged, timeout=20, what="pages for the stopped sim")
        assert {a.site for a in got if a.kind != "self"} <= {"sim-0", "sim-1", "sim-2"}
    finally:
        deadman.send_signal(signal.SIGTERM)
        deadman.wait(timeout=20)
