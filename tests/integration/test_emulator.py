"""The fidelity layer itself, over real HTTP: what kopf and our operator rely on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from kube.emulator import Emulator
from kube.harness import (
    BENCHMARKRUNS,
    CONFIGMAPS,
    EVENTS,
    JOBS,
    NAMESPACES,
    PODS,
    ApiError,
    Kube,
    register_resources,
    resource_url,
    serve,
)

RUNS_PATH = resource_url(BENCHMARKRUNS, "default")


def run(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": spec or {"x": 1}}


def pod(name: str, labels: dict[str, str], node: str = "") -> dict[str, Any]:
    spec = {"nodeName": node} if node else {}
    return {"metadata": {"name": name, "labels": labels}, "spec": spec}


async def watch(kube: Kube, path: str, params: dict[str, str]) -> AsyncIterator[dict[str, Any]]:
    """A raw watch stream: one decoded event per line, as the API server sends them."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(kube.url + path, params={"watch": "true", **params}) as response,
    ):
        assert response.status == 200
        async for line in response.content:
            if line.strip():
                yield json.loads(line)


async def collect(stream: AsyncIterator[dict[str, Any]], n: int) -> list[tuple[str, str]]:
    """The first ``n`` events as (type, name)."""
    events = []
    async with asyncio.timeout(5):
        async for event in stream:
            events.append((event["type"], event["object"]["metadata"].get("name", "")))
            if len(events) == n:
                break
    return events


# -- metadata the server owns ----------------------------------------------------------------


async def test_create_assigns_uid_rv_generation_and_timestamp(kube: Kube) -> None:
    first = await kube.client.create(BENCHMARKRUNS, run("a"))
    second = await kube.client.create(BENCHMARKRUNS, run("b"))
    meta = first["metadata"]
    assert len(meta["uid"]) == 36 and meta["uid"] != second["metadata"]["uid"]
    assert meta["generation"] == 1
    assert meta["creationTimestamp"].endswith("Z")
    assert int(second["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert first["kind"] == "BenchmarkRun" and first["apiVersion"] == "benchop.io/v1alpha1"
    assert kube.emulator.read(BENCHMARKRUNS, "a") == first


async def test_generation_bumps_on_spec_changes_only(kube: Kube) -> None:
    created = await kube.client.create(BENCHMARKRUNS, run("a"))
    rv0 = int(created["metadata"]["resourceVersion"])

    labelled = await kube.client.patch(BENCHMARKRUNS, "a", {"metadata": {"labels": {"k": "v"}}})
    status = await kube.client.patch_status(BENCHMARKRUNS, "a", {"phase": "Pending"})
    specced = await kube.client.patch(BENCHMARKRUNS, "a", {"spec": {"x": 2}})

    rvs = [int(o["metadata"]["resourceVersion"]) for o in (labelled, status, specced)]
    assert rvs == sorted(rvs) and rvs[0] > rv0 and len(set(rvs)) == 3
    assert labelled["metadata"]["generation"] == 1
    assert status["metadata"]["generation"] == 1
    assert specced["metadata"]["generation"] == 2


async def test_noop_patch_keeps_the_resource_version(kube: Kube) -> None:
    created = await kube.client.create(BENCHMARKRUNS, run("a", x=1))
    again = await kube.client.patch(BENCHMARKRUNS, "a", {"spec": {"x": 1}})
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_server_owned_metadata_cannot_be_patched(kube: Kube) -> None:
    created = await kube.client.create(BENCHMARKRUNS, run("a"))
    patched = await kube.client.patch(
        BENCHMARKRUNS, "a", {"metadata": {"uid": "forged", "generation": 99, "labels": {"a": "b"}}}
    )
    assert patched["metadata"]["uid"] == created["metadata"]["uid"]
    assert patched["metadata"]["generation"] == 1
    assert patched["metadata"]["labels"] == {"a": "b"}


# -- the status subresource ---------------------------------------------------------------


async def test_status_is_dropped_on_create_and_ignored_on_the_main_resource(kube: Kube) -> None:
    created = await kube.client.create(BENCHMARKRUNS, {**run("a"), "status": {"phase": "Fake"}})
    assert "status" not in created
    patched = await kube.client.patch(BENCHMARKRUNS, "a", {"status": {"phase": "Fake"}})
    assert "status" not in patched
    assert patched["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_status_writes_change_only_status(kube: Kube) -> None:
    await kube.client.create(BENCHMARKRUNS, run("a", x=1))
    patch = {"spec": {"x": 2}, "metadata": {"labels": {"a": "b"}}, "status": {"phase": "Running"}}
    patched = await kube.client.patch(BENCHMARKRUNS, "a", patch, subresource="status")
    assert patched["status"] == {"phase": "Running"}
    assert patched["spec"] == {"x": 1}
    assert "labels" not in patched["metadata"]


async def test_status_on_a_resource_without_the_subresource_is_404(kube: Kube) -> None:
    await kube.client.create(CONFIGMAPS, {"metadata": {"name": "c"}, "data": {}})
    with pytest.raises(ApiError) as e:
        await kube.client.patch_status(CONFIGMAPS, "c", {"phase": "x"})
    assert e.value.status == 404


async def test_pods_start_pending(kube: Kube) -> None:
    created = await kube.client.create(PODS, pod("p", {}))
    assert created["status"] == {"phase": "Pending"}


# -- optimistic concurrency -------------------------------------------------------------------


async def test_json_patch_test_op_guards_the_resource_version(kube: Kube) -> None:
    created = await kube.client.create(BENCHMARKRUNS, run("a"))
    rv = created["metadata"]["resourceVersion"]
    add = {"op": "add", "path": "/metadata/finalizers", "value": ["benchop.io/finalizer"]}
    ok = await kube.client.patch(
        BENCHMARKRUNS, "a", [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, add]
    )
    assert ok["metadata"]["finalizers"] == ["benchop.io/finalizer"]

    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, add]
    with pytest.raises(ApiError) as e:
        await kube.client.patch(BENCHMARKRUNS, "a", stale)
    assert e.value.status == 422  # what kube-apiserver answers, and what kopf expects


async def test_stale_resource_version_in_a_merge_patch_or_put_conflicts(kube: Kube) -> None:
    created = await kube.client.create(BENCHMARKRUNS, run("a"))
    rv = created["metadata"]["resourceVersion"]
    await kube.client.patch(BENCHMARKRUNS, "a", {"spec": {"x": 2}})

    stale = {"metadata": {"resourceVersion": rv}, "spec": {"x": 3}}
    with pytest.raises(ApiError) as e:
        await kube.client.patch(BENCHMARKRUNS, "a", stale)
    assert e.value.status == 409
    with pytest.raises(ApiError) as e:
        await kube.client.patch(
            BENCHMARKRUNS, "a", {"status": {"p": 1}, **stale}, subresource="status"
        )
    assert e.value.status == 409

    current = kube.emulator.read(BENCHMARKRUNS, "a")
    assert current is not None and current["spec"] == {"x": 2}
    url = kube.url + resource_url(BENCHMARKRUNS, "default", "a")
    async with aiohttp.ClientSession() as session:
        async with session.put(url, json={**created, "spec": {"x": 4}}) as response:
            assert response.status == 409
        async with session.put(url, json={**current, "spec": {"x": 4}}) as response:
            assert response.status == 200
            assert (await response.json())["metadata"]["generation"] == 3


async def test_create_of_an_existing_name_conflicts(kube: Kube) -> None:
    await kube.client.create(BENCHMARKRUNS, run("a"))
    with pytest.raises(ApiError) as e:
        await kube.client.create(BENCHMARKRUNS, run("a"))
    assert e.value.status == 409 and e.value.body["reason"] == "AlreadyExists"


async def test_server_side_apply_is_refused_not_faked(kube: Kube) -> None:
    await kube.client.create(BENCHMARKRUNS, run("a"))
    url = kube.url + resource_url(BENCHMARKRUNS, "default", "a")
    headers = {"Content-Type": "application/apply-patch+yaml"}
    async with (
        aiohttp.ClientSession() as session,
        session.patch(url, data="{}", headers=headers) as r,
    ):
        assert r.status == 415


# -- generateName -------------------------------------------------------------------------


async def test_generate_name_gives_distinct_names(kube: Kube) -> None:
    event = {"metadata": {"generateName": "run-"}, "reason": "Hello", "message": "hi"}
    first = await kube.client.create(EVENTS, event)
    second = await kube.client.create(EVENTS, event)
    names = {first["metadata"]["name"], second["metadata"]["name"]}
    assert len(names) == 2 and all(n.startswith("run-") and len(n) == 9 for n in names)
    with pytest.raises(ApiError) as e:
        await kube.client.create(EVENTS, {"metadata": {}})
    assert e.value.status == 422


# -- selectors ----------------------------------------------------------------------------


@pytest.fixture
async def pods(kube: Kube) -> Kube:
    await kube.client.create(PODS, pod("a", {"app": "vllm", "tier": "gpu"}, node="n1"))
    await kube.client.create(PODS, pod("b", {"app": "vllm"}, node="n2"))
    await kube.client.create(PODS, pod("c", {"app": "agent", "tier": "cpu"}))
    await kube.client.patch_status(PODS, "b", {"phase": "Running"})
    return kube


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ("app=vllm", {"a", "b"}),
        ("app==vllm,tier=gpu", {"a"}),
        ("app!=vllm", {"c"}),
        ("tier in (gpu,cpu)", {"a", "c"}),
        ("app in (vllm),tier notin (gpu)", {"b"}),
        ("tier", {"a", "c"}),
        ("!tier", {"b"}),
        ("", {"a", "b", "c"}),
    ],
)
async def test_label_selectors(pods: Kube, labels: str, expected: set[str]) -> None:
    items = await pods.client.list(PODS, labels=labels or None)
    assert {i["metadata"]["name"] for i in items} == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("metadata.name=a", {"a"}),
        ("metadata.namespace=default,metadata.name!=a", {"b", "c"}),
        ("spec.nodeName=n2", {"b"}),
        ("spec.nodeName=", {"c"}),
        ("status.phase=Running", {"b"}),
        ("status.phase!=Running", {"a", "c"}),
    ],
)
async def test_field_selectors(pods: Kube, fields: str, expected: set[str]) -> None:
    items = await pods.client.list(PODS, fields=fields)
    assert {i["metadata"]["name"] for i in items} == expected


@pytest.mark.parametrize(
    "params",
    [{"labelSelector": "app in vllm"}, {"fieldSelector": "spec.containers=x"}],
)
async def test_bad_selectors_are_400(kube: Kube, params: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as session:
        url = kube.url + resource_url(PODS, "default")
        async with session.get(url, params=params) as response:
            assert response.status == 400


async def test_namespaces_are_separate_and_cluster_scoped_resources_work(kube: Kube) -> None:
    await kube.client.create(NAMESPACES, {"metadata": {"name": "other"}}, None)
    await kube.client.create(PODS, pod("a", {}))
    await kube.client.create(PODS, pod("a", {}), "other")
    assert len(await kube.client.list(PODS)) == 1
    assert len(await kube.client.list(PODS, None)) == 2
    names = {n["metadata"]["name"] for n in await kube.client.list(NAMESPACES, None)}
    assert names == {"default", "other"}
    other = await kube.client.get(NAMESPACES, "other", None)
    assert other["status"] == {"phase": "Active"} and "namespace" not in other["metadata"]


# -- deletion -----------------------------------------------------------------------------


async def test_deletion_waits_for_finalizers(kube: Kube) -> None:
    await kube.client.create(
        BENCHMARKRUNS, {**run("a"), "metadata": {"name": "a", "finalizers": ["f"]}}
    )
    deleting = await kube.client.delete(BENCHMARKRUNS, "a")
    assert deleting["metadata"]["deletionTimestamp"]
    again = await kube.client.delete(BENCHMARKRUNS, "a")
    assert again["metadata"]["resourceVersion"] == deleting["metadata"]["resourceVersion"]
    assert (await kube.client.get(BENCHMARKRUNS, "a"))["metadata"]["finalizers"] == ["f"]

    await kube.client.patch(BENCHMARKRUNS, "a", {"metadata": {"finalizers": None}})
    assert await kube.client.get_or_none(BENCHMARKRUNS, "a") is None
    assert kube.emulator.read(BENCHMARKRUNS, "a") is None


async def test_deletion_without_finalizers_is_immediate(kube: Kube) -> None:
    await kube.client.create(BENCHMARKRUNS, run("a"))
    await kube.client.delete(BENCHMARKRUNS, "a")
    with pytest.raises(ApiError) as e:
        await kube.client.get(BENCHMARKRUNS, "a")
    assert e.value.status == 404
    recreated = await kube.client.create(BENCHMARKRUNS, run("a"))
    assert recreated["metadata"]["generation"] == 1


async def test_collect_garbage_follows_owner_references(kube: Kube) -> None:
    owner = await kube.client.create(BENCHMARKRUNS, run("a"))
    other = await kube.client.create(BENCHMARKRUNS, run("b"))

    def owned(name: str, *owners: dict[str, Any]) -> dict[str, Any]:
        refs = [{"uid": o["metadata"]["uid"], "name": o["metadata"]["name"]} for o in owners]
        return {"metadata": {"name": name, "ownerReferences": refs}, "spec": {}}

    job = await kube.client.create(JOBS, owned("job", owner))
    await kube.client.create(PODS, owned("job-pod", job))
    await kube.client.create(CONFIGMAPS, owned("shared", owner, other))

    assert await kube.emulator.collect_garbage() == []
    await kube.client.delete(BENCHMARKRUNS, "a")
    collected = await kube.emulator.collect_garbage()
    assert [(res.plural, name) for res, _, name in collected] == [
        ("jobs", "job"),
        ("pods", "job-pod"),
    ]
    assert await kube.client.get_or_none(CONFIGMAPS, "shared") is not None


# -- the request log and injected failures ------------------------------------------------


async def test_request_log_counts_by_method_and_path(kube: Kube) -> None:
    await kube.client.create(BENCHMARKRUNS, run("a"))
    for phase in ("A", "B", "C"):
        await kube.client.patch_status(BENCHMARKRUNS, "a", {"phase": phase})
    await kube.client.patch(BENCHMARKRUNS, "a", {"spec": {"x": 5}})
    assert kube.emulator.count("PATCH", "/benchmarkruns/a/status") == 3
    assert kube.emulator.count("PATCH", "/benchmarkruns/a") == 1
    assert kube.emulator.count("POST", RUNS_PATH, status=201) == 1


async def test_fail_next_fails_without_applying(kube: Kube) -> None:
    await kube.client.create(BENCHMARKRUNS, run("a"))
    fault = kube.emulator.fail_next("PATCH", "/benchmarkruns/a/status", 409)
    with pytest.raises(ApiError) as e:
        await kube.client.patch_status(BENCHMARKRUNS, "a", {"phase": "X"})
    assert e.value.status == 409 and e.value.body["reason"] == "Conflict"
    assert "status" not in (kube.emulator.read(BENCHMARKRUNS, "a") or {})
    assert fault.times == 0

    done = await kube.client.patch_status(BENCHMARKRUNS, "a", {"phase": "Y"})
    assert done["status"] == {"phase": "Y"}
    assert kube.emulator.count("PATCH", "/a/status", status=409) == 1
    assert kube.emulator.count("PATCH", "/a/status", status=200) == 1


# -- watch streams ------------------------------------------------------------------------


async def test_watch_from_zero_lists_then_streams(kube: Kube) -> None:
    await kube.client.create(BENCHMARKRUNS, run("a"))
    stream = watch(kube, RUNS_PATH, {"resourceVersion": "0"})
    assert await collect(stream, 1) == [("ADDED", "a")]
    await kube.client.create(BENCHMARKRUNS, run("b"))
    await kube.client.patch(BENCHMARKRUNS, "a", {"spec": {"x": 2}})
    await kube.client.delete(BENCHMARKRUNS, "b")
    assert await collect(stream, 3) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    await stream.aclose()


async def test_watch_resumes_after_a_resource_version(kube: Kube) -> None:
    created = await kube.client.create(BENCHMARKRUNS, run("a"))
    await kube.client.patch(BENCHMARKRUNS, "a", {"spec": {"x": 2}})
    await kube.client.create(BENCHMARKRUNS, run("b"))
    await kube.client.create(PODS, pod("p", {}))  # another resource: not in this stream
    since = created["metadata"]["resourceVersion"]
    stream = watch(kube, RUNS_PATH, {"resourceVersion": since})
    assert await collect(stream, 2) == [("MODIFIED", "a"), ("ADDED", "b")]
    await stream.aclose()


async def test_watch_with_a_label_selector_sees_objects_leave_and_enter(kube: Kube) -> None:
    await kube.client.create(PODS, pod("a", {"app": "vllm"}))
    stream = watch(kube, resource_url(PODS, "default"), {"labelSelector": "app=vllm"})
    assert await collect(stream, 1) == [("ADDED", "a")]
    await kube.client.create(PODS, pod("other", {"app": "x"}))
    await kube.client.patch(PODS, "a", {"metadata": {"labels": {"app": "x"}}})
    await kube.client.patch(PODS, "other", {"metadata": {"labels": {"app": "vllm"}}})
    assert await collect(stream, 2) == [("DELETED", "a"), ("ADDED", "other")]
    await stream.aclose()


async def test_watch_ends_at_timeout_seconds(kube: Kube) -> None:
    stream = watch(kube, RUNS_PATH, {"resourceVersion": "0", "timeoutSeconds": "1"})
    async with asyncio.timeout(5):
        assert [event async for event in stream] == []


async def test_watch_timeout_seconds_must_be_an_integer(kube: Kube) -> None:
    # kube-apiserver: `strconv.ParseInt: parsing "300.0": invalid syntax` (a kopf setting of
    # 300.0 once broke every watch of the operator on a real cluster).
    params = {"watch": "true", "timeoutSeconds": "300.0"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(kube.url + RUNS_PATH, params=params) as response,
    ):
        assert response.status == 400
        assert "300.0" in (await response.json())["message"]


async def test_watch_from_a_forgotten_version_is_410_gone() -> None:
    emulator = Emulator(history_limit=2)
    register_resources(emulator)
    async with serve(emulator) as url, aiohttp.ClientSession() as session:
        for name in "abcd":  # resourceVersions 1-4; only 3 and 4 are kept
            async with session.post(url + RUNS_PATH, json=run(name)) as response:
                assert response.status == 201
        params = {"watch": "true", "resourceVersion": "1"}
        async with session.get(url + RUNS_PATH, params=params) as response:
            event = json.loads(await response.content.readline())
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_watch_call_is_logged_with_status_200(kube: Kube) -> None:
    stream = watch(kube, RUNS_PATH, {})
    await kube.client.create(BENCHMARKRUNS, run("a"))
    assert await collect(stream, 1) == [("ADDED", "a")]
    await stream.aclose()
    assert kube.emulator.count("GET", RUNS_PATH, status=200) == 1


async def test_delete_preconditions_are_checked(kube: Kube) -> None:
    created = await kube.client.create(BENCHMARKRUNS, run("a"))
    url = kube.url + resource_url(BENCHMARKRUNS, "default", "a")
    async with aiohttp.ClientSession() as session:
        stale = {"preconditions": {"resourceVersion": "0"}}
        async with session.delete(url, json=stale) as response:
            assert response.status == 409
        fresh = {"preconditions": {"uid": created["metadata"]["uid"]}}
        async with session.delete(url, json=fresh) as response:
            assert response.status == 200
    assert kube.emulator.read(BENCHMARKRUNS, "a") is None
