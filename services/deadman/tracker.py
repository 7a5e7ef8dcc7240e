"""The deadman's judgement, pure: heartbeats and inventory changes in, alert transitions out.

No asyncio, no NATS, no clock: every call takes ``now`` (monotonic seconds) and returns the
transitions it caused. A node pages once ``now > due`` where, for a node seen at least once,
``due = last_seen + window + pending`` (never earlier than any hold: the start-up grace, the end
of a blind stretch or of a maintenance window plus a full window).

Deadlines live in a lazy min-heap with one live entry per node (``rec.sched_at``; any other entry
for the key is stale and skipped): a heartbeat only moves ``last_seen`` (O(1), the hot path); when
an entry pops, the node's real deadline is recomputed and the entry is pushed again if the node has
heartbeated since (O(log n)). Whatever can move a deadline *earlier* (a resolve dropping its
re-notify time, a maintenance window ended or shortened) pushes a fresh entry. No tick ever scans
every node.

Beyond one node (issue 4): when enough of one site's nodes went quiet within about one window,
one site alert fires and that site's node alerts go out as warnings; when every site did, the
deadman suspects its own view (one self alert, no node pages) until a heartbeat arrives. A node
that changes state too often is flapping: its alert stays open until K good heartbeats spanning a
window. While blind or suspecting itself, nobody pages; afterwards every node gets a full window.
"""

from __future__ import annotations

import heapq
import math

from services.deadman.episodes import (
    Episode,
    Judgement,
    Kind,
    NodeState,
    Record,
    SiteEpisode,
    Transition,
    episode_id,
)
from shared.models import Severity

__all__ = ["Episode", "Judgement", "Record", "SiteEpisode", "Tracker", "Transition"]

HEARTBEAT = "heartbeat"
HEAP_SLACK = 64  # superseded heap entries tolerated beyond two per node before compacting
REPLAY_WINDOW = 64  # seqs below the highest one that are still checked for exact duplicates
_MASK = (1 << REPLAY_WINDOW) - 1
REPLAYED = "replayed"
SEQ_REGRESSION = "seq_regression"
RETIRED_MAX = 10_000
REMOVED = "removed"


class Tracker:
    """Per-node silence judgement with a deadline heap."""

    def __init__(
        self,
        *,
        window: float,
        pending: float,
        grace: float | None = None,
        renotify: float = 0.0,
        now: float,
        judgement: Judgement | None = None,
    ) -> None:
        self.window = window
        self.pending = pending
        self.limit = window + pending
        self.grace = self.limit if grace is None else grace
        self.renotify = renotify  # 0 = never re-notify
        self.judgement = judgement or Judgement()
        self.started = now
        self.hold_all = now + self.grace  # nobody pages before the start-up grace ends
        self.blind = False
        self.blind_since: float | None = None
        self.suspect: SiteEpisode | None = None  # every site silent at once: suspect ourselves
        self.nodes: dict[str, Record] = {}
        self.sites: dict[str, list[Record]] = {}
        self.site_alerts: dict[str, SiteEpisode] = {}
        self.outbox: list[Transition] = []  # extra transitions a call produced (drain it)
        self._heap: list[tuple[float, str]] = []
        self._site_scan: dict[str, tuple[float, int]] = {}
        self._removed: dict[str, int] = {}  # key -> times it was removed from the inventory
        self.open: set[str] = set()  # keys with an open episode (what an urgent save writes)
        self.unregistered = 0  # nodes tracked only because they heartbeat (not in inventory)

    # ---- the hot path -------------------------------------------------------------------
    def heartbeat(
        self,
        key: str,
        now: float,
        boot: str,
        seq: int,
        *,
        rev: int | None = None,
        pid: int | None = None,
        host: str | None = None,
    ) -> Transition | None:
        """A valid heartbeat from ``key`` received at ``now``; a resolve if one was open."""
        rec = self.nodes.get(key)
        if rec is None:
            rec = self._add(Record(key, registered=False, hold=0.0))
        prev = rec.last_seen
        rec.last_seen = now
        self._track_seq(rec, boot, seq)
        rec.rev = rev
        rec.pid = pid
        rec.host = host
        if self.suspect is not None:
            self._unsuspect(now)
        closed = None
        ep = rec.episode
        if ep is not None:
            if rec.flap is not None and self._flapping(rec, now):
                # a flapping node must prove itself: K good heartbeats spanning a window
                if ep.good == 0 or prev is None or now - prev > self.window:
                    ep.good, ep.good_since = 0, now
                ep.good += 1
                if ep.good >= self.judgement.flap_good and now - ep.good_since >= self.window:
                    closed = self._close(rec, now, HEARTBEAT)
            else:
                closed = self._close(rec, now, HEARTBEAT)
        if closed is not None:
            self._reschedule(rec)  # the re-notify deadline is gone: silence counts from now
        elif not rec.scheduled:
            self._schedule(rec, self._due(rec))
        return closed

    # ---- replays ------------------------------------------------------------------------
    @staticmethod
    def admit(rec: Record, boot: str, seq: int) -> str | None:
        """Judge a heartbeat's (boot, seq) against what ``rec`` saw, without changing it.

        ``"replayed"`` (reject) only for an exact duplicate of a recently seen seq of the same
        boot; ``"seq_regression"`` (accept, count it) for a seq far below the highest seen, which
        is how a forged huge seq or an agent that lost its counter shows: one outlier must never
        make the real heartbeats that follow look like replays. None: nothing odd.
        """
        if rec.boot != boot or seq > rec.seq:
            return None
        back = rec.seq - seq
        if back < REPLAY_WINDOW:
            return REPLAYED if (rec.seqmask >> back) & 1 else None
        return SEQ_REGRESSION

    @staticmethod
    def _track_seq(rec: Record, boot: str, seq: int) -> None:
        if rec.boot != boot:
            rec.boot, rec.seq, rec.seqmask = boot, seq, 1
        elif seq > rec.seq:
            shift = seq - rec.seq
            rec.seqmask = ((rec.seqmask << shift) | 1) & _MASK if shift < REPLAY_WINDOW else 1
            rec.seq = seq
        elif rec.seq - seq < REPLAY_WINDOW:
            rec.seqmask |= 1 << (rec.seq - seq)  # arrived out of order
        else:  # a regression: follow the new counter (the old highest was an outlier)
            rec.seq, rec.seqmask = seq, 1

    # ---- time ---------------------------------------------------------------------------
    def advance(self, now: float) -> list[Transition]:
        """Fire every node whose deadline is strictly before ``now``; nothing while blind."""
        out = self.outbox
        self.outbox = []
        if self.blind or self.suspect is not None:
            return out
        heap = self._heap
        while heap and heap[0][0] < now:
            at, key = heapq.heappop(heap)
            rec = self.nodes.get(key)
            if rec is None or not rec.scheduled or at != rec.sched_at:
                continue  # removed since, or superseded by an earlier entry
            rec.scheduled = False
            due = self._due(rec)
            if due >= now:
                self._schedule(rec, due)
                continue
            self._fire(rec, now, out)
            if self.suspect is not None:
                self._schedule(rec, now + self.limit)
                break
            if rec.episode is not None and self.renotify > 0:
                self._schedule(rec, rec.episode.notified + self.renotify)
        return out

    def due_before(self, now: float) -> bool:
        """Cheap check for the hot path: might ``advance(now)`` have work?"""
        heap = self._heap
        return bool(heap) and heap[0][0] < now and not self.blind and self.suspect is None

    def next_deadline(self) -> float | None:
        """When ``advance`` next has something to do (may be early: entries are lazy).

        None while blind or suspecting itself: nothing pages then, so past-due entries must not
        make the caller spin; the caller wakes on a heartbeat or its own cadence instead.
        """
        if self.blind or self.suspect is not None:
            return None
        return self._heap[0][0] if self._heap else None

    def _due(self, rec: Record) -> float:
        ep = rec.episode
        if ep is not None:
            base = ep.notified + self.renotify if self.renotify > 0 else float("inf")
        elif rec.last_seen is None:
            base = rec.hold
        else:
            base = rec.last_seen + self.limit
        return max(base, rec.hold, rec.mhold, self.hold_all)

    def _schedule(self, rec: Record, at: float) -> None:
        if at == float("inf"):
            return
        rec.scheduled = True
        rec.sched_at = at
        heap = self._heap
        heapq.heappush(heap, (at, rec.key))
        if len(heap) > 2 * len(self.nodes) + HEAP_SLACK:
            # too many superseded entries: keep the live ones (in place: advance holds the list)
            heap[:] = [(r.sched_at, r.key) for r in self.nodes.values() if r.scheduled]
            heapq.heapify(heap)

    def _reschedule(self, rec: Record) -> None:
        """After a change that may move the deadline earlier: the live entry is the right one."""
        due = self._due(rec)
        if not rec.scheduled or due < rec.sched_at:
            self._schedule(rec, due)  # the old entry, if any, is now stale
        elif due == float("inf"):
            rec.scheduled = False

    def _fire(self, rec: Record, now: float, out: list[Transition]) -> None:
        ep = rec.episode
        if ep is not None:  # still firing: re-notify with a growing count
            ep.count += 1
            ep.notified = now
            out.append(
                Transition(
                    ep.kind,
                    "firing",
                    rec.key,
                    ep.alert_id,
                    now,
                    ep.since,
                    rec.last_seen,
                    "still silent",
                    ep.severity,
                    ep.count,
                )
            )
            return
        severity: Severity = "page"
        if rec.last_seen is None:
            kind: Kind = "never_seen"
            since = rec.hold - self.grace
            alert_id = episode_id(kind, rec.key, rec.token)
            reason = "never heartbeated since it was added to the inventory"
            site_ep = None
        else:
            kind = "silent"
            since = rec.last_seen
            alert_id = episode_id(kind, rec.key, f"{rec.boot}\0{rec.seq}")
            reason = f"no heartbeat for {now - rec.last_seen:.1f}s"
            site = rec.key.partition(".")[0]
            site_ep = self.site_alerts.get(site)
            if site_ep is None and self._partitioned(site, now):
                if self._every_site_silent(now):
                    self._suspect_self(now, out)
                    return
                site_ep = self._open_site(site, alert_id, now, out)
            if site_ep is not None:
                severity = "warning"
                reason = f"{reason}; site {site} is down (alert {site_ep.alert_id})"
                site_ep.members.add(rec.key)
        rec.episode = Episode(
            alert_id=alert_id, kind=kind, since=since, fired_at=now, severity=severity
        )
        self.open.add(rec.key)
        if site_ep is not None:
            rec.episode.site_alert = site_ep.alert_id
        self._note_change(rec, now)
        out.append(
            Transition(
                kind, "firing", rec.key, alert_id, now, since, rec.last_seen, reason, severity
            )
        )

    def _close(self, rec: Record, now: float, reason: str) -> Transition:
        ep = rec.episode
        assert ep is not None
        rec.episode = None
        self.open.discard(rec.key)
        self._note_change(rec, now)
        if ep.site_alert is not None:
            site = rec.key.partition(".")[0]
            site_ep = self.site_alerts.get(site)
            if site_ep is not None and site_ep.alert_id == ep.site_alert:
                site_ep.members.discard(rec.key)
                if len(site_ep.members) < self._site_threshold(site):
                    del self.site_alerts[site]
                    self.outbox.append(
                        Transition(
                            "site",
                            "resolved",
                            site,
                            site_ep.alert_id,
                            now,
                            site_ep.since,
                            None,
                            f"site {site} is back",
                            "page",
                            1,
                        )
                    )
        return Transition(
            ep.kind,
            "resolved",
            rec.key,
            ep.alert_id,
            now,
            ep.since,
            rec.last_seen,
            reason,
            ep.severity,
            ep.count,
        )

    # ---- sites --------------------------------------------------------------------------
    def _site_threshold(self, site: str) -> int:
        j = self.judgement
        return max(j.site_min, math.ceil(j.site_fraction * len(self.sites.get(site, ()))))

    def _silent_in_site(self, site: str, now: float) -> int:
        """Nodes of the site that went quiet within about one window of each other (cached)."""
        cached = self._site_scan.get(site)
        if cached is not None and now - cached[0] < min(0.25, self.window / 4):
            return cached[1]
        lo, hi = now - 2 * self.window - self.pending, now - self.window
        n = sum(
            1 for r in self.sites.get(site, ()) if r.last_seen is not None and lo < r.last_seen < hi
        )
        self._site_scan[site] = (now, n)
        return n

    def _partitioned(self, site: str, now: float) -> bool:
        return self._silent_in_site(site, now) >= self._site_threshold(site)

    def _every_site_silent(self, now: float) -> bool:
        seen = [s for s, recs in self.sites.items() if any(r.last_seen is not None for r in recs)]
        return len(seen) >= 2 and all(self._partitioned(s, now) for s in seen)

    def _open_site(self, site: str, token: str, now: float, out: list[Transition]) -> SiteEpisode:
        site_ep = SiteEpisode(episode_id("site", site, token), now - self.limit, now)
        self.site_alerts[site] = site_ep
        n = self._silent_in_site(site, now)
        out.append(
            Transition(
                "site",
                "firing",
                site,
                site_ep.alert_id,
                now,
                site_ep.since,
                None,
                f"{n} of {len(self.sites[site])} nodes of site {site} went silent "
                f"within one window",
                "page",
                1,
            )
        )
        return site_ep

    def _suspect_self(self, now: float, out: list[Transition]) -> None:
        ep = SiteEpisode(episode_id("self", "deadman", f"suspect\0{now!r}"), now - self.limit, now)
        self.suspect = ep
        out.append(
            Transition(
                "self",
                "firing",
                "",
                ep.alert_id,
                now,
                ep.since,
                None,
                "every site went silent at once: suspecting the deadman's own "
                "view, judging no node",
                "page",
                1,
            )
        )

    def _unsuspect(self, now: float) -> None:
        ep = self.suspect
        assert ep is not None
        self.suspect = None
        self.hold_all = max(self.hold_all, now + self.limit)
        self._site_scan.clear()
        self.outbox.append(
            Transition(
                "self",
                "resolved",
                "",
                ep.alert_id,
                now,
                ep.since,
                None,
                "heartbeats are arriving again",
                "page",
                1,
            )
        )

    # ---- flapping -----------------------------------------------------------------------
    def _note_change(self, rec: Record, now: float) -> None:
        if rec.flap is None:
            rec.flap = []
        rec.flap.append(now)
        cutoff = now - self.judgement.flap_period
        while rec.flap and rec.flap[0] < cutoff:
            rec.flap.pop(0)
        if len(rec.flap) > 2 * self.judgement.flap_changes:
            del rec.flap[: len(rec.flap) - 2 * self.judgement.flap_changes]

    def _flapping(self, rec: Record, now: float) -> bool:
        flap = rec.flap
        if not flap:
            return False
        cutoff = now - self.judgement.flap_period
        return sum(1 for t in flap if t >= cutoff) >= self.judgement.flap_changes

    def flapping(self, rec: Record, now: float) -> bool:
        """Whether the node changed state too often lately (shown in the status reply)."""
        return self._flapping(rec, now)

    # ---- inventory ----------------------------------------------------------------------
    def _add(self, rec: Record) -> Record:
        if not rec.registered:
            self.unregistered += 1
        self.nodes[rec.key] = rec
        self.sites.setdefault(rec.key.partition(".")[0], []).append(rec)
        return rec

    def register(
        self, key: str, now: float, *, token: str = "", maintenance: float | None = None
    ) -> None:
        """An inventory node: watched even if it never heartbeats (never_seen after grace)."""
        rec = self.nodes.get(key)
        if rec is None:
            rec = self._add(Record(key, registered=True, hold=now + self.grace))
            gen = self._removed.get(key)
            rec.token = token if gen is None else f"{token}#{gen}"
            self._schedule(rec, self._due(rec))
        else:
            if not rec.registered:
                rec.registered = True
                self.unregistered -= 1
            if not rec.token:
                rec.token = token
        self.set_maintenance(rec, maintenance, now)

    def set_maintenance(self, rec: Record, until: float | None, now: float) -> None:
        """Start, extend, shorten or end a maintenance window (monotonic end).

        The maintenance hold is recomputed from the current end, never kept from an older one:
        after the end the node gets one full window (+ pending) and then may page.
        """
        if until is not None and until <= now:
            until = None
        if until is not None:
            rec.mhold = until + self.limit
        elif rec.maintenance is not None and rec.maintenance > now:
            rec.mhold = now + self.limit  # ended early: it ends now
        # else: no window, or one that already ran out (its hold stays as it was)
        rec.maintenance = until
        self._reschedule(rec)

    def unregister(self, key: str, now: float) -> Transition | None:
        """Removed from the inventory: stop watching; an open alert closes as ``removed``."""
        rec = self.nodes.pop(key, None)
        if rec is None:
            return None
        if not rec.registered:
            self.unregistered -= 1
        recs = self.sites.get(key.partition(".")[0])
        if recs is not None:
            recs.remove(rec)
            if not recs:
                del self.sites[key.partition(".")[0]]
        # removed and added again with the same inventory token: the next never_seen episode
        # needs another id, so count generations
        self._removed[key] = self._removed.pop(key, 0) + 1
        if len(self._removed) > RETIRED_MAX:
            del self._removed[next(iter(self._removed))]
        if rec.episode is None:
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
    def restore(
        self,
        key: str,
        *,
        last_seen: float | None,
        boot: str | None,
        seq: int,
        registered: bool,
        episode: Episode | None,
        token: str = "",
    ) -> Record:
        """Put back a node from persisted state (times already converted to monotonic)."""
        rec = Record(key, registered=registered, hold=self.hold_all)
        rec.last_seen = last_seen
        rec.boot = boot
        rec.seq = seq
        rec.episode = episode
        rec.token = token
        old = self.nodes.get(key)
        if old is not None:
            self.unregister(key, self.started)
        self._add(rec)
        if episode is not None:
            self.open.add(key)
        self._schedule(rec, self._due(rec))
        return rec

    def set_episode(self, rec: Record, episode: Episode | None) -> None:
        """Replace a restored node's episode (the episodes document is newer than shards)."""
        rec.episode = episode
        if episode is None:
            self.open.discard(rec.key)
        else:
            self.open.add(rec.key)
        self._reschedule(rec)

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
