"""Durations as people type them: ``0.5``, ``90``, ``500ms``, ``90s``, ``2m``, ``1h30m``."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

from shared.errors import InvalidDuration

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PIECE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Return seconds for a number or a unit string; raise InvalidDuration otherwise."""
    if isinstance(value, bool):
        raise InvalidDuration(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidDuration("empty duration")
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for m in _PIECE.finditer(text):
                if m.start() != pos:
                    break
                seconds += float(m.group(1)) * _UNITS[m.group(2)]
                pos = m.end()
            if pos != len(text) or pos == 0:
                raise InvalidDuration(
                    f"{value!r} is not a duration: use seconds (90, 0.5) or units "
                    "(500ms, 90s, 2m, 1h30m)"
                ) from None
    else:
        raise InvalidDuration(f"{value!r} is not a duration")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidDuration(f"{value!r} is not a finite, non-negative duration")
    return seconds


def _validate(value: object) -> float:
    try:
        return parse_duration(value)
    except InvalidDuration as e:
        raise ValueError(str(e)) from None


Duration = Annotated[float, BeforeValidator(_validate)]
"""A settings field type that accepts every duration form and holds seconds."""

MIN_INTERVAL = 0.05


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be greater than 0")
    return value


def _interval(value: float) -> float:
    if value < MIN_INTERVAL:
        raise ValueError(f"must be at least {MIN_INTERVAL * 1000:.0f}ms")
    return value


PositiveDuration = Annotated[float, BeforeValidator(_validate), AfterValidator(_positive)]
"""A duration that must be greater than zero (timeouts, ages, periods)."""
Interval = Annotated[float, BeforeValidator(_validate), AfterValidator(_interval)]
"""A loop interval: at least 50 ms, so a typo cannot make a service spin."""


def format_duration(seconds: float) -> str:
    """Short human form: 850ms, 12.5s, 3m05s, 2h10m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        m, s = divmod(int(seconds), 60)
        return f"{m}m{s:02d}s"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m"
