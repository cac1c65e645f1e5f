"""The operator's API client and StatusWriter against the emulator: error mapping, 409 retries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from aiohttp import web
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
    writer = StatusWriter(api, BENCHMARKRUN, "default", "r")
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
    writer = StatusWriter(api, BENCHMARKRUN, "default", "nope")
    assert await writer.update(lambda st: {**st, "phase": "x"}) is None and writer.gone


def owned(name: str, uid: str) -> dict[str, Any]:
    ref = {"apiVersion": "benchop.io/v1alpha1", "kind": "BenchmarkRun", "name": "r", "uid": uid}
    return {"metadata": {"name": name, "ownerReferences": [{**ref, "controller": True}]}}


async def test_create_409_does_not_adopt_another_owners_child(kube: Kube, api: KubeApi) -> None:
    """A re-created parent (new uid) finds the old parent's child: retried until GC removes it."""
    await api.create(CONFIGMAP, "default", owned("c3", "uid-old"))
    with pytest.raises(kopf.TemporaryError) as err:
        await api.create(CONFIGMAP, "default", owned("c3", "uid-new"))
    assert err.value.delay == 2.0 and "uid-old" in str(err.value)
    same = await api.create(CONFIGMAP, "default", owned("c3", "uid-old"))
    assert same["metadata"]["ownerReferences"][0]["uid"] == "uid-old"


@contextlib.asynccontextmanager
async def client_of(handler: Any) -> AsyncIterator[KubeApi]:
    """A KubeApi whose every request ``handler`` answers (a server on a free loopback port)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = await KubeApi.connect(kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}"))
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_non_json_error_body_is_mapped_with_its_text() -> None:
    """An HTML 502 from a proxy is a TemporaryError carrying the text, not a ValueError."""

    async def html(_: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>", content_type="text/html")

    async with client_of(html) as client:
        with pytest.raises(kopf.TemporaryError, match="Bad Gateway"):
            await client.get(BENCHMARKRUN, "default", "r")


async def test_retry_delays_back_off_with_the_streak_and_honour_retry_after() -> None:
    """The TemporaryError delays: Retry-After is a floor; the ceiling doubles per error in a
    row (1, 2, 4 s) and an answer that is not an error starts it again."""
    answers = iter(
        [(429, {"Retry-After": "7"}), (503, {}), (503, {}), (503, {}), (200, {}), (500, {})]
    )

    async def scripted(_: web.Request) -> web.Response:
        status, headers = next(answers)
        return web.json_response({"items": []}, status=status, headers=headers)

    async with client_of(scripted) as client:
        delays = []
        for _ in range(4):
            with pytest.raises(kopf.TemporaryError) as err:
                await client.list(CONFIGMAP, "default")
            delays.append(err.value.delay)
        assert client.errors_in_a_row == 4
        assert await client.list(CONFIGMAP, "default") == []
        assert client.errors_in_a_row == 0
        with pytest.raises(kopf.TemporaryError) as err:
            await client.list(CONFIGMAP, "default")
    assert delays[0] is not None and 7.0 <= delays[0] <= 7.0 + 1.0
    assert all(d is not None and 0 <= d <= 2.0**n for n, d in enumerate(delays[1:], start=1))
    assert err.value.delay is not None and 0 <= err.value.delay <= 1.0
