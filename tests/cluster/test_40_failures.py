"""Failures end fast with a reason on the real control plane: a worker image that cannot be
pulled, and a namespace whose ResourceQuota refuses the worker pods. Each run ends within two
minutes with the reason in its conditions, and its Job is suspended with no pod left."""

from __future__ import annotations

import time
from typing import Any

import pytest
from realkube import RELEASE_NS, RealKube, namespace

pytestmark = pytest.mark.cluster

TINY: dict[str, Any] = {
    "target": {"model": "mock-llm", "podSelector": {"matchLabels": {"app": "mock-llm"}}},
    "workload": {"promptTokens": 16, "outputTokens": 4},
    "load": {"mode": "concurrency", "concurrency": 2, "workers": 2},
    "phases": {"profiling": {"requests": 8}},
    "gates": {"baseline": False},
}


def run_manifest(name: str, ns: str, url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {**TINY, "target": {**TINY["target"], "url": url}, **spec},
    }


def ends_failed_with(cluster: RealKube, ns: str, name: str, reason: str) -> dict[str, Any]:
    start = time.monotonic()
    run = cluster.wait_ended("br", name, ns, timeout=120)
    took = time.monotonic() - start
    succeeded = cluster.condition(run, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", reason), run["status"]
    job = cluster.get("job", f"{name}-loadgen", namespace=ns)
    assert job["spec"].get("suspend") is True, "the failed run's Job is not suspended"
    cluster.wait_for(
        lambda: (
            not [
                p
                for p in cluster.get("pods", namespace=ns)
                if p["metadata"].get("labels", {}).get("job-name") == f"{name}-loadgen"
            ]
        ),
        timeout=60,
        what="no worker pod left",
    )
    print(f"{name}: {reason} after {took:.0f}s: {succeeded['message']}")
    return dict(succeeded)


def test_unpullable_worker_image_fails_the_run(mock_server: str, release: RealKube) -> None:
    ns = namespace(release, "benchop-e2e-image")
    release.apply(
        run_manifest("no-image", ns, mock_server, pod={"image": "registry.invalid/nope:1"})
    )
    cond = ends_failed_with(release, ns, "no-image", "ImagePullFailed")
    assert "registry.invalid/nope:1" in cond["message"]


def test_pods_refused_by_a_resource_quota_fail_the_run(mock_server: str, release: RealKube) -> None:
    ns = namespace(release, "benchop-e2e-quota")
    release.apply(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-pods", "namespace": ns},
            "spec": {"hard": {"pods": "0"}},
        }
    )
    release.apply(run_manifest("quota", ns, mock_server))
    cond = ends_failed_with(release, ns, "quota", "PodCreateFailed")
    assert "exceeded quota" in cond["message"], cond


def test_a_spec_only_the_operator_refuses_is_rejected_once(release: RealKube) -> None:
    # The schema admits a dataset file at a relative path (local mode reads it beside the
    # spec); the operator refuses it with Accepted=False naming the field, an event, and no
    # crash loop.
    ns = namespace(release, "benchop-e2e-invalid")
    url = "http://mock.benchop-e2e.svc:8000/v1"
    workload = {"dataset": {"file": "data/chat.jsonl"}}
    release.apply(run_manifest("rel-path", ns, url, workload=workload))
    run = release.wait_ended("br", "rel-path", ns, timeout=60)
    accepted = release.condition(run, "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec"), run["status"]
    assert "spec.workload.dataset.file" in accepted["message"]
    assert release.get("job", "rel-path-loadgen", namespace=ns) is None
    events = release.kubectl("-n", ns, "describe", "br", "rel-path").stdout
    assert "spec.workload.dataset.file" in events.split("Events:")[-1], events
    [operator] = [
        p
        for p in release.get("pods", namespace=RELEASE_NS)
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"
    ]
    assert operator["status"]["containerStatuses"][0]["restartCount"] == 0
