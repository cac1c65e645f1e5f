"""``benchop operator`` flags (as the chart passes them: charts/benchop/templates/
operator-deployment.yaml) map onto OperatorSettings."""

from __future__ import annotations

import argparse

import pytest

from benchop.operator.command import add_arguments, settings_from_args
from benchop.operator.settings import DEFAULT_AGENT_SELECTOR


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_defaults_follow_the_contract() -> None:
    s = settings_from_args(parse())
    assert s.clusterwide and s.namespaces == ()
    assert (s.gate_port, s.snapshot_port, s.health_port, s.agent_port) == (5555, 5556, 8080, 5557)
    assert (s.live_interval_s, s.refresh_interval_s) == (5.0, 10.0)
    assert s.agent_selector == DEFAULT_AGENT_SELECTOR
    assert s.peering is None and s.gate_timeout_s is None


def test_flags_as_the_chart_passes_them() -> None:
    argv = [
        "--namespace=a",
        "--namespace=b",
        "--gate-port=6000",
        "--snapshot-port=6001",
        "--live-interval=2s",
        "--refresh-interval=1m",
        "--health-port=9000",
        "--agent-selector=app=x",
        "--agent-port=7000",
        "--image=img:2",
        "--operator-service=op.ns.svc",
        "--gate-timeout=10s",
        "--peering=bench",
    ]
    s = settings_from_args(parse(*argv))
    assert s.namespaces == ("a", "b") and not s.clusterwide
    assert (s.gate_port, s.snapshot_port, s.health_port, s.agent_port) == (6000, 6001, 9000, 7000)
    assert (s.live_interval_s, s.refresh_interval_s, s.gate_timeout_s) == (2.0, 60.0, 10.0)
    assert (s.agent_selector, s.image, s.peering) == ("app=x", "img:2", "bench")
    assert s.worker_gate_endpoint("unused") == "tcp://op.ns.svc:6000"
    assert s.worker_snapshot_endpoint("unused") == "tcp://op.ns.svc:6001"
    assert settings_from_args(parse("--peering")).peering == "benchop"


def test_bad_duration_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse("--live-interval=5")


@pytest.mark.parametrize("flag", ["--refresh-interval", "--live-interval"])
@pytest.mark.parametrize("value", ["0s", "0.01ms", "50ms", "-1s"])
def test_intervals_below_100ms_are_usage_errors_naming_the_flag(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(f"{flag}={value}")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err
    assert parse(f"{flag}=100ms") is not None  # the floor itself is fine


def test_settings_reject_a_zero_refresh_interval() -> None:
    from benchop.operator.settings import OperatorSettings

    with pytest.raises(ValueError, match="refresh_interval_s"):
        OperatorSettings(refresh_interval_s=0)


def test_snapshot_max_message_bytes_flag() -> None:
    def limit(*argv: str) -> int:
        return settings_from_args(parse(*argv)).snapshot_max_message_bytes

    assert limit() == 256 * 1024**2
    assert limit("--snapshot-max-message-bytes=1Gi") == 1024**3
    assert limit("--snapshot-max-message-bytes=4096") == 4096
    for bad in ("0", "12MB", "-1", "Mi", "1.5Mi"):
        with pytest.raises(SystemExit):
            parse(f"--snapshot-max-message-bytes={bad}")
