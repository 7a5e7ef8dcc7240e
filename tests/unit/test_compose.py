"""compose.yaml: the shape users run with `docker compose up`, and commands that really parse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.deadman.settings import DeadmanSettings
from services.prober.settings import ProberSettings
from services.reconciler.settings import AgentSettings
from shared.settings import ServiceSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS: dict[str, type[ServiceSettings]] = {
    "deadman": DeadmanSettings,
    "prober": ProberSettings,
    "agent": AgentSettings,
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def test_compose_has_the_fleet_services(compose: dict[str, Any]) -> None:
    """NATS with JetStream on a volume, deadman, prober and replicated agents."""
    services = compose["services"]
    assert {"nats", "deadman", "prober", "agent"} <= set(services)
    nats = services["nats"]
    assert nats["image"].startswith("nats:")
    assert "-js" in nats["command"]
    assert any(v.endswith(":/data") for v in nats["volumes"])
    assert services["agent"]["deploy"]["replicas"] >= 2
    assert (ROOT / "Dockerfile").is_file()


def test_healthchecks_call_the_truthful_healthz(compose: dict[str, Any]) -> None:
    """Every fleetwatch container's health check asks its own /healthz, computed per request."""
    for name in ("deadman", "prober", "agent"):
        check = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert "/healthz" in check, name


def test_every_command_is_a_valid_fleetwatch_command(compose: dict[str, Any]) -> None:
    """Each service's command parses with that service's real settings (flags and values)."""
    checked = 0
    for name, svc in compose["services"].items():
        if name == "nats":
            continue
        argv = svc["command"]
        cls = SETTINGS[argv[0]]
        settings = load_settings(cls, argv[1:], environ={})
        assert settings.service == argv[0]
        checked += 1
    assert checked >= 3
