"""Operator commands on the control plane: ``fleetwatch node ...`` and ``fleetwatch desired ...``.

Every write is a compare-and-set: ``--if-revision N`` names the revision the operator last saw
(0 = "must not exist yet"); without it the command reads the current revision and writes against
that, so a concurrent writer makes it fail loudly instead of being silently overwritten.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import (
    BadRequestError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from fleetwatch.options import Parser, add_connection, duration, node_id, whole_number
from shared.bootstrap import FleetStore, ensure_fleet
from shared.bus import connect_once
from shared.codec import decode_document, encode_document
from shared.errors import BrokerUnreachable, DecodeError, RevisionConflict
from shared.identity import NodeId
from shared.inventory import InventoryEntry, decode_entry
from shared.subjects import Subjects


class CommandError(Exception):
    """A failure to report on one line with exit status 1."""


async def _with_store(args: Any, body: Callable[[FleetStore], Awaitable[int]]) -> int:
    nc = await connect_once(args.nats, name="fleetwatch-cli")
    try:
        store = await ensure_fleet(nc.jetstream(timeout=5), Subjects(args.prefix))
        return await body(store)
    finally:
        await nc.close()


def _run(args: Any, body: Callable[[FleetStore], Awaitable[int]]) -> int:
    try:
        return asyncio.run(_with_store(args, body))
    except (CommandError, BrokerUnreachable, RevisionConflict) as e:
        print(f"fleetwatch: error: {e}", file=sys.stderr)
        return 1


async def _current_revision(kv: KeyValue, key: str) -> int:
    """The key's latest revision; 0 if it has never existed or was deleted."""
    try:
        return (await kv.get(key)).revision or 0
    except (KeyNotFoundError, KeyDeletedError, NotFoundError):
        return 0


async def cas_put(kv: KeyValue, key: str, value: bytes, *, if_revision: int | None) -> int:
    """Write ``value`` only if the key is still at ``if_revision`` (0: absent); new revision."""
    expected = await _current_revision(kv, key) if if_revision is None else if_revision
    try:
        if expected == 0:
            return await kv.create(key, value)
        return await kv.update(key, value, last=expected)
    except (KeyWrongLastSequenceError, BadRequestError) as e:
        now = await _current_revision(kv, key)
        raise RevisionConflict(
            f"{_who(key)} is at revision {now}, not {expected}: someone else wrote it; "
            f"read it again and retry with --if-revision {now}"
        ) from e


async def cas_delete(kv: KeyValue, key: str, *, if_revision: int | None) -> int:
    """Delete the key only if it is still at ``if_revision``; returns the revision deleted."""
    expected = await _current_revision(kv, key) if if_revision is None else if_revision
    if expected == 0:
        raise CommandError(f"{_who(key)} does not exist")
    try:
        await kv.delete(key, last=expected)
    except (KeyWrongLastSequenceError, BadRequestError) as e:
        now = await _current_revision(kv, key)
        raise RevisionConflict(f"{_who(key)} is at revision {now}, not {expected}") from e
    return expected


def _who(key: str) -> str:
    """A KV key as people write the node: dc1.n1 -> dc1/n1."""
    return key.replace(".", "/", 1)


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        import argparse

        raise argparse.ArgumentTypeError(f"label {text!r} must be KEY=VALUE")
    return key, value


def _url(text: str) -> str:
    import argparse
    from urllib.parse import urlsplit

    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL")
    if any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} contains white space; encode it (%20)")
    return text


# ---- node ---------------------------------------------------------------------------------


def node_parser() -> Parser:
    p = Parser(prog="fleetwatch node", description="The inventory of expected nodes.")
    sub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    add = sub.add_parser("add", help="add or update an expected node")
    add.add_argument("node", type=node_id, metavar="SITE/NODE")
    add.add_argument("--health-url", type=_url, help="URL the prober calls")
    add.add_argument("--label", type=_label, action="append", default=[], metavar="K=V")
    add.add_argument("--if-revision", type=whole_number("revision number", lo=0))
    rm = sub.add_parser("remove", help="stop expecting a node (closes its alerts as removed)")
    rm.add_argument("node", type=node_id, metavar="SITE/NODE")
    rm.add_argument("--if-revision", type=whole_number("revision number", lo=0))
    ls = sub.add_parser("list", help="list expected nodes")
    ls.add_argument("--json", action="store_true")
    mt = sub.add_parser("maintain", help="start or end a maintenance window (no pages during it)")
    mt.add_argument("node", type=node_id, metavar="SITE/NODE")
    g = mt.add_mutually_exclusive_group(required=True)
    g.add_argument("--for", dest="for_", type=duration, metavar="DURATION")
    g.add_argument("--end", action="store_true")
    for sp in (add, rm, ls, mt):
        add_connection(sp)
    return p


async def _read_entry(kv: KeyValue, node: NodeId) -> tuple[InventoryEntry | None, int]:
    try:
        e = await kv.get(node.key)
    except (KeyNotFoundError, KeyDeletedError, NotFoundError):
        return None, 0
    try:
        return decode_entry(node.key, e.value), e.revision or 0
    except DecodeError:
        return None, e.revision or 0


def node_main(argv: list[str]) -> int:
    """``fleetwatch node add|remove|list|maintain``."""
    args = node_parser().parse_args(argv)

    async def body(store: FleetStore) -> int:
        kv = store.nodes
        if args.action == "add":
            old, _ = await _read_entry(kv, args.node)
            labels = dict(old.labels) if old else {}
            labels.update(dict(args.label))
            entry = InventoryEntry(
                site=args.node.site,
                node=args.node.node,
                health_url=args.health_url or (old.health_url if old else None),
                labels=labels,
                maintenance_until=old.maintenance_until if old else None,
                added=old.added if old and old.added else time.time(),
            )
            rev = await cas_put(kv, args.node.key, entry.encode(), if_revision=args.if_revision)
            print(f"{'updated' if old else 'added'} {args.node} (revision {rev})")
        elif args.action == "remove":
            rev = await cas_delete(kv, args.node.key, if_revision=args.if_revision)
            print(f"removed {args.node} (was revision {rev})")
        elif args.action == "maintain":
            old, rev = await _read_entry(kv, args.node)
            if old is None:
                raise CommandError(f"{args.node} is not in the inventory")
            until = None if args.end else time.time() + args.for_
            new = old.model_copy(update={"maintenance_until": until})
            rev = await cas_put(kv, args.node.key, new.encode(), if_revision=rev)
            if until is None:
                print(f"{args.node}: maintenance ended (revision {rev})")
            else:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(until))
                print(f"{args.node}: in maintenance until {stamp} (revision {rev})")
        else:
            rows = await list_inventory(kv)
            if args.json:
                print(
                    json.dumps(
                        [dict(e.model_dump(exclude_none=True), revision=r) for e, r in rows],
                        indent=2,
                    )
                )
            else:
                _print_inventory(rows)
        return 0

    return _run(args, body)


async def list_inventory(kv: KeyValue) -> list[tuple[InventoryEntry, int]]:
    """Every readable inventory entry with its revision, sorted by node id."""
    try:
        keys = await kv.keys()
    except NoKeysError:
        return []
    rows = []
    for key in sorted(keys):
        try:
            e = await kv.get(key)
            rows.append((decode_entry(key, e.value), e.revision or 0))
        except (NotFoundError, DecodeError) as err:
            print(f"fleetwatch: warning: skipping {key}: {err}", file=sys.stderr)
    return rows


def _print_inventory(rows: list[tuple[InventoryEntry, int]]) -> None:
    if not rows:
        print("no nodes in the inventory")
        return
    print(f"{'NODE':<30} {'REV':>5}  {'HEALTH URL':<40} LABELS")
    now = time.time()
    for e, rev in rows:
        labels = ",".join(f"{k}={v}" for k, v in sorted(e.labels.items()))
        if e.maintenance_until and e.maintenance_until > now:
            labels = (labels + " " if labels else "") + "[maintenance]"
        print(f"{e.site + '/' + e.node:<30} {rev:>5}  {e.health_url or '-':<40} {labels}")


# ---- desired ------------------------------------------------------------------------------


def _document(text: str) -> dict[str, Any]:
    import argparse

    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise argparse.ArgumentTypeError(f"desired document is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        kind = "list/array" if isinstance(doc, list) else type(doc).__name__
        raise argparse.ArgumentTypeError(
            f'desired document is a {kind}; it must be a JSON object like \'{{"image":"app:v2"}}\''
        )
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def desired_parser() -> Parser:
    p = Parser(prog="fleetwatch desired", description="Each node's desired state document.")
    sub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    s = sub.add_parser("set", help="set a node's desired state (a JSON object)")
    s.add_argument("node", type=node_id, metavar="SITE/NODE")
    s.add_argument("document", type=_document, metavar="JSON")
    s.add_argument("--if-revision", type=whole_number("revision number", lo=0))
    g = sub.add_parser("get", help="print a node's desired state")
    g.add_argument("node", type=node_id, metavar="SITE/NODE")
    d = sub.add_parser(
        "delete", help="delete a node's desired state (the agent then changes nothing)"
    )
    d.add_argument("node", type=node_id, metavar="SITE/NODE")
    d.add_argument("--if-revision", type=whole_number("revision number", lo=0))
    for sp in (s, g, d):
        add_connection(sp)
    return p


def desired_main(argv: list[str]) -> int:
    """``fleetwatch desired set|get|delete``."""
    args = desired_parser().parse_args(argv)

    async def body(store: FleetStore) -> int:
        kv = store.desired
        key = args.node.key
        if args.action == "set":
            rev = await cas_put(
                kv, key, encode_document(args.document), if_revision=args.if_revision
            )
            print(f"{args.node}: desired state at revision {rev}")
        elif args.action == "delete":
            rev = await cas_delete(kv, key, if_revision=args.if_revision)
            print(f"{args.node}: desired state deleted (was revision {rev})")
        else:
            try:
                e = await kv.get(key)
            except (KeyNotFoundError, KeyDeletedError, NotFoundError):
                raise CommandError(f"{args.node} has no desired state") from None
            try:
                doc = decode_document(e.value, what=f"desired state of {args.node}")
            except DecodeError as err:
                raise CommandError(f"revision {e.revision}: {err}") from None
            print(
                json.dumps(
                    {"node": str(args.node), "revision": e.revision, "desired": doc},
                    indent=2,
                    sort_keys=True,
                )
            )
        return 0

    return _run(args, body)
