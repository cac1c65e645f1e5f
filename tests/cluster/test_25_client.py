"""The operator's API client against the real apiserver, where the emulator has no twin: the
paged LIST of the runs' resync (``limit`` and ``continue`` tokens) and its read of one pod by
name (a LIST with a field selector: the operator may list pods, not get them)."""

from __future__ import annotations

import asyncio

import kopf
import pytest
from realkube import RealKube, namespace

from benchop.operator.k8s import CONFIGMAP, KubeApi

pytestmark = pytest.mark.cluster


def test_pages_list_every_object_once_in_pages_of_the_limit(
    cluster: RealKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = namespace(cluster, "client-pages")
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"cm-{i}", "namespace": ns, "labels": {"paged": "yes"}},
                "data": {"i": str(i)},
            }
            for i in range(5)
        ]
        + [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "other", "namespace": ns},
            }
        ]
    )
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))

    async def read() -> tuple[list[list[str]], int]:
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())  # reads $KUBECONFIG
        assert info is not None
        api = await KubeApi.connect(info)
        try:
            pages = [
                [cm["metadata"]["name"] for cm in page]
                async for page in api.pages(CONFIGMAP, ns, labels="paged=yes", limit=2)
            ]
            requests = api.requests
            one = await api.list(CONFIGMAP, ns, fields="metadata.name=cm-3")
            assert [cm["data"] for cm in one] == [{"i": "3"}]
            assert await api.list(CONFIGMAP, ns, fields="metadata.name=gone") == []
            return pages, requests
        finally:
            await api.close()

    pages, requests = asyncio.run(read())
    assert [len(p) for p in pages] == [2, 2, 1] and requests == 3
    assert sorted(n for p in pages for n in p) == [f"cm-{i}" for i in range(5)]
