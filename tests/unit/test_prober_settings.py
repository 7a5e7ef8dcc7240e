"""The prober's flags: defaults, targets, and start-up checks that name the flag."""

from __future__ import annotations

import pytest

from services.prober.settings import ProberSettings, check_url, parse_target
from shared.identity import NodeId
from shared.settings import default_instance, load_settings


def test_defaults() -> None:
    """Defaults follow DESIGN.md: 30 s interval and max-age, 5 s timeout, thresholds 3/2."""
    s = load_settings(ProberSettings, [], environ={})
    assert (s.interval, s.max_age, s.timeout) == (30.0, 30.0, 5.0)
    assert (s.failure_threshold, s.success_threshold, s.metrics_port) == (3, 2, 9103)
    assert s.ts_field == ["ts"] and s.target == []


def test_fast_demo_timings_and_targets() -> None:
    """The fast demo flags parse, and repeated --target flags build the target map."""
    s = load_settings(
        ProberSettings,
        [
            "--interval",
            "1",
            "--max-age",
            "3",
            "--timeout",
            "800ms",
            "--target",
            "dc1/n1=http://127.0.0.1:9100/healthz",
            "--target",
            "dc1/n2=http://127.0.0.1:9101/healthz",
            "--ts-field",
            "timestamp,ts",
        ],
        environ={},
    )
    assert (s.interval, s.max_age, s.timeout) == (1.0, 3.0, 0.8)
    assert s.targets() == {
        NodeId("dc1", "n1"): "http://127.0.0.1:9100/healthz",
        NodeId("dc1", "n2"): "http://127.0.0.1:9101/healthz",
    }
    assert s.ts_field == ["timestamp", "ts"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--interval", "1"], "--timeout"),  # default 5 s timeout >= 1 s interval
        (["--interval", "2", "--timeout", "2"], "shorter than --interval"),
        (["--target", "dc1/n1"], "SITE/NODE=URL"),
        (["--target", "dc1.n1=http://127.0.0.1/"], "SITE/NODE"),
        (["--target", "dc1/n1=ftp://x/"], "http"),
        (["--failure-threshold", "0"], "--failure-threshold"),
        (["--instance", "a b"], "--instance"),
        (["--timeout", "soon"], "--timeout"),
        (["--max-age", "0"], "--max-age"),  # would call every node stale
        (["--max-age", "0s"], "greater than 0"),
        (["--resync", "0"], "--resync"),
        (["--interval", "0"], "--interval"),
        (["--timeout", "0"], "--timeout"),
        (["--future-tolerance", "-1"], "--future-tolerance"),
        (["--target", "dc1/n1=file:///etc/passwd"], "scheme 'file'"),
        (["--target", "dc1/n1=http://127.0.0.1/a b"], "whitespace"),
        (["--target", "dc1/n1=http:///x"], "no host"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value stops start-up with status 2 and one line naming what was wrong."""
    with pytest.raises(SystemExit) as exc:
        load_settings(ProberSettings, argv, environ={})
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_environment_twin(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLEETWATCH_PROBER_INTERVAL sets the interval."""
    monkeypatch.setenv("FLEETWATCH_PROBER_INTERVAL", "1m")
    assert load_settings(ProberSettings, []).interval == 60.0


def test_default_instance_is_a_subject_token() -> None:
    """hostname-pid is reduced to characters a subject token may hold."""
    name = default_instance()
    assert name and all(c.isalnum() or c in "-_" for c in name)


def test_parse_target() -> None:
    """SITE/NODE=URL splits at the first '='; the URL may contain '='."""
    node, url = parse_target("a/b=http://127.0.0.1:1/h?x=1")
    assert node == NodeId("a", "b") and url == "http://127.0.0.1:1/h?x=1"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://h/", "scheme 'gopher'"),
        ("127.0.0.1:8080/healthz", "scheme '127.0.0.1'"),
        ("/healthz", "no scheme"),
        ("http://127.0.0.1:1/health z", "whitespace"),
        ("http://127.0.0.1:1/health\tz", "whitespace"),
        ("http://", "no host"),
        ("http://127.0.0.1:1/a\x00b", "control"),
    ],
)
def test_check_url_rejects_with_a_reason(url: str, needle: str) -> None:
    """Non-http(s) schemes, whitespace and missing hosts are refused with a reason."""
    with pytest.raises(ValueError, match=needle):
        check_url(url)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9100/healthz", "HTTPS://example.test", "http://[::1]:80/x?a=1#f"],
)
def test_check_url_accepts_http_urls(url: str) -> None:
    """Ordinary http(s) URLs pass unchanged."""
    assert check_url(url) == url
