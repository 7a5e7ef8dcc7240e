"""The deadman's flags: defaults, the derived start-up grace, errors naming the flag."""

from __future__ import annotations

import re

import pytest

from services.deadman.settings import DeadmanSettings
from shared.settings import load_settings


def test_defaults_follow_the_classic_rule() -> None:
    """Window 90 s, pending 2 m, grace window+pending, metrics on 127.0.0.1:9102."""
    s = load_settings(DeadmanSettings, [], environ={})
    assert (s.window, s.pending, s.grace) == (90.0, 120.0, 210.0)
    assert (s.metrics_host, s.metrics_port, s.renotify) == ("127.0.0.1", 9102, 1800.0)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", s.instance)


def test_fast_demo_timings_and_units() -> None:
    """--window 3 --pending 2 (the demo) and unit forms parse; grace follows them."""
    s = load_settings(
        DeadmanSettings,
        ["--window", "3", "--pending", "2s", "--persist-every", "500ms"],
        environ={},
    )
    assert (s.window, s.pending, s.grace, s.persist_every) == (3.0, 2.0, 5.0, 0.5)


def test_environment_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLEETWATCH_DEADMAN_WINDOW sets --window."""
    monkeypatch.setenv("FLEETWATCH_DEADMAN_WINDOW", "10")
    s = load_settings(DeadmanSettings, [])
    assert s.window == 10.0


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--window", "0"], "--window"),
        (["--pending", "soon"], "--pending"),
        (["--instance", "a.b"], "--instance"),
        (["--site-fraction", "2"], "--site-fraction"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value stops start-up with status 2 and one line naming the flag."""
    with pytest.raises(SystemExit) as e:
        load_settings(DeadmanSettings, argv, environ={})
    assert e.value.code == 2
    assert flag in capsys.readouterr().err
