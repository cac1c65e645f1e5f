"""Startup preload: runs in progress are registered with their closed gates before serving."""

from __future__ import annotations

from typing import Any

from benchop.operator.handlers import runs
from benchop.operator.k8s import BENCHMARKRUN, Resource
from benchop.operator.settings import OperatorSettings

SPEC = {
    "target": {"url": "http://m:8000/v1", "model": "m"},
    "load": {"mode": "concurrency", "concurrency": 2, "workers": 2},
    "phases": {"profiling": {"requests": 10}},
}
ACCEPTED = {"type": "Accepted", "status": "True", "reason": "Valid", "lastTransitionTime": "t"}


def body(name: str, status: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1}
    return {"metadata": {**meta, "resourceVersion": "7"}, "spec": SPEC, "status": status}


class FakeApi:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items
        self.listed: list[tuple[Resource, str | None]] = []

    async def list(self, res: Resource, namespace: str | None, **_: Any) -> list[dict[str, Any]]:
        self.listed.append((res, namespace))
        return self.items


class FakeGates:
    endpoint = "tcp://127.0.0.1:1"

    def __init__(self) -> None:
        self.registered: dict[str, dict[str, Any]] = {}

    async def register(self, ctx: runs.RunContext, restored: dict[str, Any]) -> None:
        self.registered[ctx.key] = dict(restored)

    def forget(self, key: str) -> None:
        self.registered.pop(key, None)


async def test_preload_registers_only_accepted_runs_in_progress_with_their_gates() -> None:
    start = {"phaseId": "profiling", "startAtNs": 5, "baselineCaptured": True, "missing": []}
    api = FakeApi(
        [
            body(
                "going", {"phase": "Profiling", "conditions": [ACCEPTED], "gates": {"START": start}}
            ),
            body("done", {"phase": "Succeeded", "conditions": [ACCEPTED]}),
            body("new", {}),
            {**body("broken", {"phase": "Initializing", "conditions": [ACCEPTED]}), "spec": {}},
        ]
    )
    gates = FakeGates()
    services = runs.Services(
        settings=OperatorSettings(namespaces=("ns",)),
        api=api,  # type: ignore[arg-type]
        snapshots=None,  # type: ignore[arg-type]
        gates=gates,
    )
    assert await runs.preload_runs(services) == 1
    assert api.listed == [(BENCHMARKRUN, "ns")]
    key = runs.run_key("ns", "going", "uid-going")  # the run key carries the uid
    assert gates.registered == {key: {"START": start}}
    ctx = services.runs[key]
    assert ctx.workers == 2 and ctx.uid == "uid-going" and not ctx.accepted
    # its first pass re-adopts its children (reconcile_run), before it is driven
    assert list(services.pending) == [key] and len(services.scheduler) == 1
    assert ctx.next_resync == 0.0  # a preloaded run re-reads its pods and Job at once


def test_a_run_without_url_takes_the_operators_default_target_or_is_refused() -> None:
    no_url = runs.BenchmarkRun.model_validate(
        {"metadata": {"name": "r", "namespace": "ns"}, "spec": {**SPEC, "target": {"model": "m"}}}
    )
    try:
        runs.check_operator_rules(runs.with_default_target(no_url, None))
    except runs.InvalidRun as e:
        assert str(e).startswith("spec.target.url: required in a cluster")
    else:
        raise AssertionError("a run without a target was accepted")
    run = runs.with_default_target(no_url, "http://mock.ns.svc:8000/v1")
    runs.check_operator_rules(run)
    assert run.spec.target.url == "http://mock.ns.svc:8000/v1" and run.spec.target.model == "m"
    assert no_url.spec.target.url is None  # a copy: the object read from the cluster is kept
    given = runs.BenchmarkRun.model_validate({"metadata": {"name": "r"}, "spec": SPEC})
    assert runs.with_default_target(given, "http://other/v1").spec.target.url == "http://m:8000/v1"
