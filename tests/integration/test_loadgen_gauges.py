"""The worker's client gauges (client CPU %, receive-lag p99) and the saturation verdict.

The mock server runs in its own process, so this process's CPU time is the
worker's. A calm run must not be marked saturated; a run whose event loop is
kept busy by a CPU hog must be, for both reasons (CPU and receive lag).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from benchop.api.models import BenchmarkRunSpec
from benchop.core.results import build_results, merge_snapshots
from benchop.loadgen.worker import WorkerConfig, run_worker
from benchop.metrics import names
from benchop.mockserver import MockConfig, spawn_mock_server_process

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    proc, url = spawn_mock_server_process(MockConfig(ttft=0.05, itl=0.005))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def spec(url: str, seconds: float) -> BenchmarkRunSpec:
    load: dict[str, Any] = {"mode": "rate", "rate": 40.0, "arrival": "constant"}
    return BenchmarkRunSpec.model_validate(
        {
            "target": {"model": "benchop-mock", "url": url},
            "workload": {"promptTokens": 8, "outputTokens": 8, "seed": 1},
            "load": load,
            "phases": {"profiling": {"duration": f"{seconds}s"}},
        }
    )


async def test_calm_run_publishes_true_gauges_and_is_not_saturated(server_url: str) -> None:
    cpu0 = time.process_time()
    out = await run_worker(WorkerConfig(spec=spec(server_url, 1.5), run="calm"))
    cpu_s = time.process_time() - cpu0
    snap = out.snapshot
    cpu_pct, lag_ms = snap.gauges[names.CLIENT_CPU], snap.gauges[names.RECV_LAG_P99]
    # CPU % of the profiling phase: positive, and no more than this process spent overall
    assert 0.0 < cpu_pct * snap.elapsed_s / 100 <= cpu_s + 0.02
    # every chunk is stamped by the mock: a lag was measured, far below the 50 ms TTFT
    assert 0.0 < lag_ms < 5.0
    res = build_results(merge_snapshots([snap]), slo=None, source="local")
    assert res.client is not None and not res.client.saturated, res.client


async def test_busy_event_loop_is_marked_saturated(server_url: str) -> None:
    stop = asyncio.Event()

    async def hog() -> None:  # holds the loop ~20 ms at a time: lags grow, CPU is spent
        while not stop.is_set():
            until = time.perf_counter() + 0.02
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0)

    task = asyncio.create_task(hog())
    try:
        out = await run_worker(WorkerConfig(spec=spec(server_url, 1.5), run="busy"))
    finally:
        stop.set()
        await task
    snap = out.snapshot
    assert snap.gauges[names.CLIENT_CPU] > 80.0
    assert snap.gauges[names.RECV_LAG_P99] > 5.0  # > 10% of the 50 ms TTFT
    res = build_results(merge_snapshots([snap]), slo=None, source="local")
    assert res.client is not None and res.client.saturated
    assert res.client.reason is not None
    assert "client CPU" in res.client.reason and "receive lag" in res.client.reason
