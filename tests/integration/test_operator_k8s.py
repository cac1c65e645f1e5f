"""The operator's API client and StatusWriter against the emulator: error mapping, 409 retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import kopf
import pytest
from kube.harness import BENCHMARKRUNS, Kube

from benchop.operator.k8s import BENCHMARKRUN, CONFIGMAP, Conflict, KubeApi
from benchop.operator.status import StatusWriter

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def api(kube: Kube) -> AsyncIterator[KubeApi]:
    client = await KubeApi.connect(kopf.ConnectionInfo(server=kube.url), timeout_s=5)
    yield client
    await client.close()


async def make_run(kube: Kube, name: str = "r") -> None:
    await kube.client.create(BENCHMARKRUNS, {"metadata": {"name": name}, "spec": {}})


async def test_get_404_is_none_and_create_409_returns_the_existing_object(
    kube: Kube, api: KubeApi
) -> None:
    assert await api.get(BENCHMARKRUN, "default", "missing") is None
    cm = {"metadata": {"name": "c1"}, "data": {"k": "v"}}
    created = await api.create(CONFIGMAP, "default", cm)
    again = await api.create(CONFIGMAP, "default", {**cm, "data": {"k": "other"}})
    assert again["metadata"]["uid"] == created["metadata"]["uid"]
    assert again["data"] == {"k": "v"}  # idempotent: the existing object, unchanged


async def test_5xx_and_429_become_temporary_errors(kube: Kube, api: KubeApi) -> None:
    kube.emulator.fail_next("GET", "/benchmarkruns/r", 503)
    with pytest.raises(kopf.TemporaryError):
        await api.get(BENCHMARKRUN, "default", "r")
    kube.emulator.fail_next("POST", "/configmaps", 429)
    with pytest.raises(kopf.TemporaryError):
        await api.create(CONFIGMAP, "default", {"metadata": {"name": "c2"}})


async def test_patch_status_conflict_on_stale_resource_version(kube: Kube, api: KubeApi) -> None:
    await make_run(kube)
    body = kube.emulator.read(BENCHMARKRUNS, "r")
    assert body is not None
    rv = body["metadata"]["resourceVersion"]
    await api.patch_status(BENCHMARKRUN, "default", "r", {"phase": "Initializing"}, rv)
    with pytest.raises(Conflict):
        await api.patch_status(BENCHMARKRUN, "default", "r", {"phase": "Warmup"}, rv)
    assert await api.patch_status(BENCHMARKRUN, "default", "gone", {"phase": "x"}, "1") is None


async def test_status_writer_retries_conflicts_and_serialises_updates(
    kube: Kube, api: KubeApi
) -> None:
    await make_run(kube)
    writer = StatusWriter(api, "default", "r")
    await writer.update(lambda st: {**st, "phase": "Initializing", "n": 0})
    # someone else bumps the resourceVersion: the cached one is now stale -> 409, re-read
    await kube.client.patch(BENCHMARKRUNS, "r", {"metadata": {"labels": {"x": "y"}}})
    await writer.update(lambda st: {**st, "phase": "Warmup"})
    assert writer.conflicts == 1
    kube.emulator.fail_next("PATCH", "/benchmarkruns/r/status", 409, times=2)
    await writer.update(lambda st: {**st, "phase": "Warmup", "m": 1})
    assert writer.conflicts == 3
    # concurrent read-modify-writes never lose an increment
    await asyncio.gather(*(writer.update(lambda st: {**st, "n": st["n"] + 1}) for _ in range(20)))
    body = kube.emulator.read(BENCHMARKRUNS, "r")
    assert body is not None and body["status"]["n"] == 20 and body["status"]["phase"] == "Warmup"
    # an unchanged status sends nothing
    before = kube.emulator.count("PATCH", "/benchmarkruns/r/status")
    await writer.update(lambda st: dict(st))
    assert kube.emulator.count("PATCH", "/benchmarkruns/r/status") == before


async def test_status_writer_on_a_deleted_run_returns_none(kube: Kube, api: KubeApi) -> None:
    writer = StatusWriter(api, "default", "nope")
    assert await writer.update(lambda st: {**st, "phase": "x"}) is None and writer.gone
