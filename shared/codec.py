"""Pure encode/decode of wire messages and KV documents.

Out: msgpack. In: msgpack, or a JSON object (first non-blank byte ``{``; ``[`` is recognised only
to say that an array is not an object). Every failure is one DecodeError whose ``reason`` is a
short metric label and whose text a person can act on.
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

import msgpack
from pydantic import ValidationError

from shared.errors import DecodeError
from shared.identity import NodeId
from shared.models import SUPPORTED_VERSIONS, Message, NodeMessage

MAX_PAYLOAD = 64 * 1024
"""Largest inbound message accepted, in bytes."""

M = TypeVar("M", bound=Message)
_BLANK = b" \t\r\n"


def encode(message: Message) -> bytes:
    """The msgpack bytes of a message."""
    return msgpack.packb(message.model_dump(), use_bin_type=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def parse_object(
    data: bytes, *, max_size: int = MAX_PAYLOAD, what: str = "message"
) -> dict[str, Any]:
    """Parse bytes (msgpack map or JSON object) into a dict; no schema applied."""
    if len(data) > max_size:
        raise DecodeError("too_large", f"{what} is {len(data)} bytes; the limit is {max_size}")
    if not data:
        raise DecodeError("empty", f"{what} is empty")
    head = data.lstrip(_BLANK)[:1]
    if head in (b"{", b"["):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError("not_utf8", f"{what} looks like JSON but is not UTF-8: {e}") from None
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise DecodeError("bad_json", f"{what} is nested too deeply") from None
        except ValueError as e:
            raise DecodeError("bad_json", f"{what} is not valid JSON: {e}") from None
    else:
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except UnicodeDecodeError as e:
            raise DecodeError("not_utf8", f"{what} has a string that is not UTF-8: {e}") from None
        except Exception as e:  # msgpack raises a zoo of types for junk
            raise DecodeError(
                "bad_msgpack", f"{what} is neither msgpack nor a JSON object ({e})"
            ) from None
    if not isinstance(obj, dict):
        raise DecodeError("not_a_map", f"{what} is a {_kind(obj)}; expected an object (map)")
    return obj


def _kind(obj: object) -> str:
    if isinstance(obj, list):
        return "list/array"
    return type(obj).__name__


def _check_version(obj: dict[str, Any], what: str) -> None:
    if "v" not in obj:
        raise DecodeError("no_version", f"{what} has no schema version field 'v'")
    v = obj["v"]
    if isinstance(v, bool) or not isinstance(v, int):
        raise DecodeError("bad_version", f"{what} version 'v' must be an integer, got {v!r}")
    if v not in SUPPORTED_VERSIONS:
        raise DecodeError(
            "bad_version",
            f"{what} has schema version {v}; this build reads {sorted(SUPPORTED_VERSIONS)}",
        )


def describe(error: ValidationError) -> str:
    """One line naming every bad field and why."""
    parts = []
    for err in error.errors(include_url=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "message"
        got = err.get("input")
        got_text = repr(got)
        if len(got_text) > 60:
            got_text = got_text[:57] + "..."
        if isinstance(got, float) and not math.isfinite(got):
            got_text = repr(got)
        parts.append(f"{loc}: {err['msg']} (got {got_text})")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def decode(
    model: type[M],
    data: bytes,
    *,
    subject_node: NodeId | None = None,
    max_size: int = MAX_PAYLOAD,
) -> M:
    """Decode and validate one message; ``subject_node`` must match a node message's body."""
    what = model.__name__
    obj = parse_object(data, max_size=max_size, what=what)
    _check_version(obj, what)
    try:
        msg = model.model_validate(obj)
    except ValidationError as e:
        raise DecodeError("invalid", f"{what} rejected: {describe(e)}") from None
    if subject_node is not None and isinstance(msg, NodeMessage):
        if msg.site != subject_node.site or msg.node != subject_node.node:
            raise DecodeError(
                "wrong_subject",
                f"{what} body names {msg.site}/{msg.node} but its subject names {subject_node}",
            )
    return msg


def encode_document(doc: dict[str, Any]) -> bytes:
    """A KV document (inventory entry, desired state) as compact UTF-8 JSON."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, sort_keys=True).encode()


def decode_document(
    data: bytes | None, *, what: str, max_size: int = 1024 * 1024
) -> dict[str, Any]:
    """A KV document: a JSON object (or msgpack map); anything else is a DecodeError."""
    if data is None:
        raise DecodeError("empty", f"{what} has no value")
    return parse_object(data, max_size=max_size, what=what)
