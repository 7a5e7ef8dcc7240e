"""What the tracker keeps and says: per-node records, open episodes, transitions, and the
knobs of issue 4 (site partitions, flapping). Plain data, no behaviour beyond construction."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from shared.identity import NodeId
from shared.models import Severity

NodeState = Literal["up", "late", "down", "never_seen"]
Kind = Literal["silent", "never_seen", "site", "self"]


def episode_id(kind: str, key: str, token: str) -> str:
    """A stable alert id every replica derives alike from what it saw (key + last heartbeat)."""
    digest = hashlib.blake2b(token.encode(), digest_size=6).hexdigest()
    return f"{kind}.{key}.{digest}"


class Episode:
    """One open alert about a node."""

    __slots__ = (
        "alert_id",
        "count",
        "fired_at",
        "good",
        "good_since",
        "kind",
        "notified",
        "severity",
        "since",
        "site_alert",
    )

    def __init__(
        self,
        *,
        alert_id: str,
        kind: Kind,
        since: float,
        fired_at: float,
        count: int = 1,
        severity: Severity = "page",
    ) -> None:
        self.alert_id = alert_id
        self.kind: Kind = kind
        self.since = since
        self.fired_at = fired_at
        self.notified = fired_at
        self.count = count
        self.severity = severity
        self.good = 0  # consecutive good heartbeats while flapping
        self.good_since = 0.0
        self.site_alert: str | None = None  # the site alert this node alert belongs to


class Record:
    """What the deadman knows about one node; slots keep it small at 100k nodes."""

    __slots__ = (
        "boot",
        "episode",
        "flap",
        "hold",
        "host",
        "key",
        "last_seen",
        "maintenance",
        "mhold",
        "pid",
        "registered",
        "rev",
        "sched_at",
        "scheduled",
        "seq",
        "seqmask",
        "token",
    )

    def __init__(self, key: str, *, registered: bool, hold: float) -> None:
        self.key = key
        self.registered = registered
        self.last_seen: float | None = None
        self.boot: str | None = None
        self.seq = 0  # highest seq seen on this boot
        self.seqmask = 1  # bit i: seq - i was seen (a small anti-replay window below seq)
        self.rev: int | None = None
        self.pid: int | None = None
        self.host: str | None = None
        self.hold = hold  # no page before this instant
        self.maintenance: float | None = None  # monotonic end of a maintenance window
        self.mhold = 0.0  # no page before this instant because of maintenance (recomputed)
        self.episode: Episode | None = None
        self.scheduled = False
        self.sched_at = 0.0  # time of the live heap entry (others for this key are stale)
        self.token = ""  # inventory token for never-seen ids (replicas agree on it)
        self.flap: list[float] | None = None  # recent state changes, only once it has any

    @property
    def node_id(self) -> NodeId:
        return NodeId.from_key(self.key)


@dataclass(frozen=True, slots=True)
class Transition:
    """A firing or a resolve of one alert, in monotonic time; the shell turns it into an Alert."""

    kind: Kind
    state: Literal["firing", "resolved"]
    key: str  # SITE.NODE (for kind "site": the site name)
    alert_id: str
    at: float
    since: float
    last_seen: float | None
    reason: str
    severity: Severity = "page"
    count: int = 1


@dataclass(frozen=True, slots=True)
class Judgement:
    """The knobs of issue 4: site partitions and flapping."""

    site_fraction: float = 0.55  # this share of a site's nodes down within one window ...
    site_min: int = 3  # ... and at least this many = one site alert, node alerts as warnings
    flap_changes: int = 4  # this many state changes within flap_period = flapping
    flap_period: float = 3600.0
    flap_good: int = 3  # a flapping node resolves after this many good heartbeats in a row ...
    # ... spanning at least one window


class SiteEpisode:
    """One open site alert and the node alerts it stands for."""

    __slots__ = ("alert_id", "fired_at", "members", "since")

    def __init__(self, alert_id: str, since: float, fired_at: float) -> None:
        self.alert_id = alert_id
        self.since = since
        self.fired_at = fired_at
        self.members: set[str] = set()
