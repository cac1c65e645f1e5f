"""The resync of every run: two LISTs per namespace, whatever the number of runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from benchop.api.models import BenchmarkRunSpec
from benchop.core.names import RUN_NAME_ANNOTATION
from benchop.core.selectors import LOADGEN_SELECTOR
from benchop.operator.handlers import runs
from benchop.operator.k8s import JOB, POD, Resource
from benchop.operator.settings import OperatorSettings

SPEC = BenchmarkRunSpec.model_validate(
    {
        "target": {"url": "http://m:8000/v1", "model": "m"},
        "load": {"mode": "concurrency", "concurrency": 2, "workers": 2},
        "phases": {"profiling": {"requests": 10}},
    }
)


def pod(run: str, name: str, phase: str = "Running") -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "annotations": {RUN_NAME_ANNOTATION: run}}
    return {"metadata": meta, "status": {"phase": phase}}


def job(run: str, complete: bool) -> dict[str, Any]:
    meta = {"name": f"{run}-loadgen", "namespace": "ns", "annotations": {RUN_NAME_ANNOTATION: run}}
    conditions = [{"type": "Complete", "status": "True"}] if complete else []
    return {"metadata": meta, "status": {"conditions": conditions}}


class FakeApi:
    def __init__(self, pods: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> None:
        self.items = {POD: pods, JOB: jobs}
        self.listed: list[tuple[Resource, str | None, str | None]] = []
        self.during_pod_list: Callable[[], None] = lambda: None

    async def pages(
        self, res: Resource, namespace: str | None, *, labels: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        self.listed.append((res, namespace, labels))
        if res == POD:
            self.during_pod_list()
        items = self.items[res]
        for i in range(0, max(len(items), 1), 2):  # pages of two
            yield items[i : i + 2]


def services_with(api: FakeApi, names: list[str]) -> tuple[runs.Services, list[str]]:
    services = runs.Services(
        settings=OperatorSettings(namespaces=("ns",)),
        api=api,  # type: ignore[arg-type]
        snapshots=None,  # type: ignore[arg-type]
        gates=None,  # type: ignore[arg-type]
    )
    woken: list[str] = []
    services.scheduler.wake = woken.append  # type: ignore[method-assign]
    for name in names:
        ctx = runs.RunContext(f"ns.{name}.u", "ns", name, "u", 1, SPEC, None)  # type: ignore[arg-type]
        services.add(ctx)
    return services, woken


async def test_resync_notes_pods_and_jobs_forgets_pods_gone_and_wakes_only_changed_runs() -> None:
    api = FakeApi(
        pods=[pod("a", "a-0"), pod("a", "a-1"), pod("b", "b-0"), pod("other", "x-0")],
        jobs=[job("a", complete=True), job("c", complete=False)],
    )
    services, woken = services_with(api, ["a", "b", "c"])
    b, c = services.runs["ns.b.u"], services.runs["ns.c.u"]
    runs._note_pod(b, pod("b", "b-0"))  # b already knows its pod as it is
    runs._note_pod(c, pod("c", "c-0"))  # c's pod is gone (its DELETED event was missed)
    runs._note_job(c, job("c", complete=False))
    await runs.resync_all(services)
    assert api.listed == [(POD, "ns", LOADGEN_SELECTOR), (JOB, "ns", LOADGEN_SELECTOR)]
    a = services.runs["ns.a.u"]
    assert sorted(a.pods) == ["a-0", "a-1"] and a.job.state == "Complete"
    assert a.job_complete_at is not None
    assert list(b.pods) == ["b-0"] and c.pods == {}
    assert sorted(woken) == ["ns.a.u", "ns.c.u"]  # b saw nothing new


async def test_a_pod_that_appears_while_the_list_is_in_flight_is_kept() -> None:
    api = FakeApi(pods=[], jobs=[])
    services, woken = services_with(api, ["a"])
    ctx = services.runs["ns.a.u"]
    # its ADDED event arrives while the (older) LIST is in flight
    api.during_pod_list = lambda: runs._note_pod(ctx, pod("a", "a-0", phase="Pending"))
    await runs.resync_all(services)
    assert list(ctx.pods) == ["a-0"] and woken == ["ns.a.u"]
