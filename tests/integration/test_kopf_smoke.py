"""A toy kopf operator through the harness: proves kopf works against the emulator.

The handlers below stand in for the real operator: configured in ``@kopf.on.startup`` the
way benchop's operator is (progress in annotations under benchop.io, our finalizer), they
patch status, create an owned ConfigMap and post two events.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from kube.harness import (
    ANNOTATIONS_PREFIX,
    BENCHMARKRUNS,
    CONFIGMAPS,
    EVENTS,
    FINALIZER,
    NAMESPACES,
    Kube,
    OperatorFactory,
    stop_operator,
    wait_for,
)

GROUP, VERSION, PLURAL = "benchop.io", "v1alpha1", "benchmarkruns"

registry = kopf.OperatorRegistry()


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATIONS_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATIONS_PREFIX
    )
    settings.persistence.finalizer = FINALIZER


@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
async def benchmarkrun_create(
    body: kopf.Body, name: str, namespace: str, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    memo.calls.append(("create", name))
    configmap = {"metadata": {"name": f"{name}-spec"}, "data": {"spec": str(body.spec)}}
    kopf.adopt(configmap, owner=body)
    await memo.client.create(CONFIGMAPS, configmap, namespace)
    patch.status["phase"] = "Initializing"
    kopf.info(body, reason="Accepted", message="the spec is valid")
    kopf.info(body, reason="Started", message="the configmap is created")


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
def benchmarkrun_update(
    body: kopf.Body, name: str, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    memo.calls.append(("update", name))
    patch.status["observedGeneration"] = body.metadata["generation"]


@kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
def benchmarkrun_delete(name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.calls.append(("delete", name))


def new_run(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"load": {"concurrency": 1}}}


def start(
    kube: Kube, operator_task: OperatorFactory, **kwargs: Any
) -> tuple[kopf.Memo, asyncio.Task[None]]:
    """Run the toy operator; its handlers record their calls in ``memo.calls``."""
    memo = kopf.Memo(client=kube.client, calls=[])
    return memo, operator_task(registry=registry, memo=memo, **kwargs)


def phase_of(kube: Kube, name: str, namespace: str = "default") -> str | None:
    obj = kube.emulator.read(BENCHMARKRUNS, name, namespace) or {}
    return obj.get("status", {}).get("phase")


async def test_create_handler_runs_with_our_settings(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    memo, _ = start(kube, operator_task)
    created = await kube.client.create(BENCHMARKRUNS, new_run("r1"))

    await wait_for(lambda: phase_of(kube, "r1"), message="status.phase of r1")
    run = await kube.client.get(BENCHMARKRUNS, "r1")
    assert memo.calls == [("create", "r1")]
    assert run["metadata"]["finalizers"] == [FINALIZER]
    annotations = run["metadata"]["annotations"]
    assert annotations and all(k.startswith(f"{ANNOTATIONS_PREFIX}/") for k in annotations)
    assert run["status"] == {"phase": "Initializing"}  # no kopf bookkeeping in status

    # kopf sent status through /status and never put status into a main-resource patch.
    assert kube.emulator.count("PATCH", "/benchmarkruns/r1/status", status=200) >= 1
    main = [c for c in kube.emulator.calls if c.method == "PATCH" and c.path.endswith("/r1")]
    assert main and not any("status" in (c.body or {}) for c in main if isinstance(c.body, dict))

    configmap = await kube.client.get(CONFIGMAPS, "r1-spec")
    [owner] = configmap["metadata"]["ownerReferences"]
    assert owner["uid"] == created["metadata"]["uid"]

    # kopf posts events in the background, each with generateName: two posts, two names.
    await wait_for(lambda: kube.emulator.count("POST", "/events", status=201) >= 2)
    events = await kube.client.list(EVENTS, fields="involvedObject.name=r1")
    assert {e["reason"] for e in events} >= {"Accepted", "Started"}
    assert len({e["metadata"]["name"] for e in events}) == len(events)
    assert kube.emulator.count("POST", "/events", status=409) == 0


async def test_spec_changes_reach_kopf_through_the_watch(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    memo, _ = start(kube, operator_task)
    await kube.client.create(BENCHMARKRUNS, new_run("r1"))
    await wait_for(lambda: phase_of(kube, "r1"))

    await kube.client.patch(BENCHMARKRUNS, "r1", {"spec": {"load": {"concurrency": 8}}})

    def observed() -> int | None:
        return (
            (kube.emulator.read(BENCHMARKRUNS, "r1") or {})
            .get("status", {})
            .get("observedGeneration")
        )

    assert await wait_for(observed) == 2
    assert memo.calls == [("create", "r1"), ("update", "r1")]


async def test_delete_runs_the_handler_then_releases_the_finalizer(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    memo, _ = start(kube, operator_task)
    await kube.client.create(BENCHMARKRUNS, new_run("r1"))
    await wait_for(lambda: phase_of(kube, "r1"))

    await kube.client.delete(BENCHMARKRUNS, "r1")
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "r1") is None, message="r1 gone")
    assert memo.calls == [("create", "r1"), ("delete", "r1")]

    # No garbage collector here: the test calls it where the cluster's GC would run.
    assert await kube.client.get_or_none(CONFIGMAPS, "r1-spec") is not None
    await kube.emulator.collect_garbage()
    assert await kube.client.get_or_none(CONFIGMAPS, "r1-spec") is None


async def test_a_restarted_operator_does_not_rerun_finished_handlers(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    first, task = start(kube, operator_task)
    await kube.client.create(BENCHMARKRUNS, new_run("r1"))
    await wait_for(lambda: phase_of(kube, "r1"))
    await stop_operator(task)

    second, _ = start(kube, operator_task)
    await kube.client.create(BENCHMARKRUNS, new_run("r2"))
    await wait_for(lambda: phase_of(kube, "r2"))
    assert first.calls == [("create", "r1")]
    assert second.calls == [("create", "r2")]


async def test_a_clusterwide_operator_serves_other_namespaces(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    memo, _ = start(kube, operator_task, clusterwide=True)
    await kube.client.create(NAMESPACES, {"metadata": {"name": "team-a"}}, None)
    await kube.client.create(BENCHMARKRUNS, new_run("r1"), "team-a")
    await wait_for(lambda: phase_of(kube, "r1", "team-a"))
    assert memo.calls == [("create", "r1")]


async def test_stopping_the_operator_spares_the_tests_own_tasks(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    # kopf's shutdown cancels every task created after it started; the harness limits that to
    # kopf's own tasks, so a test's "kubelet" or mock server survives an operator restart.
    _, task = start(kube, operator_task)
    await kube.client.create(BENCHMARKRUNS, new_run("r1"))
    await wait_for(lambda: phase_of(kube, "r1"))
    release = asyncio.Event()
    bystander = asyncio.create_task(release.wait())

    await stop_operator(task)

    assert not bystander.done()
    release.set()
    await bystander
    assert await kube.client.get(BENCHMARKRUNS, "r1")  # the client survived the stop too
