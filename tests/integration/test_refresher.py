"""The debounced rollup refresher against the emulator (no kopf): coalescing, per-namespace
batching, only status.metrics written, conflicts and failures re-queued, deleted experiments
skipped, and nothing lost when cancellation lands mid-flush."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import kopf
import pytest
from kube.harness import BENCHMARKRUNS, EXPERIMENTS, Kube, wait_for

from benchop.api.models import ExperimentSpec
from benchop.core.children import build_child_run
from benchop.operator.k8s import Body, KubeApi
from benchop.operator.refresher import Refresher

TEMPLATE: dict[str, Any] = {
    "target": {"url": "http://vllm.default.svc:8000/v1", "model": "m"},
    "load": {"mode": "concurrency", "concurrency": 1},
    "phases": {"profiling": {"requests": 10}},
}
SPEC = {"template": TEMPLATE, "sweep": [{"path": "load.concurrency", "values": [1, 2, 4]}]}


class GatedApi(KubeApi):
    """A KubeApi whose metrics patches wait at a gate (to land a cancellation mid-flush)."""

    gate: asyncio.Event
    entered: asyncio.Event
    entries: list[str]

    async def patch_status(self, *args: Any, **kwargs: Any) -> Body | None:
        self.entries.append(args[2])  # the experiment's name
        self.entered.set()
        await self.gate.wait()
        return await super().patch_status(*args, **kwargs)


@pytest.fixture
async def api(kube: Kube) -> AsyncIterator[GatedApi]:
    client = cast(GatedApi, await GatedApi.connect(kopf.ConnectionInfo(server=kube.url)))
    client.gate, client.entered, client.entries = asyncio.Event(), asyncio.Event(), []
    client.gate.set()
    yield client
    await client.close()


async def make_experiment(
    kube: Kube, name: str, namespace: str = "default", rps: list[float] | None = None
) -> Body:
    """An experiment with one Succeeded child per value of ``rps`` (no operator involved)."""
    exp = await kube.client.create(
        EXPERIMENTS, {"metadata": {"name": name}, "spec": SPEC}, namespace
    )
    points = ExperimentSpec.model_validate(SPEC).points()
    for i, value in enumerate(rps or []):
        params, spec = points[i]
        run = build_child_run(exp, index=i, params=params, spec=spec)
        await kube.client.create(BENCHMARKRUNS, run, namespace)
        await set_rps(kube, run["metadata"]["name"], value, namespace)
    return exp


async def set_rps(kube: Kube, run: str, rps: float, namespace: str = "default") -> None:
    status = {"phase": "Succeeded", "results": {"throughput": {"rps": rps, "outputTokPerS": 1.0}}}
    await kube.client.patch_status(BENCHMARKRUNS, run, status, namespace)


def metrics(kube: Kube, name: str, namespace: str = "default") -> dict[str, Any] | None:
    exp = kube.emulator.read(EXPERIMENTS, name, namespace) or {}
    result: dict[str, Any] | None = (exp.get("status") or {}).get("metrics")
    return result


def patches(kube: Kube, name: str) -> list[Any]:
    return [
        c
        for c in kube.emulator.calls
        if c.method == "PATCH" and c.path.endswith(f"/experiments/{name}/status")
    ]


def lists(kube: Kube) -> int:
    return sum(
        1 for c in kube.emulator.calls if c.method == "GET" and c.path.endswith("/benchmarkruns")
    )


async def test_marks_coalesce_and_namespaces_are_batched(kube: Kube, api: GatedApi) -> None:
    await make_experiment(kube, "a", rps=[1.0, 2.0])
    await make_experiment(kube, "b", rps=[3.0])
    await make_experiment(kube, "c", "other", rps=[4.0, 5.0, 6.0])
    refresher = Refresher(api, interval_s=3600, now=lambda: "2024-05-01T12:00:00Z")
    for _ in range(50):
        for ns, name in (("default", "a"), ("default", "b"), ("other", "c")):
            refresher.mark_dirty(ns, name)
    assert refresher.pending == {("default", "a"), ("default", "b"), ("other", "c")}
    before = lists(kube)
    await refresher.flush()
    assert lists(kube) - before == 2  # one children list per namespace
    assert [len(patches(kube, n)) for n in "abc"] == [1, 1, 1]
    assert [r["rps"] for r in metrics(kube, "a")["runs"]] == [1.0, 2.0]  # type: ignore[index]
    assert [r["rps"] for r in metrics(kube, "b")["runs"]] == [3.0]  # type: ignore[index]
    assert metrics(kube, "c", "other")["best"] == {"rps": "c-2", "tokPerS": "c-0"}  # type: ignore[index]
    assert refresher.pending == set() and refresher.patches == 3


async def test_only_status_metrics_is_written_with_the_resource_version(
    kube: Kube, api: GatedApi
) -> None:
    await make_experiment(kube, "a", rps=[1.0])
    reconciler_status = {"phase": "Running", "counts": {"total": 3, "running": 1}}
    await kube.client.patch_status(EXPERIMENTS, "a", reconciler_status)
    refresher = Refresher(api, interval_s=3600)
    refresher.mark_dirty("default", "a")
    await refresher.flush()
    (call,) = patches(kube, "a")[-1:]
    assert set(call.body) == {"metadata", "status"}
    assert set(call.body["metadata"]) == {"resourceVersion"}
    assert set(call.body["status"]) == {"metrics"}
    st = kube.emulator.read(EXPERIMENTS, "a")["status"]  # type: ignore[index]
    assert st["phase"] == "Running" and st["counts"] == reconciler_status["counts"]
    # Unchanged rollup: no write. A changed child: one write.
    refresher.mark_dirty("default", "a")
    await refresher.flush()
    assert len(patches(kube, "a")) == 2
    await set_rps(kube, "a-0", 9.0)
    refresher.mark_dirty("default", "a")
    await refresher.flush()
    assert len(patches(kube, "a")) == 3 and metrics(kube, "a")["runs"][0]["rps"] == 9.0  # type: ignore[index]


async def test_conflict_requeues_and_the_loop_lands_it(kube: Kube, api: GatedApi) -> None:
    await make_experiment(kube, "a", rps=[1.0])
    fault = kube.emulator.fail_next("PATCH", "/experiments/a/status", 409)
    refresher = Refresher(api, interval_s=0.05)
    refresher.mark_dirty("default", "a")
    refresher.start()
    try:
        # the refresher's own count, not the metrics: the emulator shows the patch before the
        # refresher has read its response, and stopping it then cancels that read
        await wait_for(lambda: refresher.patches == 1)
    finally:
        await refresher.stop()
    assert metrics(kube, "a")
    assert fault.times == 0 and refresher.conflicts == 1 and refresher.patches == 1
    assert refresher.pending == set()


@pytest.mark.parametrize(
    "failing", ["/namespaces/default/benchmarkruns", "/experiments/a", "/experiments/a/status"]
)
async def test_api_failures_requeue(kube: Kube, api: GatedApi, failing: str) -> None:
    await make_experiment(kube, "a", rps=[1.0])
    method = "PATCH" if failing.endswith("/status") else "GET"
    fault = kube.emulator.fail_next(method, failing, 500)
    refresher = Refresher(api, interval_s=3600)
    refresher.mark_dirty("default", "a")
    await refresher.flush()
    assert fault.times == 0 and refresher.failures == 1
    assert refresher.pending == {("default", "a")} and metrics(kube, "a") is None
    await refresher.flush()
    assert refresher.pending == set() and metrics(kube, "a") is not None


async def test_a_deleted_experiment_is_skipped(kube: Kube, api: GatedApi) -> None:
    await make_experiment(kube, "a", rps=[1.0])
    await make_experiment(kube, "b", rps=[2.0])
    await kube.client.delete(EXPERIMENTS, "a")
    refresher = Refresher(api, interval_s=3600)
    refresher.mark_dirty("default", "a")
    refresher.mark_dirty("default", "b")
    await refresher.flush()
    assert refresher.pending == set() and refresher.failures == 0 and refresher.patches == 1
    assert patches(kube, "a") == [] and metrics(kube, "b") is not None


async def test_cancellation_mid_flush_loses_nothing_and_stop_flushes(
    kube: Kube, api: GatedApi
) -> None:
    await make_experiment(kube, "a", rps=[1.0])
    await make_experiment(kube, "b", rps=[2.0])
    refresher = Refresher(api, interval_s=0.01)
    api.gate.clear()  # the first metrics patch blocks
    refresher.mark_dirty("default", "a")
    refresher.mark_dirty("default", "b")
    refresher.start()
    await wait_for(api.entered.is_set)  # the loop is inside flush(), batch taken out of the set
    # stop() cancels the loop mid-flush; the batch must be back and flushed once more.
    stopping = asyncio.create_task(refresher.stop())
    # The final flush takes "a" again: it was put back when the cancellation landed.
    await wait_for(lambda: api.entries == ["a", "a"])
    api.gate.set()
    await stopping
    assert metrics(kube, "a") is not None and metrics(kube, "b") is not None
    assert refresher.pending == set() and api.entries == ["a", "a", "b"]
    assert [c.status for c in patches(kube, "a")] == [200]  # the cancelled patch was never sent


async def test_a_mark_during_the_write_is_kept_for_the_next_flush(
    kube: Kube, api: GatedApi
) -> None:
    await make_experiment(kube, "a", rps=[1.0])
    refresher = Refresher(api, interval_s=3600)
    refresher.mark_dirty("default", "a")
    api.gate.clear()
    flushing = asyncio.create_task(refresher.flush())
    await wait_for(api.entered.is_set)  # children already read, the write is in flight
    await set_rps(kube, "a-0", 7.0)  # a child changes after that read ...
    refresher.mark_dirty("default", "a")  # ... and its event marks the experiment again
    api.gate.set()
    await flushing
    assert metrics(kube, "a")["runs"][0]["rps"] == 1.0  # type: ignore[index]
    assert refresher.pending == {("default", "a")}  # not dropped by the finished write
    await refresher.flush()
    assert metrics(kube, "a")["runs"][0]["rps"] == 7.0  # type: ignore[index]


async def test_rollup_is_capped(kube: Kube, api: GatedApi) -> None:
    await make_experiment(kube, "a", rps=[1.0, 3.0, 2.0])
    refresher = Refresher(api, interval_s=3600, cap=2)
    refresher.mark_dirty("default", "a")
    await refresher.flush()
    blob = metrics(kube, "a")
    assert blob is not None and blob["capped"] is True and len(blob["runs"]) == 2
    assert blob["best"]["rps"] == "a-1" and "a-1" in [r["name"] for r in blob["runs"]]


async def test_children_of_an_older_namesake_are_ignored(kube: Kube, api: GatedApi) -> None:
    old = await make_experiment(kube, "a", rps=[100.0])
    await kube.client.delete(EXPERIMENTS, "a")  # its child a-0 lingers (no GC yet)
    new = await make_experiment(kube, "a")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    refresher = Refresher(api, interval_s=3600)
    refresher.mark_dirty("default", "a")
    await refresher.flush()
    assert metrics(kube, "a") == {**metrics(kube, "a"), "runs": [], "best": {}}  # type: ignore[dict-item]


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Refresher(None, interval_s=0)  # type: ignore[arg-type]
