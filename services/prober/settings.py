"""The prober's settings: flags and their ``FLEETWATCH_PROBER_*`` environment twins."""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from shared.durations import Duration, Interval, PositiveDuration
from shared.identity import NodeId
from shared.settings import ServiceSettings, instance_name, service_config


def parse_target(text: str) -> tuple[NodeId, str]:
    """Split ``SITE/NODE=URL``; ValueError naming what is wrong."""
    node_text, sep, url = text.partition("=")
    if not sep:
        raise ValueError(f"target {text!r} must be SITE/NODE=URL")
    node = NodeId.parse(node_text.strip())
    return node, check_url(url.strip())


_HTTP_URL = re.compile(r"^https?://[^/?#@\s]*@?[^/?#\s]+(?:[/?#]\S*)?$", re.IGNORECASE)


def check_url(url: str) -> str:
    """Accept only absolute http(s) URLs with a host and no whitespace; ValueError saying why."""
    shown = url[:200]
    if not re.match(r"^https?://", url, re.IGNORECASE):
        scheme = url.partition(":")[0] if ":" in url else ""
        why = f"scheme {scheme[:20]!r} is not http or https" if scheme else "it has no scheme"
        raise ValueError(f"health URL {shown!r} must be an absolute http(s) URL ({why})")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError(f"health URL {shown!r} contains whitespace or control characters")
    if not _HTTP_URL.match(url):
        raise ValueError(f"health URL {shown!r} has no host")
    return url


class ProberSettings(ServiceSettings):
    """Probe every node's health URL and demand a fresh body timestamp."""

    model_config = service_config("prober")
    service: ClassVar[str] = "prober"

    interval: Interval = Field(30.0, description="time between two probes of one target")
    max_age: PositiveDuration = Field(30.0, description="oldest body timestamp still called fresh")
    timeout: Duration = Field(
        5.0, description="whole-request deadline, DNS to last body byte; shorter than --interval"
    )
    future_tolerance: Duration = Field(
        5.0, description="how far ahead of our clock a body timestamp may be (clock skew)"
    )
    ts_field: list[str] = Field(
        ["ts"],
        description="body field(s) holding the timestamp, first present wins",
    )
    target: list[str] = Field([], description="extra target SITE/NODE=URL besides the inventory")
    failure_threshold: int = Field(3, ge=1, description="consecutive failures before a page")
    success_threshold: int = Field(2, ge=1, description="consecutive fresh results to resolve")
    concurrency: int = Field(256, ge=1, le=10000, description="probes in flight at most")
    max_body: int = Field(
        64 * 1024, ge=256, le=16 * 1024 * 1024, description="bytes of body read at most"
    )
    resync: PositiveDuration = Field(
        60.0, description="full re-read of the inventory every so often"
    )
    metrics_port: int = Field(9103, ge=0, le=65535, description="0 picks a free port")
    metrics_host: str = Field("127.0.0.1", description="address of the metrics/health endpoint")
    instance: str = Field("", description="this prober's name (empty: hostname-pid)")

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float, info: ValidationInfo) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        interval = info.data.get("interval")
        if interval is not None and value >= interval:
            raise ValueError(f"must be shorter than --interval ({interval:g}s)")
        return value

    @field_validator("ts_field")
    @classmethod
    def _ts_field(cls, value: list[str]) -> list[str]:
        fields = [v.strip() for item in value for v in item.split(",") if v.strip()]
        if not fields:
            raise ValueError("needs at least one field name")
        return fields

    @field_validator("target")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        for item in value:
            parse_target(item)
        return value

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str) -> str:
        return instance_name(value, "prober")

    def targets(self) -> dict[NodeId, str]:
        """The ``--target`` flags as a map (the last one for a node wins)."""
        return dict(parse_target(t) for t in self.target)
