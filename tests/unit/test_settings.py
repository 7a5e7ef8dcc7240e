"""Settings: flags, environment twins, and one-line errors naming the flag."""

from __future__ import annotations

from typing import ClassVar

import pytest

from shared.durations import Duration
from shared.settings import ServiceSettings, load_settings, service_config
from shared.subjects import Subjects


class DemoSettings(ServiceSettings):
    """A settings class like a service's."""

    model_config = service_config("demo")
    service: ClassVar[str] = "demo"
    window: Duration = 90.0
    port: int = 9000
    target: list[str] = []
    verbose: bool = False


def test_defaults_flags_and_units() -> None:
    """Flags override defaults; durations take unit forms; repeatable flags collect."""
    s = load_settings(
        DemoSettings, ["--window", "2m", "--target", "a", "--target", "b", "--verbose"], environ={}
    )
    assert (s.window, s.port, s.target, s.verbose) == (120.0, 9000, ["a", "b"], True)


def test_environment_twin_and_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLEETWATCH_<SERVICE>_<FLAG> sets a value; the command line wins over it."""
    monkeypatch.setenv("FLEETWATCH_DEMO_WINDOW", "30s")
    monkeypatch.setenv("FLEETWATCH_DEMO_PORT", "9100")
    s = load_settings(DemoSettings, ["--port", "9200"])
    assert (s.window, s.port) == (30.0, 9200)


def test_nats_url_falls_back_to_the_fleet_wide_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """--nats defaults to FLEETWATCH_NATS_URL when the service's own twin is unset."""
    monkeypatch.setenv("FLEETWATCH_NATS_URL", "nats://127.0.0.1:4999")
    assert load_settings(DemoSettings, []).nats == "nats://127.0.0.1:4999"
    monkeypatch.setenv("FLEETWATCH_DEMO_NATS", "nats://127.0.0.1:5000")
    assert load_settings(DemoSettings, []).nats == "nats://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--window", "5x"], "--window: '5x' is not a duration"),
        (["--port", "many"], "--port: Input should be a valid integer"),
        (["--nats", "http://x"], "--nats: 'http://x' is not a NATS URL"),
        (["--prefix", "a.b"], "--prefix: prefix 'a.b'"),
        (["--bogus", "1"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flag_exits_2_with_one_line_naming_it(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad argument exits 2 with a single line that names the argument."""
    with pytest.raises(SystemExit) as exit_:
        load_settings(DemoSettings, argv, environ={})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad environment twin is reported with the variable's name."""
    monkeypatch.setenv("FLEETWATCH_DEMO_WINDOW", "soon")
    with pytest.raises(SystemExit):
        load_settings(DemoSettings, [])
    assert "--window (from FLEETWATCH_DEMO_WINDOW)" in capsys.readouterr().err


def test_subject_and_bucket_names_follow_the_prefix() -> None:
    """Default names are exactly DESIGN.md's; another prefix renames everything together."""
    from shared.identity import NodeId

    n = NodeId("dc1", "n1")
    s = Subjects()
    assert (s.hb(n), s.alert_silent(n), s.alert_site("dc1")) == (
        "fleet.hb.dc1.n1",
        "fleet.alert.silent.dc1.n1",
        "fleet.alert.site.dc1",
    )
    assert (s.nodes_bucket, s.desired_bucket, s.alerts_stream) == (
        "fleet_nodes",
        "fleet_desired",
        "FLEET_ALERTS",
    )
    assert s.node_of("fleet.alert.silent.dc1.n1", "alert.silent") == n
    t = Subjects("t1")
    assert (t.hb_all, t.nodes_bucket, t.alerts_stream) == ("t1.hb.*.*", "t1_nodes", "T1_ALERTS")
