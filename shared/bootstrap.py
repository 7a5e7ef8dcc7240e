"""Create the JetStream pieces fleetwatch needs, idempotently, from any service at start.

An existing bucket or stream whose configuration differs from ours is reported (logged and
returned), never recreated: an operator may have tuned it, and recreating would lose data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from shared.errors import BootstrapConflict
from shared.subjects import Subjects

log = logging.getLogger(__name__)

ALERT_DUPLICATE_WINDOW = 120.0
ALERT_MAX_AGE = 30 * 86400.0


@dataclass(frozen=True)
class FleetStore:
    """Handles on the fleet's shared JetStream pieces."""

    nodes: KeyValue
    desired: KeyValue
    conflicts: tuple[str, ...]


async def ensure_kv(
    js: JetStreamContext, config: KeyValueConfig, *, strict: bool = False
) -> tuple[KeyValue, list[str]]:
    """Open a KV bucket, creating it if missing; return it and any config differences."""
    try:
        kv = await js.key_value(config.bucket)
    except (BucketNotFoundError, NotFoundError):
        try:
            kv = await js.create_key_value(config)
        except BadRequestError:
            # Someone created it between our look and our create (or with another config).
            kv = await js.key_value(config.bucket)
    info = await js.stream_info(f"KV_{config.bucket}")
    have = info.config
    diffs = []
    if (have.max_msgs_per_subject or 1) != (config.history or 1):
        diffs.append(f"history {have.max_msgs_per_subject} (want {config.history})")
    if (have.num_replicas or 1) != (config.replicas or 1):
        diffs.append(f"replicas {have.num_replicas} (want {config.replicas})")
    if (have.max_age or 0) != (config.ttl or 0):
        diffs.append(f"ttl {have.max_age} (want {config.ttl})")
    found = [f"bucket {config.bucket}: {d}" for d in diffs]
    _report(found, strict)
    return kv, found


async def ensure_stream(
    js: JetStreamContext, config: StreamConfig, *, strict: bool = False
) -> list[str]:
    """Create a stream if missing; return the differences of an existing one."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return []
        except BadRequestError:
            info = await js.stream_info(config.name)
    have = info.config
    diffs = []
    if sorted(have.subjects or []) != sorted(config.subjects or []):
        diffs.append(f"subjects {have.subjects} (want {config.subjects})")
    if (have.duplicate_window or 0) != (config.duplicate_window or 0):
        diffs.append(f"duplicate_window {have.duplicate_window} (want {config.duplicate_window})")
    if (have.num_replicas or 1) != (config.num_replicas or 1):
        diffs.append(f"replicas {have.num_replicas} (want {config.num_replicas})")
    found = [f"stream {config.name}: {d}" for d in diffs]
    _report(found, strict)
    return found


def _report(found: list[str], strict: bool) -> None:
    for d in found:
        log.warning("existing JetStream config differs, keeping it: %s", d)
    if strict and found:
        raise BootstrapConflict("; ".join(found))


async def ensure_fleet(
    js: JetStreamContext, subjects: Subjects, *, replicas: int = 1, strict: bool = False
) -> FleetStore:
    """The inventory and desired buckets and the alert stream; safe to call from every service."""
    nodes, c1 = await ensure_kv(
        js,
        KeyValueConfig(
            bucket=subjects.nodes_bucket, history=5, replicas=replicas, storage=StorageType.FILE
        ),
        strict=strict,
    )
    desired, c2 = await ensure_kv(
        js,
        KeyValueConfig(
            bucket=subjects.desired_bucket, history=10, replicas=replicas, storage=StorageType.FILE
        ),
        strict=strict,
    )
    c3 = await ensure_alert_stream(js, subjects, replicas=replicas, strict=strict)
    return FleetStore(nodes=nodes, desired=desired, conflicts=tuple(c1 + c2 + c3))


async def ensure_alert_stream(
    js: JetStreamContext, subjects: Subjects, *, replicas: int = 1, strict: bool = False
) -> list[str]:
    """The alert stream (``PREFIX_ALERTS`` on ``PREFIX.alert.>``); publishers call this again
    when a publish finds no stream, so a stream deleted at runtime comes back."""
    return await ensure_stream(
        js,
        StreamConfig(
            name=subjects.alerts_stream,
            subjects=[subjects.alert_all],
            duplicate_window=ALERT_DUPLICATE_WINDOW,
            max_age=ALERT_MAX_AGE,
            storage=StorageType.FILE,
            num_replicas=replicas,
        ),
        strict=strict,
    )
