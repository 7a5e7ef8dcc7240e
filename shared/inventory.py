"""The control plane's documents: inventory entries (``PREFIX_nodes``) and desired state
(``PREFIX_desired``), and the watcher that keeps a service's view of the inventory current.

Values are JSON objects so any NATS client can read them (``nats kv get fleet_nodes dc1.n1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from nats.js.errors import KeyDeletedError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from shared.codec import decode_document, describe, encode_document
from shared.errors import DecodeError, InvalidNodeId
from shared.identity import NodeId
from shared.models import Part, Timestamp

log = logging.getLogger(__name__)

REPLAY_TIMEOUT = 10.0
"""Longest wait for the next entry of a watch's initial replay before giving up on it."""

LabelText = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class InventoryEntry(BaseModel):
    """One expected node: where to probe it, its labels, its maintenance window."""

    model_config = ConfigDict(frozen=True, strict=True, allow_inf_nan=False, extra="ignore")

    v: Literal[1] = 1
    site: Part
    node: Part
    health_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    labels: dict[LabelText, Annotated[str, StringConstraints(max_length=1024)]] = Field(
        default_factory=dict
    )
    maintenance_until: Timestamp | None = None
    added: Timestamp | None = None

    @property
    def node_id(self) -> NodeId:
        return NodeId(self.site, self.node)

    def encode(self) -> bytes:
        return encode_document(self.model_dump(exclude_none=True))


def decode_entry(key: str, value: bytes | None) -> InventoryEntry:
    """Validate an inventory value stored under ``key``; DecodeError on anything wrong."""
    try:
        node = NodeId.from_key(key)
    except InvalidNodeId as e:
        raise DecodeError("bad_key", str(e)) from None
    obj = decode_document(value, what=f"inventory entry {key}")
    try:
        entry = InventoryEntry.model_validate(obj)
    except ValidationError as e:
        raise DecodeError("invalid", f"inventory entry {key} rejected: {describe(e)}") from None
    if entry.node_id != node:
        raise DecodeError("wrong_key", f"inventory entry under {key} names {entry.node_id}")
    return entry


DesiredStatus = Literal["ok", "missing", "deleted", "invalid", "read_error"]


@dataclass(frozen=True)
class DesiredRead:
    """The outcome of one real read of a node's desired state. Only ``ok`` may change a node."""

    status: DesiredStatus
    revision: int | None = None
    document: dict[str, Any] | None = None
    error: str = ""


async def read_desired(kv: KeyValue, node: NodeId, *, timeout: float = 2.0) -> DesiredRead:
    """Read the desired document now (never from a cache)."""
    try:
        entry = await asyncio.wait_for(kv.get(node.key), timeout)
    except (KeyDeletedError, KeyNotFoundError) as e:
        # kv.get turns a delete/purge marker into KeyNotFoundError carrying the marker's op
        if isinstance(e, KeyDeletedError) or getattr(e, "op", None) is not None:
            rev = getattr(getattr(e, "entry", None), "revision", None)
            return DesiredRead(
                "deleted", revision=rev, error=f"desired state of {node} was deleted"
            )
        # kv.get also turns "stream not found" (err 10059) into KeyNotFoundError: a missing
        # bucket is a failed read, not a missing key.
        if getattr(e.__context__, "err_code", None) == 10059:
            return DesiredRead("read_error", error="desired read failed: bucket not found")
        return DesiredRead("missing", error=f"no desired state for {node}")
    except TimeoutError:
        return DesiredRead("read_error", error=f"desired read timed out after {timeout}s")
    except Exception as e:
        return DesiredRead("read_error", error=f"desired read failed: {type(e).__name__}: {e}")
    if entry.value is None or entry.operation in ("DEL", "PURGE"):
        return DesiredRead("deleted", revision=entry.revision, error="delete marker or expired")
    try:
        doc = decode_document(entry.value, what=f"desired state of {node}")
    except DecodeError as e:
        return DesiredRead("invalid", revision=entry.revision, error=str(e))
    return DesiredRead("ok", revision=entry.revision, document=doc)


InventoryChange = Callable[[NodeId, InventoryEntry | None], Awaitable[None] | None]


class InventoryView:
    """A service's live copy of the inventory: a KV watch for changes, a periodic full re-read
    because a watch can go quiet after a server restart (NATS-NOTES.md). ``on_change`` gets
    ``(node, entry)`` for an added/changed node and ``(node, None)`` for a removed one.
    Bad values are logged and counted in ``rejected`` and never remove a node already known.
    """

    def __init__(
        self, kv: KeyValue, *, on_change: InventoryChange | None = None, resync_every: float = 60.0
    ) -> None:
        self.kv = kv
        self.on_change = on_change
        self.resync_every = resync_every
        self.entries: dict[NodeId, InventoryEntry] = {}
        self.rejected: dict[str, int] = {}
        self.synced = asyncio.Event()

    async def _emit(self, node: NodeId, entry: InventoryEntry | None) -> None:
        if self.on_change is not None:
            r = self.on_change(node, entry)
            if r is not None:
                await r

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        log.warning("inventory: %s", detail)

    async def _apply(self, key: str, value: bytes | None, op: str | None) -> NodeId | None:
        if op in ("DEL", "PURGE") or value is None:
            try:
                node = NodeId.from_key(key)
            except InvalidNodeId as e:
                self._reject("bad_key", str(e))
                return None
            if self.entries.pop(node, None) is not None:
                await self._emit(node, None)
            return node
        try:
            entry = decode_entry(key, value)
        except DecodeError as e:
            self._reject(e.reason, str(e))
            return None
        if self.entries.get(entry.node_id) != entry:
            self.entries[entry.node_id] = entry
            await self._emit(entry.node_id, entry)
        return entry.node_id

    async def _replay(self, watcher: Any, stop: asyncio.Event) -> None:
        """Read the watch's initial replay (the latest entry of every key, delete markers
        included) up to its end marker, then drop nodes the replay did not show.

        The listing comes from the same watch that then follows changes, so nothing falls in a
        gap between "list" and "watch", and only a complete replay removes anything: an error or
        a timeout part-way leaves every known node in place.
        """
        present: set[NodeId] = set()
        while not stop.is_set():
            try:
                upd = await watcher.updates(timeout=REPLAY_TIMEOUT)
            except TimeoutError:
                raise TimeoutError("inventory replay did not finish") from None
            if upd is None:
                break
            node = await self._apply(upd.key, upd.value, upd.operation)
            if upd.operation in ("DEL", "PURGE") or upd.value is None:
                continue
            if node is not None:
                present.add(node)
            else:
                # an unreadable value keeps whatever we knew under that key
                with contextlib.suppress(InvalidNodeId):
                    present.add(NodeId.from_key(upd.key))
        else:
            return
        for node in [n for n in self.entries if n not in present]:
            del self.entries[node]
            await self._emit(node, None)
        self.synced.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Replay and follow a watch, starting a fresh one every ``resync_every`` (a watch can
        go quiet after a server restart, NATS-NOTES.md); until ``stop``."""
        failures, last_log = 0, 0.0
        while not stop.is_set():
            try:
                watcher = await self.kv.watchall()
                try:
                    await self._replay(watcher, stop)
                    await self._follow(watcher, stop)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # keep every known node (an outage or a deleted bucket is not "all removed");
                # retry with a growing pause and log once per streak, then every 30 s
                failures += 1
                now = time.monotonic()
                if failures == 1 or now - last_log >= 30:
                    log.warning(
                        "inventory watch failed %d time(s) (%s: %s); keeping %d known "
                        "nodes and retrying",
                        failures,
                        type(e).__name__,
                        e,
                        len(self.entries),
                    )
                    last_log = now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(5.0, 0.5 * 2 ** min(failures, 4)))
            else:
                failures = 0

    async def _follow(self, watcher: Any, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_resync = loop.time() + self.resync_every
        while not stop.is_set():
            left = next_resync - loop.time()
            if left <= 0:
                return  # the caller resyncs and re-watches
            try:
                upd = await watcher.updates(timeout=min(left, 1.0))
            except TimeoutError:
                continue
            if upd is None:
                continue  # end of the initial replay
            await self._apply(upd.key, upd.value, upd.operation)
