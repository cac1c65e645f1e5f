"""The operator's per-run Prometheus GPU stats: selector caching, bounded waits, errors.

Prometheus itself is in tests/integration/test_operator_prometheus.py; here it is a closed
port (refused at once) or a socket that accepts and never answers (the client's timeout).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from benchop.api.models import BenchmarkRunSpec, GpuResults, LabelSelector
from benchop.operator.gpustats import RunGpuStats, with_prometheus

TARGET = LabelSelector(match_labels={"app": "vllm"})


class FakeApi:
    """KubeApi.list for pods: the target pods, counted."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.lists: list[str | None] = []

    async def list(self, res: Any, namespace: str | None, *, labels: str | None = None) -> Any:
        self.lists.append(labels)
        return self.pods


def pod(name: str, node: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"nodeName": node}}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_only_runs_with_a_prometheus_url_get_stats() -> None:
    spec = {
        "target": {"url": "http://m:8000/v1", "model": "m"},
        "load": {"mode": "concurrency", "concurrency": 1},
        "phases": {"profiling": {"requests": 1}},
    }
    assert RunGpuStats.for_spec("ns", BenchmarkRunSpec.model_validate(spec)) is None
    spec["prometheus"] = {"url": "http://prom.monitoring:9090"}
    stats = RunGpuStats.for_spec("ns", BenchmarkRunSpec.model_validate(spec))
    assert stats is not None and stats.prom.url == "http://prom.monitoring:9090"
    stats.close()


async def test_selector_is_cached_and_refreshed_when_invalidated() -> None:
    api = FakeApi([pod("vllm-0", "gpu-1"), pod("vllm-1", "gpu-2")])
    stats = RunGpuStats(closed_port_url(), "models", TARGET)
    for _ in range(3):
        live = await stats.live(api)  # type: ignore[arg-type]
        assert live is not None and "connection refused" in live["error"]
    assert api.lists == ["app=vllm"]  # one list for three live patches
    assert stats.prom.queries == 1  # after an error the next query waits ERROR_RETRY_S
    assert stats.selector.nodes == ("gpu-1", "gpu-2")
    assert stats.selector.pods == ("vllm-0", "vllm-1")
    stats.invalidate()  # the workers are ready: the target's pods and Prometheus, again
    await stats.live(api)  # type: ignore[arg-type]
    assert len(api.lists) == 2 and stats.prom.queries == 2
    stats.close()


async def test_no_pod_selector_lists_nothing_and_says_why() -> None:
    api = FakeApi([])
    stats = RunGpuStats(closed_port_url(), "models", None)
    live = await stats.live(api)  # type: ignore[arg-type]
    assert live is not None and "no target pods" in live["error"]
    assert api.lists == []
    stats.close()


async def test_a_hung_prometheus_never_holds_the_live_patch(silent_url: str) -> None:
    stats = RunGpuStats(silent_url, "models", TARGET, wait_s=0.2)
    api = FakeApi([pod("vllm-0", "gpu-1")])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await stats.live(api) is None  # type: ignore[arg-type]
    assert await stats.live(api) is None  # type: ignore[arg-type]  # the same refresh, not a 2nd
    assert loop.time() - t0 < 1.0
    stats.wait_s = 6.0  # a later patch waits longer for the same refresh: the 3 s timeout
    live = await stats.live(api)  # type: ignore[arg-type]
    assert live is not None and "did not answer within 3 s" in live["error"]
    assert live["queries"] == 1  # the first query failed: no second one
    assert loop.time() - t0 < 5.0
    stats.close()


async def test_window_error_keeps_a_cross_check_against_the_baseline() -> None:
    stats = RunGpuStats(closed_port_url(), "models", TARGET)
    api = FakeApi([pod("vllm-0", "gpu-1")])
    baseline = GpuResults(energy_j=100.0, power_mean_w=10.0, util_mean=50.0, gpus=1)
    out = await stats.window(api, 1000.0, 1010.0, baseline)  # type: ignore[arg-type]
    assert "connection refused" in out["error"] and out["windowS"] == 10.0
    check = out["crossCheck"]
    assert check["energyJ"] == {
        "baseline": 100.0,
        "prometheus": None,
        "diff": None,
        "diffPct": None,
    }
    assert "no Prometheus numbers" in check["note"]
    gpu = with_prometheus(baseline, out)
    assert gpu.energy_j == 100.0 and gpu.prometheus == out  # the baseline numbers stay
    alone = with_prometheus(None, out)  # no agents: GPU results with only Prometheus' numbers
    assert alone.prometheus == out and alone.energy_j is None and alone.gpus == 0
    stats.close()


async def test_queries_run_in_the_bounded_prom_pool_not_the_default_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A burst of slow window queries holds at most PROM_THREADS threads, all of them the
    Prometheus pool's; asyncio's default pool stays free for everyone else."""
    import threading

    from benchop.operator import gpustats

    running = 0
    peak = 0
    threads: set[str] = set()
    lock = threading.Lock()
    gate = threading.Event()

    def slow_window(url: str, selector: Any, start: float, end: float, **_: Any) -> Any:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.current_thread().name)
        gate.wait(30)
        with lock:
            running -= 1
        return {"error": "test"}

    monkeypatch.setattr(gpustats, "window_gpu", slow_window)
    gpustats.shutdown_prom_executor()  # a fresh pool for this test
    stats = [RunGpuStats(closed_port_url(), "models", None) for _ in range(6)]
    api = FakeApi([])
    try:
        windows = [asyncio.create_task(s.window(api, 1.0, 2.0, None)) for s in stats]
        deadline = asyncio.get_running_loop().time() + 20  # generous: CI machines are shared
        while running < gpustats.PROM_THREADS:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        # the default pool still answers at once while the Prometheus pool is full
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 10) == 42
        gate.set()
        outs = await asyncio.gather(*windows)
        assert all(o["error"] == "test" for o in outs)
        assert peak == gpustats.PROM_THREADS
        assert threads and all(t.startswith("prom") for t in threads)
    finally:
        gate.set()
        for s in stats:
            s.close()
        gpustats.shutdown_prom_executor()
    assert gpustats._executor is None
