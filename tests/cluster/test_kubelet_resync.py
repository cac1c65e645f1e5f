"""testkubelet after an API outage: a relist reports what it missed, and the writes a pod's end
needs (its last status, the final DELETE) outlive the outage."""

from __future__ import annotations

import aiohttp
import pytest
from testkubelet.api import ApiError, Informer
from testkubelet.pods import delete_pod_object, transient, until_done


def pod(name: str, uid: str, rv: str = "1") -> dict:
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": rv}}


def test_a_relist_deletes_what_vanished_and_what_was_replaced_under_its_name():
    seen: list[tuple[str, str]] = []
    inf = Informer(None, "/api/v1/pods", lambda kind, o: seen.append((kind, o["metadata"]["uid"])))  # type: ignore[arg-type]
    inf._replace([pod("a", "u1"), pod("b", "u2"), pod("c", "u3")])
    seen.clear()
    # while the watch was down: a deleted, b deleted and re-created (same name), c changed
    inf._replace([pod("b", "u4"), pod("c", "u3", rv="2")])
    assert sorted(seen) == [("ADDED", "u4"), ("DELETED", "u1"), ("DELETED", "u2"),
                            ("MODIFIED", "u3")]  # fmt: skip
    assert {o["metadata"]["uid"] for o in inf.objects.values()} == {"u3", "u4"}


def test_transient_failures():
    assert transient(ApiError(503, "x")) and transient(ApiError(429, "x"))
    assert transient(aiohttp.ClientConnectionError()) and transient(TimeoutError())
    assert not transient(ApiError(404, "x")) and not transient(ApiError(422, "x"))
    assert not transient(ValueError())


class FakeApi:
    """Fails ``failures`` DELETEs with ``error``, then answers; records the calls."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls: list[tuple[str, dict]] = []

    async def delete(self, path: str, body: dict) -> dict:
        self.calls.append((path, body))
        if len(self.calls) <= self.failures:
            raise self.error
        return {}


async def test_the_final_delete_is_retried_through_an_outage(monkeypatch):
    pauses: list[float] = []

    async def no_sleep(s: float) -> None:
        pauses.append(s)

    monkeypatch.setattr("testkubelet.pods.asyncio.sleep", no_sleep)
    api = FakeApi(5, aiohttp.ServerDisconnectedError())
    await delete_pod_object(api, "ns", "p", "u1")  # type: ignore[arg-type]
    assert len(api.calls) == 6
    assert api.calls[-1] == ("/api/v1/namespaces/ns/pods/p", {
        "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
        "preconditions": {"uid": "u1"}})  # fmt: skip
    assert pauses == [0.5, 1.0, 2.0, 4.0, 8.0]


async def test_a_gone_pod_ends_the_delete_and_other_errors_are_not_retried(monkeypatch):
    api = FakeApi(1, ApiError(409, "uid precondition"))
    await delete_pod_object(api, "ns", "p", "u1")  # type: ignore[arg-type]
    assert len(api.calls) == 1

    async def bad() -> None:
        raise ApiError(422, "invalid")

    with pytest.raises(ApiError):
        await until_done(bad, "x")


async def test_until_done_stops_when_told():
    calls = 0

    async def failing() -> None:
        nonlocal calls
        calls += 1
        raise TimeoutError

    async def no_sleep(_: float) -> None:
        return None

    assert not await until_done(failing, "x", give_up=lambda: calls >= 3, sleep=no_sleep)
    assert calls == 3
