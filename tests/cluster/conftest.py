"""Fixtures for the real-control-plane tests (marker ``cluster``): the control plane of
hack/kube-up.sh, the chart installed with real helm, and benchop's mock model server running as
a Deployment behind a Service.

Where the control plane cannot run (not root, no Go and no prebuilt binaries) these tests skip
and say why; under ``CI=true`` that is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from realkube import (
    E2E_NS,
    GPU_NODE,
    MOCK_URL,
    PROJECT_IMAGE,
    RELEASE,
    RELEASE_NS,
    ROOT,
    SLOT,
    KubeError,
    RealKube,
    namespace,
)

STUCK_AFTER = "15s"
"""The release's ``--stuck-after`` (the chart's default is 60s): how long test_40_failures' and
test_60_results' runs wait before their stuck pods fail them. hack/fault_suite.py
(test_95_faults) upgrades the release with its own values, back to the chart's 60s."""


def _cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the test kubelet needs root (network namespaces, mounts)"
    if (
        shutil.which("go") is None
        and not RealKube.is_up()
        and not any((ROOT / ".tools" / "controlplane").glob("*/.built"))
    ):
        return "no Go toolchain to build the control plane (hack/build-controlplane.sh)"
    return None


def require_control_plane() -> None:
    """Skip (fail under ``CI=true``) where no control plane can run here."""
    reason = _cannot_run()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the real control plane cannot run: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster() -> Iterator[RealKube]:
    require_control_plane()
    kube = RealKube.up()
    yield kube
    if kube.started and os.environ.get("BENCHOP_KUBE_KEEP") != "1":
        kube.down()


@pytest.fixture
def spare_slot() -> int:
    """Another control plane's slot (BENCHOP_KUBE_SLOT) for a test that starts and purges its
    own, beside this session's (tests/conftest.py then runs it on another xdist worker):
    ``BENCHOP_SPARE_SLOT``, else the session's slot + 1 (8 beside slot 9)."""
    require_control_plane()
    return int(os.environ.get("BENCHOP_SPARE_SLOT", SLOT + 1 if SLOT < 9 else 8))


@pytest.fixture(scope="session")
def release(cluster: RealKube) -> RealKube:
    """The chart installed (or upgraded) with real helm into a Pod-Security-restricted
    namespace; returns once the operator and the agent are ready."""
    namespace(cluster, RELEASE_NS)
    cluster.release_since = time.time()
    cluster.helm(
        "upgrade", "--install", RELEASE, str(ROOT / "charts" / "benchop"),
        "-n", RELEASE_NS,
        "-f", str(ROOT / "hack" / "local-cluster-values.yaml"),
        "--set", f"operator.stuckAfter={STUCK_AFTER}",
        "--wait", "--timeout", "3m",
        timeout=240,
    )  # fmt: skip
    return cluster


@pytest.fixture(scope="session")
def mock_server(release: RealKube) -> str:
    """benchop's mock model server as a Deployment + Service on the GPU node (where the agent
    runs); returns its base URL as pods see it."""
    namespace(release, E2E_NS)
    scenario = ROOT / "tests" / "e2e" / "scenarios" / "smoke" / "mock-server.yaml"
    docs: list[dict[str, Any]] = list(yaml.safe_load_all(scenario.read_text()))
    for doc in docs:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            pod["nodeSelector"] = {"kubernetes.io/hostname": GPU_NODE}
            for c in pod["containers"]:
                c["image"] = PROJECT_IMAGE
                c["imagePullPolicy"] = "IfNotPresent"
    release.apply(docs)
    try:
        release.kubectl(
            "-n", E2E_NS, "rollout", "status", "deployment/mock-llm", "--timeout=120s", timeout=130
        )
    except KubeError as e:
        pods = release.kubectl("-n", E2E_NS, "get", "pods", "-o", "wide", check=False).stdout
        raise KubeError(f"{e}\n{pods}") from None
    return MOCK_URL
