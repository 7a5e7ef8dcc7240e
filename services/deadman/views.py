"""What the deadman shows: the status reply (one JSON object) and its parts."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from services.deadman.tracker import Record, Tracker

STATUS_LIMIT = 2000  # keeps the reply well under the 1 MiB default max_payload


def node_view(
    tracker: Tracker, rec: Record, now: float, to_wall: Callable[[float], float]
) -> dict[str, Any]:
    """One node as the status reply shows it."""
    site, _, node = rec.key.partition(".")
    state = tracker.state(rec, now)
    ep = rec.episode
    since: float | None = None
    if ep is not None:
        since = to_wall(ep.since)
    elif rec.last_seen is not None and state in ("late", "down"):
        since = to_wall(rec.last_seen + tracker.window)
    return {
        "site": site,
        "node": node,
        "state": state,
        "registered": rec.registered,
        "last_seen": None if rec.last_seen is None else to_wall(rec.last_seen),
        "since": since,
        "alert_id": None if ep is None else ep.alert_id,
        "rev": rec.rev,
        "pid": rec.pid,
        "host": rec.host,
        "boot": rec.boot,
        "maintenance": rec.maintenance is not None and rec.maintenance > now,
        "flapping": tracker.flapping(rec, now),
        "severity": None if ep is None else ep.severity,
    }


def nodes_view(
    tracker: Tracker, now: float, to_wall: Callable[[float], float], *, limit: int, site: str | None
) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` nodes (sorted by key, optionally one site) and how many there are."""
    if site is None and limit == 0:
        return [], len(tracker.nodes)
    keys = sorted(k for k in tracker.nodes if site is None or k.partition(".")[0] == site)
    return [node_view(tracker, tracker.nodes[k], now, to_wall) for k in keys[:limit]], len(keys)


def parse_request(data: bytes) -> tuple[int, str | None]:
    """``{"limit": N, "site": S}`` (both optional; anything else means the defaults)."""
    limit, site = STATUS_LIMIT, None
    if data.strip():
        try:
            req = json.loads(data)
        except ValueError:
            return limit, site
        if isinstance(req, dict):
            if isinstance(req.get("limit"), int) and not isinstance(req["limit"], bool):
                limit = max(0, req["limit"])
            if isinstance(req.get("site"), str):
                site = req["site"]
    return limit, site
