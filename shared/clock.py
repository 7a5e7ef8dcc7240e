"""Injected time: monotonic for deadlines, wall time for what people and the wire see."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What the pure cores and the services read time from."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; only differences mean anything."""
        ...

    def wall(self) -> float:
        """Unix seconds, for display and the wire."""
        ...


class SystemClock:
    """The real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock tests move by hand; wall and monotonic advance together."""

    def __init__(self, *, start_wall: float = 1_700_000_000.0, start_mono: float = 1000.0) -> None:
        self._wall = start_wall
        self._mono = start_mono

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._wall += seconds
        self._mono += seconds

    def set_wall(self, wall: float) -> None:
        """Step the wall clock alone, as NTP might; monotonic is untouched."""
        self._wall = wall
