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


def pod(run: str, name: str, phase: str = "Running", version: str = "1") -> dict[str, Any]:
    meta = {
        "name": name,
        "namespace": "ns",
        "resourceVersion": version,
        "annotations": {RUN_NAME_ANNOTATION: run},
    }
    return {"metadata": meta, "status": {"phase": phase}}


def job(run: str, complete: bool, version: str = "1") -> dict[str, Any]:
    meta = {
        "name": f"{run}-loadgen",
        "namespace": "ns",
        "resourceVersion": version,
        "annotations": {RUN_NAME_ANNOTATION: run},
    }
    conditions = [{"type": "Complete", "status": "True"}] if complete else []
    return {"metadata": meta, "status": {"conditions": conditions}}


class FakeApi:
    """Pages of two from ``listed`` (what the LIST's snapshot holds), reads by name from
    ``current`` (what the apiserver holds now; defaults to the snapshot)."""

    def __init__(self, pods: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> None:
        self.items = {POD: pods, JOB: jobs}
        self.current: dict[str, dict[str, Any]] = {o["metadata"]["name"]: o for o in [*pods, *jobs]}
        self.listed: list[tuple[Resource, str | None, str | None]] = []
        self.reads: list[str] = []
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

    async def list(
        self, res: Resource, namespace: str | None, *, fields: str | None = None
    ) -> list[dict[str, Any]]:
        assert res == POD and fields is not None and fields.startswith("metadata.name=")
        name = fields.removeprefix("metadata.name=")
        self.reads.append(name)
        return [self.current[name]] if name in self.current else []

    async def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert res == JOB
        self.reads.append(name)
        return self.current.get(name)


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


async def test_resync_reads_again_only_what_differs_forgets_pods_gone_wakes_changed_runs() -> None:
    api = FakeApi(
        pods=[pod("a", "a-0"), pod("a", "a-1"), pod("b", "b-0"), pod("other", "x-0")],
        jobs=[job("a", complete=True), job("c", complete=False)],
    )
    services, woken = services_with(api, ["a", "b", "c"])
    b, c = services.runs["ns.b.u"], services.runs["ns.c.u"]
    runs._note_pod(b, pod("b", "b-0"))  # b already knows its pod as it is
    runs._note_pod(c, pod("c", "c-0"))  # c's pod is gone (its DELETED event was missed)
    runs._note_job(c, job("c", complete=False))  # as it is
    await runs.resync_all(services, pause_s=0)
    assert api.listed == [(POD, "ns", LOADGEN_SELECTOR), (JOB, "ns", LOADGEN_SELECTOR)]
    assert api.reads == ["a-0", "a-1", "c-0", "a-loadgen"]  # b-0, c-loadgen: as known
    a = services.runs["ns.a.u"]
    assert sorted(a.pods) == ["a-0", "a-1"] and a.job.state == "Complete"
    assert a.job_complete_at is not None
    assert list(b.pods) == ["b-0"] and c.pods == {}
    assert sorted(set(woken)) == ["ns.a.u", "ns.c.u"]  # b saw nothing new


async def test_a_page_older_than_the_watch_does_not_undo_an_event() -> None:
    api = FakeApi(pods=[pod("a", "a-0", phase="Running", version="5")], jobs=[])
    services, woken = services_with(api, ["a"])
    ctx = services.runs["ns.a.u"]
    # while the LIST is in flight the pod's watch event says it succeeded (version 6)
    done = pod("a", "a-0", phase="Succeeded", version="6")
    api.current["a-0"] = done

    def event() -> None:
        runs._note_pod(ctx, done)

    api.during_pod_list = event
    await runs.resync_all(services, pause_s=0)
    assert api.reads == ["a-0"]  # the page said version 5: read again, not applied
    assert ctx.pods["a-0"].phase == "Succeeded" and woken == []


async def test_a_pod_that_appears_while_the_list_is_in_flight_is_kept() -> None:
    api = FakeApi(pods=[], jobs=[])
    services, woken = services_with(api, ["a"])
    ctx = services.runs["ns.a.u"]
    # its ADDED event arrives while the (older) LIST is in flight
    api.during_pod_list = lambda: runs._note_pod(ctx, pod("a", "a-0", phase="Pending"))
    await runs.resync_all(services, pause_s=0)
    assert list(ctx.pods) == ["a-0"] and woken == [] and api.reads == []
