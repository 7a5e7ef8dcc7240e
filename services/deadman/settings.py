"""The deadman's settings: one flag per field, each with an environment twin."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from shared.durations import Duration, PositiveDuration
from shared.settings import ServiceSettings, instance_name, service_config


class DeadmanSettings(ServiceSettings):
    """fleetwatch deadman: pages on per-node silence measured on its own receive clock."""

    model_config = service_config("deadman")
    service: ClassVar[str] = "deadman"

    window: PositiveDuration = Field(90.0, description="silence after which a node is late")
    pending: Duration = Field(120.0, description="further silence before a late node pages")
    startup_grace: Duration | None = Field(
        None, description="no page before this long after start (default window+pending)"
    )
    metrics_port: int = Field(
        9102, ge=0, le=65535, description="Prometheus /metrics and /healthz port (0 = any free)"
    )
    metrics_host: str = Field("127.0.0.1", description="address the metrics endpoint binds")
    instance: str = Field(
        "", description="this replica's name, letters, digits, _ and - (empty = HOSTNAME-PID)"
    )
    persist_every: PositiveDuration = Field(2.0, description="interval between state saves to KV")
    renotify: Duration = Field(
        1800.0, description="re-publish a still-firing alert this often (0 = never)"
    )
    canary_every: PositiveDuration = Field(1.0, description="interval of the canary round trip")
    blind_after: PositiveDuration = Field(
        3.0,
        description="no canary back through the broker for this long = blind (no node "
        "is judged until it can see again)",
    )
    inventory_resync: PositiveDuration = Field(60.0, description="full inventory re-read interval")
    max_unregistered: int = Field(
        250_000,
        ge=0,
        description="most nodes tracked without an inventory entry (a flood of "
        "made-up names is rejected beyond it)",
    )
    site_fraction: float = Field(
        0.55,
        gt=0,
        le=1,
        description=(
            "share of a site's nodes going down within one window that makes one site alert"
        ),
    )
    site_min: int = Field(3, ge=1, description="... and at least this many nodes")
    flap_changes: int = Field(
        4, ge=2, description="state changes within --flap-period that make a node flapping"
    )
    flap_period: Duration = Field(3600.0, description="period over which changes are counted")
    flap_good: int = Field(
        3,
        ge=1,
        description="a flapping node resolves after this many good "
        "heartbeats in a row spanning one window",
    )

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str) -> str:
        return instance_name(value, "deadman")

    @model_validator(mode="after")
    def _grace(self) -> DeadmanSettings:
        if self.blind_after <= self.canary_every:
            raise ValueError(
                f"--blind-after ({self.blind_after:g}s) must be longer than --canary-every "
                f"({self.canary_every:g}s), or the deadman would call itself blind between "
                "two canaries"
            )
        if self.startup_grace is None:
            object.__setattr__(self, "startup_grace", self.window + self.pending)
        return self

    @property
    def grace(self) -> float:
        """The start-up grace in seconds."""
        return self.window + self.pending if self.startup_grace is None else self.startup_grace
