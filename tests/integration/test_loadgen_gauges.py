"""The worker's client gauges (client CPU %, receive-lag p99) are true, and the saturation
verdict of the results follows them.

The mock server runs in its own process, so this process's CPU time is the worker's. What a
calm or a hogged run measures depends on how much CPU this shared machine gives the process,
so these tests check the gauges against what the process really spent and the verdict against
the gauges, never a machine-dependent outcome (the rule itself: tests/unit/test_results.py;
a busy client, measured: hack/profile_client.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from benchop.api.models import BenchmarkRunSpec
from benchop.core.results import (
    CPU_SATURATED_PCT,
    RECV_LAG_SHARE,
    build_results,
    merge_snapshots,
)
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


def verdict_follows_the_gauges(snap: Any) -> None:
    res = build_results(merge_snapshots([snap]), slo=None, source="local")
    client = res.client
    assert client is not None and res.ttft_ms is not None
    assert client.cpu_pct == snap.gauges[names.CLIENT_CPU]
    assert client.recv_lag_p99_ms == snap.gauges[names.RECV_LAG_P99]
    reasons = client.reason or ""
    assert ("client CPU" in reasons) is (client.cpu_pct > CPU_SATURATED_PCT)
    limit = RECV_LAG_SHARE * res.ttft_ms.p50
    assert ("receive lag" in reasons) is (client.recv_lag_p99_ms > limit)
    assert client.saturated is bool(reasons)


async def test_calm_run_publishes_true_gauges(server_url: str) -> None:
    cpu0 = time.process_time()
    out = await run_worker(WorkerConfig(spec=spec(server_url, 1.5), run="calm"))
    cpu_s = time.process_time() - cpu0
    snap = out.snapshot
    cpu_pct, lag_ms = snap.gauges[names.CLIENT_CPU], snap.gauges[names.RECV_LAG_P99]
    # CPU % of the profiling phase: positive, and no more than this process spent overall
    assert 0.0 < cpu_pct * snap.elapsed_s / 100 <= cpu_s + 0.02
    # every chunk is stamped by the mock and timed by the kernel: a lag was measured (how
    # large depends on how promptly this machine schedules the mock server's process)
    assert lag_ms > 0.0
    verdict_follows_the_gauges(snap)


async def test_a_cpu_hog_in_the_worker_shows_in_its_cpu_gauge(server_url: str) -> None:
    stop = asyncio.Event()

    async def hog() -> None:  # holds the loop ~20 ms at a time: CPU is spent in the worker
        while not stop.is_set():
            until = time.perf_counter() + 0.02
            while time.perf_counter() < until:
                pass
            await asyncio.sleep(0)

    task = asyncio.create_task(hog())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        out = await run_worker(WorkerConfig(spec=spec(server_url, 1.5), run="busy"))
    finally:
        stop.set()
        await task
    spent = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    snap = out.snapshot
    # the gauge is the process's CPU over the profiling phase, which the hog kept busy the
    # whole time: within a few points of what the process got over the whole call
    busy_pct = spent / wall * 100
    assert abs(snap.gauges[names.CLIENT_CPU] - busy_pct) < 15.0, (snap.gauges, busy_pct)
    verdict_follows_the_gauges(snap)
