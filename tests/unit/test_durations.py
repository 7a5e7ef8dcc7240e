"""Duration parsing for every flag that takes time."""

from __future__ import annotations

import pytest

from shared.durations import format_duration, parse_duration
from shared.errors import InvalidDuration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0.5", 0.5),
        ("90", 90.0),
        ("500ms", 0.5),
        ("90s", 90.0),
        ("2m", 120.0),
        ("1h30m", 5400.0),
        ("1m30s", 90.0),
        (" 3s ", 3.0),
        (2, 2.0),
        (1.5, 1.5),
        ("1d", 86400.0),
    ],
)
def test_accepted_forms(text: str | float, seconds: float) -> None:
    """Seconds as numbers and the unit forms all parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "abc", "5x", "m5", "-1", "1h-3m", "nan", "inf", "1.5.5s", True]
)
def test_rejected_forms(text: object) -> None:
    """Junk, negatives and non-finite values are refused with a hint at the accepted forms."""
    with pytest.raises(InvalidDuration):
        parse_duration(text)


def test_format_is_short_and_human() -> None:
    """Durations shown to people use the shortest sensible unit."""
    assert format_duration(0.25) == "250ms"
    assert format_duration(12.5) == "12.5s"
    assert format_duration(185) == "3m05s"
    assert format_duration(7800) == "2h10m"
