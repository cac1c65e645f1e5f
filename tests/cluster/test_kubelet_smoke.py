"""The test kubelet against the real control plane of hack/kube-up.sh (marker ``cluster``;
the ``cluster`` fixture of conftest.py starts or reuses it, or skips where it cannot run).

A Deployment of the project image becomes Ready behind a Service; another pod reaches it by its
DNS names and calls the apiserver with its own service-account token; a pod with any other image
shows ErrImagePull/ImagePullBackOff; deleting a pod terminates its process gracefully.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from realkube import RealKube
from testkubelet.api import Api, ApiError, load_kubeconfig

pytestmark = pytest.mark.cluster

IMAGE = "ghcr.io/benchop/benchop:dev"
T = TypeVar("T")


async def wait_until(check: Callable[[], Awaitable[T | None]], what: str, limit: float = 90) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``limit`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


@pytest.fixture
async def kube(cluster: RealKube) -> AsyncIterator[Api]:
    api = Api(load_kubeconfig(cluster.kubeconfig))
    yield api
    await api.close()


@pytest.fixture
async def ns(kube: Api) -> AsyncIterator[str]:
    name = f"tk-smoke-{secrets.token_hex(3)}"
    await kube.post("/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    await kube.delete(f"/api/v1/namespaces/{name}")


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": containers, **spec},
    }


async def get_pod(kube: Api, ns: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = await kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
    return result


def log_of(state: Path, pod: dict[str, Any], container: str, restart: int = 0) -> str:
    """A container's log as the test kubelet writes it (``kubectl logs`` serves the same)."""
    m = pod["metadata"]
    path = (
        state
        / "kubelet"
        / "pods"
        / f"{m['namespace']}_{m['name']}_{m['uid']}"
        / container
        / f"{restart}.log"
    )
    return path.read_text() if path.exists() else ""


MOCK = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "mock"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "mock"}},
        "template": {
            "metadata": {"labels": {"app": "mock"}},
            "spec": {
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "fsGroup": 65532},
                "containers": [
                    {
                        "name": "mock",
                        "image": IMAGE,
                        "args": ["mock-server", "--host", "0.0.0.0", "--port", "8000"],
                        "ports": [{"name": "http", "containerPort": 8000}],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz", "port": "http"},
                            "periodSeconds": 1,
                        },
                        "securityContext": {
                            "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False,
                        },
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }
                ],
                "volumes": [{"name": "tmp", "emptyDir": {}}],
            },
        },
    },
}
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "mock"},
    "spec": {
        "selector": {"app": "mock"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    },
}
CLIENT = """
import json, os, urllib.request
from kubernetes import client, config
ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
got = {}
for url in ("http://mock/v1/models", f"http://mock.{ns}.svc.cluster.local/v1/models"):
    got[url] = json.load(urllib.request.urlopen(url, timeout=10))["object"]
config.load_incluster_config()
got["version"] = client.VersionApi().get_code().git_version
try:
    client.CoreV1Api().list_namespaced_secret(ns)
except client.ApiException as e:
    got["secrets"] = e.status
open("/dev/termination-log", "w").write(json.dumps(got))
"""


async def test_service_dns_token_image_pull_failure_and_graceful_deletion(
    cluster: RealKube, kube: Api, ns: str
):
    await kube.post(f"/apis/apps/v1/namespaces/{ns}/deployments", MOCK)
    await kube.post(f"/api/v1/namespaces/{ns}/services", SERVICE)

    async def mock_ready() -> bool:
        d = await kube.get(f"/apis/apps/v1/namespaces/{ns}/deployments/mock")
        return (d.get("status") or {}).get("readyReplicas") == 1

    await wait_until(mock_ready, "the mock Deployment to become ready")

    # another pod: Service DNS names, its own service-account token against real RBAC
    client = pod(
        "client",
        [{"name": "c", "image": IMAGE, "command": ["python", "-c", CLIENT]}],
        restartPolicy="Never",
    )
    await kube.post(f"/api/v1/namespaces/{ns}/pods", client)

    async def client_done() -> dict[str, Any] | None:
        p = await get_pod(kube, ns, "client")
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    done = await wait_until(client_done, "the client pod to finish")
    state = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert done["status"]["phase"] == "Succeeded", (state, log_of(cluster.dir, done, "c"))
    assert state["reason"] == "Completed"
    got = json.loads(state["message"])
    assert got[f"http://mock.{ns}.svc.cluster.local/v1/models"] == "list"
    assert got["http://mock/v1/models"] == "list"
    assert got["version"].startswith("v1.")
    assert got["secrets"] == 403  # the default service account may not list secrets

    # an image this kubelet cannot run fails like an image that cannot be pulled
    await kube.post(
        f"/api/v1/namespaces/{ns}/pods",
        pod("pull", [{"name": "c", "image": "busybox:1.36", "command": ["true"]}]),
    )

    async def pull_failed() -> dict[str, Any] | None:
        p = await get_pod(kube, ns, "pull")
        for cs in p["status"].get("containerStatuses") or []:
            reason = (cs["state"].get("waiting") or {}).get("reason")
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                return p
        return None

    p = await wait_until(pull_failed, "ErrImagePull on the pod with a foreign image")
    assert p["status"]["phase"] == "Pending"
    events = await kube.get(
        f"/api/v1/namespaces/{ns}/events", fieldSelector="involvedObject.name=pull"
    )
    assert any(
        e["reason"] == "Failed" and "Failed to pull image" in e["message"] for e in events["items"]
    )

    # deletion: SIGTERM, the process exits on its own within the grace period, pod deleted
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), "
        "sys.exit(0)))\n"
        "print('started', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    await kube.post(
        f"/api/v1/namespaces/{ns}/pods",
        pod(
            "graceful",
            [{"name": "c", "image": IMAGE, "command": ["python", "-c", script]}],
            terminationGracePeriodSeconds=60,
        ),
    )

    async def running() -> dict[str, Any] | None:
        p = await get_pod(kube, ns, "graceful")
        return p if "started" in log_of(cluster.dir, p, "c") else None

    p = await wait_until(running, "the graceful pod to start")
    await kube.delete(f"/api/v1/namespaces/{ns}/pods/graceful")

    async def gone() -> bool:
        try:
            await get_pod(kube, ns, "graceful")
        except ApiError as e:
            return e.status == 404
        return False

    await wait_until(gone, "the graceful pod to be deleted", limit=45)  # < its 60 s grace
    assert "got SIGTERM" in log_of(cluster.dir, p, "c")
