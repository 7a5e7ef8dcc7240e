"""The deadman's judgement, pure: heartbeats and inventory changes in, alert transitions out.

No asyncio, no NATS, no clock: every call takes ``now`` (monotonic seconds) and returns the
transitions it caused. A node pages once ``now > due`` where, for a node seen at least once,
``due = last_seen + window + pending`` (never earlier than any hold: the start-up grace, the end
of a blind stretch or of a maintenance window plus a full window).

Deadlines live in a lazy min-heap holding at most one entry per node: a heartbeat only moves
``last_seen`` (O(1), the hot path); when an entry pops, the node's real deadline is recomputed and
the entry is pushed again if the node has heartbeated since (O(log n)). No tick ever scans every
node.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass
from typing import Literal

from shared.identity import NodeId

NodeState = Literal["up", "late", "down", "never_seen"]
Kind = Literal["silent", "never_seen", "site", "self"]

HEARTBEAT = "heartbeat"
REMOVED = "removed"


def episode_id(kind: str, key: str, token: str) -> str:
    """A stable alert id every replica derives alike from what it saw (key + last heartbeat)."""
    digest = hashlib.blake2b(token.encode(), digest_size=6).hexdigest()
    return f"{kind}.{key}.{digest}"


class Episode:
    """One open alert about a node."""

    __slots__ = ("alert_id", "count", "fired_at", "kind", "notified", "severity", "since")

    def __init__(self, *, alert_id: str, kind: Kind, since: float, fired_at: float,
                 count: int = 1, severity: str = "page") -> None:
        self.alert_id = alert_id
        self.kind: Kind = kind
        self.since = since
        self.fired_at = fired_at
        self.notified = fired_at
        self.count = count
        self.severity = severity


class Record:
    """What the deadman knows about one node; slots keep it small at 100k nodes."""

    __slots__ = (
        "boot", "episode", "hold", "host", "key", "last_seen", "maintenance", "pid",
        "registered", "rev", "scheduled", "seq", "token",
    )

    def __init__(self, key: str, *, registered: bool, hold: float) -> None:
        self.key = key
        self.registered = registered
        self.last_seen: float | None = None
        self.boot: str | None = None
        self.seq = 0
        self.rev: int | None = None
        self.pid: int | None = None
        self.host: str | None = None
        self.hold = hold  # no page before this instant
        self.maintenance: float | None = None  # monotonic end of a maintenance window
        self.episode: Episode | None = None
        self.scheduled = False
        self.token = ""  # inventory token for never-seen ids (replicas agree on it)

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
    severity: str = "page"
    count: int = 1


class Tracker:
    """Per-node silence judgement with a deadline heap."""

    def __init__(self, *, window: float, pending: float, grace: float | None = None,
                 renotify: float = 0.0, now: float) -> None:
        self.window = window
        self.pending = pending
        self.limit = window + pending
        self.grace = self.limit if grace is None else grace
        self.renotify = renotify  # 0 = never re-notify
        self.started = now
        self.hold_all = now + self.grace  # nobody pages before the start-up grace ends
        self.blind = False
        self.blind_since: float | None = None
        self.nodes: dict[str, Record] = {}
        self._heap: list[tuple[float, str]] = []

    # ---- the hot path -------------------------------------------------------------------
    def heartbeat(self, key: str, now: float, boot: str, seq: int, *, rev: int | None = None,
                  pid: int | None = None, host: str | None = None) -> Transition | None:
        """A valid heartbeat from ``key`` received at ``now``; a resolve if one was open."""
        rec = self.nodes.get(key)
        if rec is None:
            rec = self.nodes[key] = Record(key, registered=False, hold=0.0)
        rec.last_seen = now
        if rec.boot != boot:
            rec.boot = boot
        rec.seq = seq
        rec.rev = rev
        rec.pid = pid
        rec.host = host
        closed = self._close(rec, now, HEARTBEAT) if rec.episode is not None else None
        if not rec.scheduled:
            self._schedule(rec, self._due(rec))
        return closed

    # ---- time ---------------------------------------------------------------------------
    def advance(self, now: float) -> list[Transition]:
        """Fire every node whose deadline is strictly before ``now``; nothing while blind."""
        out: list[Transition] = []
        if self.blind:
            return out
        heap = self._heap
        while heap and heap[0][0] < now:
            _, key = heapq.heappop(heap)
            rec = self.nodes.get(key)
            if rec is None:
                continue  # removed since it was scheduled
            rec.scheduled = False
            due = self._due(rec)
            if due >= now:
                self._schedule(rec, due)
                continue
            if rec.maintenance is not None and now < rec.maintenance:
                self._schedule(rec, rec.maintenance + self.limit)
                continue
            t = self._fire(rec, now)
            if t is not None:
                out.append(t)
            if rec.episode is not None and self.renotify > 0:
                self._schedule(rec, rec.episode.notified + self.renotify)
        return out

    def due_before(self, now: float) -> bool:
        """Cheap check for the hot path: might ``advance(now)`` have work?"""
        heap = self._heap
        return bool(heap) and heap[0][0] < now and not self.blind

    def next_deadline(self) -> float | None:
        """When ``advance`` next has something to do (may be early: entries are lazy)."""
        return self._heap[0][0] if self._heap else None

    def _due(self, rec: Record) -> float:
        ep = rec.episode
        if ep is not None:
            base = ep.notified + self.renotify if self.renotify > 0 else float("inf")
        elif rec.last_seen is None:
            base = rec.hold
        else:
            base = rec.last_seen + self.limit
        return max(base, rec.hold, self.hold_all)

    def _schedule(self, rec: Record, at: float) -> None:
        if at == float("inf"):
            return
        rec.scheduled = True
        heapq.heappush(self._heap, (at, rec.key))

    def _fire(self, rec: Record, now: float) -> Transition | None:
        ep = rec.episode
        if ep is not None:  # still firing: re-notify with a growing count
            ep.count += 1
            ep.notified = now
            return Transition(ep.kind, "firing", rec.key, ep.alert_id, now, ep.since,
                              rec.last_seen, "still silent", ep.severity, ep.count)
        if rec.last_seen is None:
            kind: Kind = "never_seen"
            since = rec.hold - self.grace
            alert_id = episode_id(kind, rec.key, rec.token)
            reason = "never heartbeated since it was added to the inventory"
        else:
            kind = "silent"
            since = rec.last_seen
            alert_id = episode_id(kind, rec.key, f"{rec.boot}\0{rec.seq}")
            reason = f"no heartbeat for {now - rec.last_seen:.1f}s"
        rec.episode = Episode(alert_id=alert_id, kind=kind, since=since, fired_at=now)
        return Transition(kind, "firing", rec.key, alert_id, now, since, rec.last_seen, reason)

    def _close(self, rec: Record, now: float, reason: str) -> Transition:
        ep = rec.episode
        assert ep is not None
        rec.episode = None
        return Transition(ep.kind, "resolved", rec.key, ep.alert_id, now, ep.since,
                          rec.last_seen, reason, ep.severity, ep.count)

    # ---- inventory ----------------------------------------------------------------------
    def register(self, key: str, now: float, *, token: str = "",
                 maintenance: float | None = None) -> None:
        """An inventory node: watched even if it never heartbeats (never_seen after grace)."""
        rec = self.nodes.get(key)
        if rec is None:
            rec = self.nodes[key] = Record(key, registered=True, hold=now + self.grace)
            rec.token = token
            self._schedule(rec, self._due(rec))
        else:
            if not rec.registered:
                rec.registered = True
            if not rec.token:
                rec.token = token
        self.set_maintenance(rec, maintenance, now)

    def set_maintenance(self, rec: Record, until: float | None, now: float) -> None:
        """Start, extend or end a maintenance window (monotonic end)."""
        if until is not None and until <= now:
            until = None
        if rec.maintenance is not None and until is None and rec.maintenance > now:
            # ended early: a full window from now before it may page
            rec.hold = max(rec.hold, now + self.limit)
        elif until is not None:
            rec.hold = max(rec.hold, until + self.limit)
        rec.maintenance = until
        if not rec.scheduled:
            self._schedule(rec, self._due(rec))

    def unregister(self, key: str, now: float) -> Transition | None:
        """Removed from the inventory: stop watching; an open alert closes as ``removed``."""
        rec = self.nodes.pop(key, None)
        if rec is None or rec.episode is None:
            return None
        return self._close(rec, now, REMOVED)

    # ---- blindness ----------------------------------------------------------------------
    def set_blind(self, blind: bool, now: float) -> None:
        """While blind nobody pages; on sight again every node gets a full window from ``now``."""
        if blind == self.blind:
            return
        self.blind = blind
        if blind:
            self.blind_since = now
        else:
            self.blind_since = None
            self.hold_all = max(self.hold_all, now + self.limit)

    # ---- restart ------------------------------------------------------------------------
    def restore(self, key: str, *, last_seen: float | None, boot: str | None, seq: int,
                registered: bool, episode: Episode | None, token: str = "") -> Record:
        """Put back a node from persisted state (times already converted to monotonic)."""
        rec = Record(key, registered=registered, hold=self.hold_all)
        rec.last_seen = last_seen
        rec.boot = boot
        rec.seq = seq
        rec.episode = episode
        rec.token = token
        self.nodes[key] = rec
        self._schedule(rec, self._due(rec))
        return rec

    # ---- views --------------------------------------------------------------------------
    def state(self, rec: Record, now: float) -> NodeState:
        """What a person should read for this node now."""
        if rec.last_seen is None:
            return "never_seen"
        silent = now - rec.last_seen
        if rec.episode is not None or silent > self.limit:
            return "down"
        if silent > self.window:
            return "late"
        return "up"

    def counts(self, now: float) -> dict[str, int]:
        """Nodes by state (computed on demand, e.g. at scrape time)."""
        out = {"up": 0, "late": 0, "down": 0, "never_seen": 0}
        for rec in self.nodes.values():
            out[self.state(rec, now)] += 1
        return out
