"""``benchop operator`` flags (as the chart passes them: charts/benchop/templates/
operator-deployment.yaml) map onto OperatorSettings."""

from __future__ import annotations

import argparse
import socket
import time
from typing import Any

import kopf
import pytest

from benchop.operator.command import add_arguments, settings_from_args
from benchop.operator.settings import DEFAULT_AGENT_SELECTOR, OperatorSettings


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


# --------------------------------------------------------------------------- startup / cleanup


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _startup(settings: OperatorSettings) -> kopf.Memo:
    from benchop.operator import main

    memo = kopf.Memo(settings=settings, connection=kopf.ConnectionInfo(server="http://127.0.0.1:1"))
    await main.startup(settings=kopf.OperatorSettings(), memo=memo)
    return memo


async def test_a_failed_startup_releases_the_ports_for_kopfs_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """start_experiments failing after the ports were bound must not leave them bound: kopf
    retries the startup handler, which then binds them again."""
    from benchop.operator import main
    from benchop.operator.handlers import experiments, runs

    async def no_runs(services: Any) -> int:
        return 0

    def broken(api: Any, settings: Any) -> Any:
        raise RuntimeError("refresher failed")

    monkeypatch.setattr(runs, "preload_runs", no_runs)
    monkeypatch.setattr(experiments, "start_experiments", broken)
    settings = OperatorSettings(
        gate_port=_free_port(), snapshot_port=_free_port(), bind_host="127.0.0.1"
    )
    with pytest.raises(RuntimeError, match="refresher failed"):
        await _startup(settings)
    monkeypatch.undo()
    monkeypatch.setattr(runs, "preload_runs", no_runs)

    started = time.monotonic()
    memo = await _startup(settings)  # the retry binds the same ports at once
    try:
        assert time.monotonic() - started < 2.0  # not the bind retry's 5 s wait and a failure
        assert memo.services.gates.endpoint.endswith(f":{settings.gate_port}")
        assert memo.services.snapshots.endpoint.endswith(f":{settings.snapshot_port}")
    finally:
        await main.cleanup(memo=memo)


async def test_cleanup_closes_everything_even_if_stopping_experiments_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchop.operator import main
    from benchop.operator.handlers import experiments, runs

    async def no_runs(services: Any) -> int:
        return 0

    async def broken_stop(services: Any) -> None:
        await services.refresher.stop()
        raise RuntimeError("flush failed")

    monkeypatch.setattr(runs, "preload_runs", no_runs)
    monkeypatch.setattr(experiments, "stop_experiments", broken_stop)
    settings = OperatorSettings(
        gate_port=_free_port(), snapshot_port=_free_port(), bind_host="127.0.0.1"
    )
    memo = await _startup(settings)
    services = memo.services
    with pytest.raises(RuntimeError, match="flush failed"):
        await main.cleanup(memo=memo)
    assert services.snapshots._sub._closed
    assert services.gates.coordinator._server is None
    assert services.api._session.closed
    # the ports are free again: a new operator binds them at once
    monkeypatch.undo()
    monkeypatch.setattr(runs, "preload_runs", no_runs)
    memo = await _startup(settings)
    await main.cleanup(memo=memo)
