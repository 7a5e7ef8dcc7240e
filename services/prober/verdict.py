"""The verdict on one probe: a pure function of what came back, the time, and the rules.

Order of the checks, and why: the status line first (a redirect or a 5xx is decided without the
body), then the body must be a JSON object carrying a timestamp, then freshness (a stale or future
timestamp is a lie and outranks anything the body claims), and last the body's own ``ok`` flag.
Transport failures (refused, timeout, dns) never reach ``judge``; ``classify_error`` names them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.models import Verdict

DEFAULT_MAX_BODY = 64 * 1024

# Magnitude bands for numeric timestamps: seconds until year 5138, then ms, us, ns.
_SECONDS_MAX = 1e11
_MILLIS_MAX = 1e14
_MICROS_MAX = 1e17
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})?$"
)


@dataclass(frozen=True)
class Rules:
    """What a fresh answer must look like."""

    max_age: float = 30.0
    future_tolerance: float = 5.0
    ts_fields: Sequence[str] = ("ts",)
    max_body: int = DEFAULT_MAX_BODY


@dataclass(frozen=True)
class Judgement:
    """A verdict with the body age (seconds, None when unknown) and a line for people."""

    verdict: Verdict
    age: float | None
    detail: str

    @property
    def ok(self) -> bool:
        return self.verdict == "fresh"


class BadTimestamp(ValueError):
    """A timestamp value fleetwatch refuses to interpret."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def parse_timestamp(value: object) -> float:
    """Unix seconds from seconds, ms, us or ns (by magnitude) or an RFC 3339 string with offset."""
    if isinstance(value, bool) or value is None:
        raise BadTimestamp(f"{json.dumps(value)} is not a timestamp")
    if isinstance(value, int | float):
        number = float(value)
        if not math.isfinite(number):
            raise BadTimestamp(f"{value!r} is not a finite timestamp")
        if number <= 0:
            raise BadTimestamp(f"{value!r} is not a positive timestamp")
        if number < _SECONDS_MAX:
            return number
        if number < _MILLIS_MAX:
            return number / 1e3
        if number < _MICROS_MAX:
            return number / 1e6
        return number / 1e9
    if isinstance(value, str):
        text = value.strip()
        m = _RFC3339.match(text)
        if m is None:
            raise BadTimestamp(f"{text[:40]!r} is not an RFC 3339 date-time")
        if m.group(2) is None:
            raise BadTimestamp(f"{text[:40]!r} has no UTC offset (naive time is ambiguous)")
        try:
            when = datetime.fromisoformat(text[:10] + "T" + text[11:].upper())
        except ValueError as e:
            raise BadTimestamp(f"{text[:40]!r}: {e}") from None
        return when.timestamp()
    raise BadTimestamp(f"a {type(value).__name__} is not a timestamp")


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f}s"


def judge(
    *,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    truncated: bool,
    now: float,
    rules: Rules,
) -> Judgement:
    """The verdict on one HTTP answer received at wall time ``now``."""
    if 300 <= status < 400:
        where = headers.get("Location") or headers.get("location") or "nowhere"
        return Judgement("redirect", None, f"HTTP {status} to {where[:200]} (not followed)")
    if status >= 500:
        return Judgement("unhealthy", None, f"HTTP {status}")
    if not 200 <= status < 300:
        return Judgement("http_error", None, f"HTTP {status}")
    if truncated:
        return Judgement("bad_body", None, f"body larger than {rules.max_body} bytes")
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        kind = headers.get("Content-Type") or headers.get("content-type") or "no content type"
        return Judgement("bad_body", None, f"body is not JSON ({kind}): {str(e)[:120]}")
    if not isinstance(doc, dict):
        return Judgement("bad_body", None, f"body is a JSON {type(doc).__name__}, not an object")
    field = next((f for f in rules.ts_fields if f in doc), None)
    if field is None:
        names = ", ".join(rules.ts_fields)
        return Judgement("bad_body", None, f"body has no timestamp field ({names})")
    try:
        ts = parse_timestamp(doc[field])
    except BadTimestamp as e:
        return Judgement("bad_body", None, f"field {field!r}: {e}")
    age = now - ts
    if age > rules.max_age:
        return Judgement("stale", age, f"body is {_fmt(age)} old (max {_fmt(rules.max_age)})")
    if -age > rules.future_tolerance:
        return Judgement(
            "future",
            age,
            f"body is {_fmt(-age)} ahead of our clock (tolerance {_fmt(rules.future_tolerance)})",
        )
    ok = doc.get("ok", True)
    if not isinstance(ok, bool):
        return Judgement("bad_body", age, f"field 'ok' must be true or false, got {ok!r}"[:200])
    if not ok:
        return Judgement("unhealthy", age, "body says ok: false")
    return Judgement("fresh", age, f"fresh, {_fmt(age)} old")


_CUT_SHORT = frozenset({"ClientPayloadError", "ContentLengthError", "TransferEncodingError"})
_MALFORMED = frozenset(
    {
        "ClientResponseError",
        "BadStatusLine",
        "BadHttpMessage",
        "LineTooLong",
        "InvalidHeader",
        "BadHttpMethod",
    }
)


def classify_error(exc: BaseException) -> tuple[Verdict, str]:
    """Name a failure without a judgeable answer: ``timeout``, ``dns``, ``refused`` (any other
    unreachability), ``http_error`` (not HTTP at all) or ``bad_body`` (body cut short)."""
    import socket

    seen: set[int] = set()
    cur: BaseException | None = exc
    chain: list[BaseException] = []
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        os_error = getattr(cur, "os_error", None)  # aiohttp keeps the socket error here
        if isinstance(os_error, BaseException) and id(os_error) not in seen:
            seen.add(id(os_error))
            chain.append(os_error)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, TimeoutError):
            return "timeout", "no complete answer before the deadline"
    for e in chain:
        name = type(e).__name__
        if isinstance(e, socket.gaierror) or "DNS" in name:
            return "dns", f"name resolution failed: {e}"[:300]
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "refused", "connection refused"
    # aiohttp's errors by name, so this module stays free of the HTTP library
    names = {type(e).__name__ for e in chain}
    first = f"{type(exc).__name__}: {exc}".strip()[:300]
    if names & _CUT_SHORT:
        return "bad_body", f"body cut short: {first}"
    if names & _MALFORMED:
        return "http_error", f"malformed HTTP response: {first}"
    if "ServerDisconnectedError" in names:
        return "refused", "the server closed the connection without an answer"
    text = f"{type(exc).__name__}: {exc}".strip()
    return "refused", f"connection failed: {text}"[:300]
