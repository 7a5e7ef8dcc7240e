"""The reconciler's decisions, pure: no asyncio, no NATS, no clock reads.

``decide`` turns one desired-state read, the last applied revision and the actuator's current
state into what the cycle must do; ``diff`` names what drifted; the ``*_delay`` functions turn a
uniform random number into the loop's jittered schedule, so tests can pin them exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared.inventory import DesiredRead

MAX_DRIFT = 1000
"""The report model holds at most this many drift lines; the rest are summarised in one."""

Action = Literal["converged", "apply", "unknown_desired", "stale_revision", "read_error"]

_MISSING = object()


@dataclass(frozen=True)
class Decision:
    """What one cycle must do, and why."""

    action: Action
    revision: int | None = None
    drift: tuple[str, ...] = ()
    detail: str = ""

    @property
    def read_ok(self) -> bool:
        """The control plane answered: the cycle counts as real work and earns a heartbeat."""
        return self.action != "read_error"


def _describe(path: str, want: object, have: object) -> str:
    if have is _MISSING:
        return f"{path}: missing"
    if want is _MISSING:
        return f"{path}: not desired"
    return f"{path}: changed"


def diff(desired: Mapping[str, Any], current: Mapping[str, Any], *, path: str = "") -> list[str]:
    """Fields where ``current`` differs from ``desired``; maps recurse."""
    out: list[str] = []
    for key in sorted(set(desired) | set(current), key=str):
        want = desired.get(key, _MISSING)
        have = current.get(key, _MISSING)
        here = f"{path}.{key}" if path else str(key)
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            out.extend(diff(want, have, path=here))
        elif want is _MISSING or have is _MISSING or want != have or type(want) is not type(have):
            out.append(_describe(here, want, have))
    return out


def _cap(lines: list[str]) -> tuple[str, ...]:
    if len(lines) <= MAX_DRIFT:
        return tuple(line[:4096] for line in lines)
    kept = [line[:4096] for line in lines[: MAX_DRIFT - 1]]
    kept.append(f"... and {len(lines) - len(kept)} more")
    return tuple(kept)


def decide(read: DesiredRead, *, applied_rev: int | None, current: Mapping[str, Any]) -> Decision:
    """The cycle's action. Only an explicit, valid, not-older document may change the node."""
    if read.status == "read_error":
        return Decision("read_error", detail=read.error or "desired read failed")
    if read.status != "ok" or read.document is None:
        what = {
            "missing": "no desired state",
            "deleted": "desired state deleted",
            "invalid": "desired state unreadable",
        }.get(read.status, read.status)
        return Decision(
            "unknown_desired",
            revision=read.revision,
            detail=f"{what}: {read.error}" if read.error else what,
        )
    rev = read.revision or 0
    if applied_rev is not None and rev < applied_rev:
        return Decision(
            "stale_revision",
            revision=rev,
            detail=f"desired revision {rev} is older than applied revision {applied_rev}",
        )
    drift = diff(read.document, current)
    if drift:
        return Decision("apply", revision=rev, drift=_cap(drift))
    return Decision("converged", revision=rev)


def read_error_reason(error: str) -> str:
    """A short metric label for a failed desired read, from its message."""
    text = error.lower()
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "bucket" in text or "stream not found" in text:
        return "bucket_missing"
    if "noresponders" in text or "no responders" in text:
        return "no_responders"
    if "connection" in text or "closed" in text or "noservers" in text:
        return "disconnected"
    return "read_failed"


# ---- schedule ------------------------------------------------------------------------------

JITTER = 0.1
"""Each cycle lasts ``interval`` ± this fraction, so agents started together drift apart."""


def cycle_delay(interval: float, u: float, *, jitter: float = JITTER) -> float:
    """The pause before the next cycle; ``u`` is uniform in [0, 1)."""
    return interval * (1.0 + jitter * (2.0 * u - 1.0))


def first_delay(interval: float, u: float) -> float:
    """The first cycle starts anywhere in one interval, so a fleet started at once spreads out."""
    return interval * u


def retry_delay(attempt: int, interval: float, u: float) -> float:
    """Jittered exponential backoff after ``attempt`` failed reads, capped at the interval."""
    base = min(0.2, interval)
    ceiling = min(interval, base * (2 ** min(max(attempt - 1, 0), 30)))
    return float(ceiling / 2 + u * ceiling / 2)


def default_max_age(interval: float) -> float:
    """How old the last completed cycle may be before /healthz says 503: three jittered cycles."""
    return 3.0 * interval * (1.0 + JITTER)


@dataclass(frozen=True)
class Freshness:
    """The health verdict computed in one request."""

    ok: bool
    age: float | None
    reason: str


def freshness(
    *, now: float, last_cycle: float | None, max_age: float, kv_ok: bool, kv_error: str = ""
) -> Freshness:
    """200 only if the broker answered now and the last completed cycle is recent enough."""
    age = None if last_cycle is None else max(0.0, now - last_cycle)
    if not kv_ok:
        return Freshness(False, age, f"control plane unreachable: {kv_error}".rstrip(": "))
    if age is None:
        return Freshness(False, None, "no cycle completed yet")
    if age > max_age:
        return Freshness(False, age, f"last cycle {age:.1f}s ago (limit {max_age:.1f}s)")
    return Freshness(True, age, "ok")


# ---- identity ------------------------------------------------------------------------------

HOSTNAME_TOKEN = "@hostname"
_NOT_PART = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize_hostname(hostname: str) -> str:
    """A hostname as a node name: invalid characters become '-', at most 64 characters."""
    text = _NOT_PART.sub("-", hostname).strip("-")[:64].strip("-")
    return text or "host"


def expand_node(text: str, hostname: str) -> str:
    """``SITE/@hostname`` becomes ``SITE/<sanitized hostname>``; anything else is returned as is."""
    site, sep, node = text.partition("/")
    if sep and node == HOSTNAME_TOKEN:
        return f"{site}/{sanitize_hostname(hostname)}"
    return text
