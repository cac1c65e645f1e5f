"""A 4-point sweep and an SLO search end to end through the real operator
(``benchop.operator.main``): real kopf, real BenchmarkRun handling, real load-generator workers
against the real mock model server.

The test plays only the kubelet and the Job controller (operator_kubelet.Kubelet) for each child
run as it appears; GPU baselines are off (no agent), so GPU columns stay empty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kube.harness import BENCHMARKRUNS, EXPERIMENTS, Kube, OperatorFactory, free_port, wait_for
from operator_kubelet import Kubelet

import benchop.operator.main  # noqa: F401 - registers every handler in kopf's default registry
from benchop.api.models import ExperimentMetrics
from benchop.core.rollup import DEFAULT_CAP, rollup
from benchop.mockserver import (
    MockConfig,
    MockServer,
    spawn_mock_server_process,
    start_mock_server,
)
from benchop.operator.settings import OperatorSettings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def mock() -> AsyncIterator[MockServer]:
    server = await start_mock_server(MockConfig(ttft=0.002, itl=0.001, output_tokens=4))
    yield server
    await server.close()


def operator_settings() -> OperatorSettings:
    return OperatorSettings(
        refresh_interval_s=0.2,
        namespaces=("default",),
        gate_port=free_port(),
        snapshot_port=free_port(),
        bind_host="127.0.0.1",
        operator_service="127.0.0.1",
        agent_namespace="default",
        complete_wait_s=3.0,
    )


def phase(kube: Kube, resource: str, name: str) -> str | None:
    body = kube.emulator.read(resource, name) or {}
    value: str | None = (body.get("status") or {}).get("phase")
    return value


async def test_four_point_sweep_with_real_workers(
    kube: Kube, operator_task: OperatorFactory, mock: MockServer, tmp_path: Path
) -> None:
    memo = kopf.Memo(settings=operator_settings(), connection=kopf.ConnectionInfo(server=kube.url))
    operator_task(memo=memo)
    template: dict[str, Any] = {
        "target": {"url": mock.url, "model": "benchop-mock"},
        "workload": {"promptTokens": 8, "outputTokens": 4, "seed": 1},
        "load": {"mode": "concurrency", "concurrency": 1, "workers": 1},
        "phases": {"profiling": {"requests": 12}},
        "gates": {"baseline": False, "timeout": "1s"},
    }
    sweep = [{"path": "load.concurrency", "values": [1, 2, 4, 8]}]
    await kube.client.create(
        EXPERIMENTS, {"metadata": {"name": "e2e"}, "spec": {"template": template, "sweep": sweep}}
    )
    kubelets = []
    try:
        for i in range(4):
            kubelet = Kubelet(kube, tmp_path / f"run-{i}")
            (tmp_path / f"run-{i}").mkdir()
            kubelets.append(kubelet)
            await kubelet.start(f"e2e-{i}")  # waits for the run's Job: the child was accepted
            # maxParallel 1, in order: the runs before this one exist, the next one does not.
            names = sorted(r["metadata"]["name"] for r in await kube.client.list(BENCHMARKRUNS))
            assert names == [f"e2e-{j}" for j in range(i + 1)]
            assert await kubelet.wait_all() == [0]
            await kubelet.job_condition("Complete")
            await wait_for(lambda i=i: phase(kube, BENCHMARKRUNS, f"e2e-{i}") == "Succeeded", 20)
        await wait_for(lambda: phase(kube, EXPERIMENTS, "e2e") == "Succeeded", 10)

        def rollup_done() -> dict[str, Any] | None:
            st = (kube.emulator.read(EXPERIMENTS, "e2e") or {}).get("status") or {}
            rows = (st.get("metrics") or {}).get("runs") or []
            done = [r.get("phase") for r in rows] == ["Succeeded"] * 4
            return st["metrics"] if done else None

        blob = await wait_for(rollup_done, 10)
    finally:
        for kubelet in kubelets:
            await kubelet.stop()
    metrics = ExperimentMetrics.model_validate(blob)
    children = await kube.client.list(BENCHMARKRUNS)
    assert metrics == rollup(children, cap=DEFAULT_CAP, now=metrics.refreshed_at or "")
    by_name = sorted(children, key=lambda c: c["metadata"]["name"])
    for row, child in zip(metrics.runs, by_name, strict=True):
        res = child["status"]["results"]
        assert row.rps == res["throughput"]["rps"] > 0
        assert row.ttft_p50 == res["ttftMs"]["p50"] > 0
        assert res["requests"]["total"] == 12
    assert [r.params for r in metrics.runs] == [{"load.concurrency": c} for c in (1, 2, 4, 8)]
    assert [r.name for r in metrics.runs] == [f"e2e-{i}" for i in range(4)]
    assert set(metrics.best) >= {"rps", "tokPerS", "ttftP50", "ttftP99", "itlP50"}


@pytest.fixture
def capped_mock() -> Iterator[str]:
    """A mock server in its own process (its timing free of the test's event loop) serving 4
    streams at full speed, a token every 10 ms; a 5th stretches every stream's ITL to 12.5 ms."""
    proc, url = spawn_mock_server_process(MockConfig(ttft=0.005, itl=0.01, capacity=4))
    yield url
    proc.terminate()
    proc.wait()


@pytest.mark.timeout(150)  # five probes, each a worker process: ~15 s idle, ~40 s on a busy machine
async def test_slo_search_finds_the_knee_with_real_workers(
    kube: Kube, operator_task: OperatorFactory, capped_mock: str, tmp_path: Path
) -> None:
    """With slo.itlMs 12 the knee is concurrency 4: the operator finds it within one step.
    (ITL is 10 ms up to 4 streams and 12.5 ms at 5; the SLO sits near the top of that gap,
    since a busy machine only adds delay: at 11 ms, 4 streams failed it under xdist.)"""
    memo = kopf.Memo(settings=operator_settings(), connection=kopf.ConnectionInfo(server=kube.url))
    operator_task(memo=memo)
    template: dict[str, Any] = {
        "target": {"url": capped_mock, "model": "benchop-mock"},
        "workload": {"promptTokens": 8, "outputTokens": 16, "seed": 1},
        "load": {"mode": "concurrency", "concurrency": 1, "workers": 1},
        "phases": {"warmup": {"requests": 4}, "profiling": {"requests": 16}},
        "gates": {"baseline": False, "timeout": "1s"},
        "slo": {"itlMs": 12},
    }
    search = {"concurrency": {"min": 2, "max": 16}, "minGoodput": 0.9, "maxProbes": 6}
    await kube.client.create(
        EXPERIMENTS, {"metadata": {"name": "kn"}, "spec": {"template": template, "search": search}}
    )
    kubelets = []
    try:
        for i in range(6):
            await wait_for(
                lambda i=i: (
                    kube.emulator.read(BENCHMARKRUNS, f"kn-{i}")
                    or phase(kube, EXPERIMENTS, "kn") in ("Succeeded", "Failed")
                ),
                20,
            )
            if kube.emulator.read(BENCHMARKRUNS, f"kn-{i}") is None:
                break
            kubelet = Kubelet(kube, tmp_path / f"run-{i}")
            (tmp_path / f"run-{i}").mkdir()
            kubelets.append(kubelet)
            await kubelet.start(f"kn-{i}")
            assert await kubelet.wait_all() == [0]
            await kubelet.job_condition("Complete")
            await wait_for(
                lambda i=i: phase(kube, BENCHMARKRUNS, f"kn-{i}") in ("Succeeded", "Failed"), 20
            )
        await wait_for(lambda: phase(kube, EXPERIMENTS, "kn") == "Succeeded", 10)

        def searched() -> dict[str, Any] | None:
            st = (kube.emulator.read(EXPERIMENTS, "kn") or {}).get("status") or {}
            found = (st.get("metrics") or {}).get("search") or {}
            return found if found.get("outcome") not in (None, "Searching") else None

        found = await wait_for(searched, 10)
    finally:
        for kubelet in kubelets:
            await kubelet.stop()
    assert abs(found["knee"] - 4) <= 1, found  # within one step of the capacity
    assert found["outcome"] == "KneeFound" and found["limit"] == found["knee"] + 1
    assert [p["value"] for p in found["probes"]][:3] == [2, 4, 8]
    children = {c["metadata"]["name"]: c for c in await kube.client.list(BENCHMARKRUNS)}
    for probe in found["probes"]:
        child = children[probe["run"]]
        assert child["spec"]["load"]["concurrency"] == probe["value"]
        assert probe["goodput"] == child["status"]["results"]["goodput"]["ratio"]
        assert child["status"]["results"]["requests"]["total"] == 16
