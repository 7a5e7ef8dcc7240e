"""Persisting the deadman's state to its KV bucket, in batches, so a restart keeps its promises.

The state is split into ``SHARDS`` keys (``shard.NN``) by a hash of the node key, plus one
``meta`` key (when it was saved, by whom) and one ``episodes`` key with every open alert. A full
save (every ``--persist-every``) writes every shard whose bytes changed; an alert transition
triggers a small save of ``episodes`` alone, soon after, so a kill -9 right after a page does
not page again; it also holds the alerts the broker has not acknowledged yet, which the next
start publishes again (same ``Nats-Msg-Id``), so an alert queued during a broker outage
survives a restart. Nothing is written per heartbeat. On load ``episodes`` overrides the shards.
Times are stored as wall clock (monotonic time means nothing to the next process) and converted
back on load.

A shard value is a msgpack map ``SITE.NODE -> [last_seen, boot, seq, registered, token,
episode]`` where ``episode`` is ``None`` or ``[id, kind, since, fired_at, notified, count,
severity, site_alert]``. ``episodes`` also holds the open site alerts and their member nodes.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from nats.js.errors import KeyDeletedError, KeyNotFoundError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from services.deadman.publisher import Outgoing
from services.deadman.tracker import Episode, Record, SiteEpisode, Tracker

log = logging.getLogger(__name__)

SHARDS = 64
META = "meta"
EPISODES = "episodes"
FORMAT = 1
CHUNK = 2000


def shard_of(key: str) -> int:
    """The shard a node's state lives in."""
    return zlib.crc32(key.encode()) % SHARDS


def shard_key(n: int) -> str:
    return f"shard.{n:02d}"


@dataclass
class Loaded:
    """What a load found."""

    saved_at: float | None = None  # wall time of the last save, None if there was none
    saved_by: str | None = None
    nodes: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    outbox: list[Outgoing] = field(default_factory=list)  # alerts never acknowledged


def _row(
    rec_last: float | None,
    boot: str | None,
    seq: int,
    registered: bool,
    token: str,
    ep: list[Any] | None,
) -> list[Any]:
    return [rec_last, boot, seq, registered, token, ep]


def episode_row(ep: Episode, to_wall: Callable[[float], float]) -> list[Any]:
    """An open episode as stored (wall-clock times)."""
    return [
        ep.alert_id,
        ep.kind,
        to_wall(ep.since),
        to_wall(ep.fired_at),
        to_wall(ep.notified),
        ep.count,
        ep.severity,
        ep.site_alert,
    ]


def episodes_doc(
    tracker: Tracker,
    to_wall: Callable[[float], float],
    wall_now: float,
    outbox: list[Outgoing] | None = None,
) -> dict[str, Any]:
    """Every open episode with enough of its node to restore it alone, and the alerts not yet
    acknowledged by the broker (republished at start, same Nats-Msg-Id)."""
    rows = {}
    for key in tracker.open:
        rec = tracker.nodes.get(key)
        if rec is None or rec.episode is None:
            continue
        last = None if rec.last_seen is None else to_wall(rec.last_seen)
        rows[key] = _row(
            last, rec.boot, rec.seq, rec.registered, rec.token, episode_row(rec.episode, to_wall)
        )
    sites = {
        site: [ep.alert_id, to_wall(ep.since), to_wall(ep.fired_at), sorted(ep.members)]
        for site, ep in tracker.site_alerts.items()
    }
    queued = [[o.subject, o.data, o.msg_id, o.alert_id, o.kind, o.state] for o in outbox or ()]
    return {"v": FORMAT, "saved_at": wall_now, "open": rows, "sites": sites, "outbox": queued}


def snapshot(tracker: Tracker, to_wall: Callable[[float], float]) -> list[dict[str, list[Any]]]:
    """The tracker's state as shard maps, times in wall clock."""
    shards: list[dict[str, list[Any]]] = [{} for _ in range(SHARDS)]
    add_rows(shards, list(tracker.nodes.items()), to_wall)
    return shards


def add_rows(
    shards: list[dict[str, list[Any]]],
    items: list[tuple[str, Record]],
    to_wall: Callable[[float], float],
) -> None:
    """Put the rows of ``items`` into their shards."""
    for key, rec in items:
        ep = rec.episode
        ep_row = None if ep is None else episode_row(ep, to_wall)
        last = None if rec.last_seen is None else to_wall(rec.last_seen)
        shards[shard_of(key)][key] = _row(
            last, rec.boot, rec.seq, rec.registered, rec.token, ep_row
        )


class StateStore:
    """Batched saves to and a load from the deadman's KV bucket."""

    def __init__(
        self, kv: KeyValue, *, instance: str, outbox: Callable[[], list[Outgoing]] | None = None
    ) -> None:
        self.kv = kv
        self.instance = instance
        self.outbox = outbox
        self._written: dict[int, int] = {}  # shard -> hash of the bytes last written
        self.saves = 0

    async def save(
        self, tracker: Tracker, *, to_wall: Callable[[float], float], wall_now: float
    ) -> int:
        """Write every changed shard and the meta key; returns the number of shards written."""
        # built in chunks so a save at 100k nodes never stalls heartbeat ingest or judging
        items = list(tracker.nodes.items())
        shards: list[dict[str, list[Any]]] = [{} for _ in range(SHARDS)]
        for i in range(0, len(items), CHUNK):
            add_rows(shards, items[i : i + CHUNK], to_wall)
            await asyncio.sleep(0)
        written = 0
        for n, shard in enumerate(shards):
            if not shard and n not in self._written:
                continue
            data = msgpack.packb(shard, use_bin_type=True)
            digest = zlib.crc32(data)
            if self._written.get(n) == digest:
                continue
            await self.kv.put(shard_key(n), data)
            self._written[n] = digest
            written += 1
            await asyncio.sleep(0)  # let heartbeats in between shards
        await self.save_episodes(tracker, to_wall=to_wall, wall_now=wall_now)
        meta = {"v": FORMAT, "saved_at": wall_now, "instance": self.instance}
        await self.kv.put(META, msgpack.packb(meta, use_bin_type=True))
        self.saves += 1
        return written

    async def save_episodes(
        self, tracker: Tracker, *, to_wall: Callable[[float], float], wall_now: float
    ) -> None:
        """The small, urgent save: every open episode."""
        doc = episodes_doc(
            tracker, to_wall, wall_now, self.outbox() if self.outbox is not None else None
        )
        await self.kv.put(EPISODES, msgpack.packb(doc, use_bin_type=True))

    async def load(self, tracker: Tracker, *, to_mono: Callable[[float], float]) -> Loaded:
        """Restore every node found; unreadable shards or rows are counted and skipped."""
        out = Loaded()
        episodes: Any = None
        sites: Any = None
        try:
            keys = await self.kv.keys()
        except NoKeysError:
            return out
        for key in keys:
            try:
                entry = await self.kv.get(key)
            except (KeyNotFoundError, KeyDeletedError, NotFoundError):
                continue
            if entry.value is None:
                continue
            try:
                obj = msgpack.unpackb(entry.value, raw=False)
            except Exception:
                out.rejected["bad_msgpack"] = out.rejected.get("bad_msgpack", 0) + 1
                continue
            if not isinstance(obj, dict):
                out.rejected["not_a_map"] = out.rejected.get("not_a_map", 0) + 1
                continue
            if key == META:
                saved_at = obj.get("saved_at")
                if isinstance(saved_at, float | int) and not isinstance(saved_at, bool):
                    out.saved_at = float(saved_at)
                by = obj.get("instance")
                out.saved_by = by if isinstance(by, str) else None
                continue
            if key == EPISODES:
                episodes = obj.get("open")
                sites = obj.get("sites")
                out.outbox = self._outbox(obj.get("outbox"), out)
                continue
            if not key.startswith("shard."):
                continue
            for node_key, row in obj.items():
                try:
                    self._restore_row(tracker, node_key, row, to_mono)
                    out.nodes += 1
                except (TypeError, ValueError, IndexError) as e:
                    out.rejected["bad_row"] = out.rejected.get("bad_row", 0) + 1
                    log.warning("state: skipping %r: %s", node_key, e)
        if isinstance(episodes, dict):
            self._apply_episodes(tracker, episodes, to_mono, out)
        if isinstance(sites, dict):
            for site, row in sites.items():
                try:
                    alert_id, since, fired_at, members = row
                    site_ep = SiteEpisode(
                        str(alert_id), to_mono(float(since)), to_mono(float(fired_at))
                    )
                    site_ep.members = {str(m) for m in members if m in tracker.open}
                    tracker.site_alerts[str(site)] = site_ep
                except (TypeError, ValueError) as e:
                    out.rejected["bad_site"] = out.rejected.get("bad_site", 0) + 1
                    log.warning("state: skipping site alert of %r: %s", site, e)
        return out

    def _apply_episodes(
        self, tracker: Tracker, rows: dict[Any, Any], to_mono: Callable[[float], float], out: Loaded
    ) -> None:
        """The episodes document is at least as new as any shard: it decides what is open."""
        for old in tracker.nodes.values():
            if old.episode is not None and old.key not in rows:
                tracker.set_episode(old, None)
        for node_key, row in rows.items():
            try:
                rec = tracker.nodes.get(node_key)
                if rec is None:
                    self._restore_row(tracker, node_key, row, to_mono)
                    out.nodes += 1
                else:
                    tracker.set_episode(rec, self._episode(row[5], to_mono))
            except (TypeError, ValueError, IndexError) as e:
                out.rejected["bad_episode"] = out.rejected.get("bad_episode", 0) + 1
                log.warning("state: skipping episode of %r: %s", node_key, e)

    @staticmethod
    def _outbox(rows: Any, out: Loaded) -> list[Outgoing]:
        items: list[Outgoing] = []
        for row in rows if isinstance(rows, list) else ():
            try:
                subject, data, mid, alert_id, kind, state = row
                if not (isinstance(subject, str) and isinstance(data, bytes)):
                    raise TypeError("subject must be text and data bytes")
                items.append(
                    Outgoing(subject, data, str(mid), str(alert_id), str(kind), str(state))
                )
            except (TypeError, ValueError) as e:
                out.rejected["bad_outbox"] = out.rejected.get("bad_outbox", 0) + 1
                log.warning("state: skipping a queued alert: %s", e)
        return items

    @staticmethod
    def _episode(ep: Any, to_mono: Callable[[float], float]) -> Episode | None:
        if ep is None:
            return None
        alert_id, kind, since, fired_at, notified, count, severity, *rest = ep
        if kind not in ("silent", "never_seen"):
            raise ValueError(f"unknown episode kind {kind!r}")
        if severity not in ("page", "warning", "info"):
            raise ValueError(f"unknown severity {severity!r}")
        episode = Episode(
            alert_id=str(alert_id),
            kind=kind,
            since=to_mono(float(since)),
            fired_at=to_mono(float(fired_at)),
            count=int(count),
            severity=severity,
        )
        episode.notified = to_mono(float(notified))
        if rest and isinstance(rest[0], str):
            episode.site_alert = rest[0]
        return episode

    @staticmethod
    def _restore_row(
        tracker: Tracker, key: str, row: Any, to_mono: Callable[[float], float]
    ) -> None:
        from shared.identity import NodeId

        NodeId.from_key(key)  # raises InvalidNodeId (a ValueError) on junk
        last, boot, seq, registered, token, ep = row
        episode = StateStore._episode(ep, to_mono)
        tracker.restore(
            key,
            last_seen=None if last is None else to_mono(float(last)),
            boot=None if boot is None else str(boot),
            seq=int(seq),
            registered=bool(registered),
            episode=episode,
            token=str(token),
        )
