"""The v1 wire messages (DESIGN.md "Encoding"), as frozen, strictly validated pydantic models.

Strict means: no coercion (``true`` is not 1, ``"5"`` is not 5), no NaN or infinity, and times that
are non-negative. Unknown extra fields are ignored so a newer writer does not break an older reader.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

Timestamp = Annotated[float, Field(ge=0, le=1e11)]
"""Unix seconds; the upper bound (year 5138) catches milliseconds sent where seconds belong."""
Seconds = Annotated[float, Field(ge=0)]
Part = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
ShortText = Annotated[str, StringConstraints(max_length=4096)]


class Message(BaseModel):
    """Base of every wire message."""

    model_config = ConfigDict(
        frozen=True, strict=True, allow_inf_nan=False, extra="ignore", validate_default=False
    )

    v: Literal[1] = 1


class NodeMessage(Message):
    """A message about one node; subject and body must agree on it."""

    site: Part
    node: Part


class Heartbeat(NodeMessage):
    """Sent by an agent after each cycle that did real work."""

    boot: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    seq: Annotated[int, Field(ge=0)]
    ts: Timestamp
    interval: Annotated[float, Field(gt=0)] | None = None
    rev: Annotated[int, Field(ge=0)] | None = None
    pid: Annotated[int, Field(ge=0)] | None = None
    host: Annotated[str, StringConstraints(max_length=255)] | None = None


AlertKind = Literal["silent", "never_seen", "probe", "site", "self"]
AlertState = Literal["firing", "resolved"]
Severity = Literal["page", "warning", "info"]


class Alert(Message):
    """A firing or resolved alert; one ``id`` per episode."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    kind: AlertKind
    state: AlertState
    severity: Severity
    site: Part | None
    node: Part | None
    ts: Timestamp
    since: Timestamp
    last_seen: Timestamp | None
    reason: ShortText
    summary: ShortText
    count: Annotated[int, Field(ge=1)] = 1
    source: Annotated[str, StringConstraints(max_length=200)] | None = None


Verdict = Literal[
    "fresh",
    "refused",
    "timeout",
    "dns",
    "unhealthy",
    "http_error",
    "redirect",
    "bad_body",
    "stale",
    "future",
]

VERDICT_RANK: dict[str, int] = {
    "fresh": 0,
    "refused": 1,
    "timeout": 1,
    "dns": 1,
    "unhealthy": 2,
    "http_error": 3,
    "redirect": 3,
    "bad_body": 3,
    "stale": 4,
    "future": 4,
}
"""Best (0) to worst (4): a lie ranks below an honest failure."""


class ProbeResult(NodeMessage):
    """One probe of one node's health URL."""

    ts: Timestamp
    url: Annotated[str, StringConstraints(max_length=2048)]
    verdict: Verdict
    ok: bool
    status: Annotated[int, Field(ge=100, le=999)] | None
    age: float | None
    latency: Seconds
    detail: ShortText


ReconcileOutcome = Literal[
    "converged", "applied", "apply_failed", "unknown_desired", "stale_revision", "read_error"
]


class ReconcileReport(NodeMessage):
    """What one reconcile cycle found and did."""

    ts: Timestamp
    boot: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    seq: Annotated[int, Field(ge=0)]
    outcome: ReconcileOutcome
    rev: Annotated[int, Field(ge=0)] | None = None
    applied_rev: Annotated[int, Field(ge=0)] | None = None
    drift: list[ShortText] = Field(default_factory=list, max_length=1000)
    applied: list[ShortText] = Field(default_factory=list, max_length=1000)
    errors: list[ShortText] = Field(default_factory=list, max_length=1000)
    duration: Seconds = 0.0
