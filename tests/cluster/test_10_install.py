"""`helm install` of charts/benchop with real helm on the real control plane."""

from __future__ import annotations

import pytest
from realkube import GPU_NODE, RELEASE_NS, RealKube

pytestmark = pytest.mark.cluster


def test_crds_established(release: RealKube) -> None:
    for crd in ("benchmarkruns.benchop.io", "experiments.benchop.io"):
        assert release.condition(release.get("crd", crd), "Established")["status"] == "True"


def test_operator_and_agent_pods_run(release: RealKube) -> None:
    pods = release.get("pods", namespace=RELEASE_NS)
    by_component: dict[str, list[dict]] = {}
    for pod in pods:
        component = pod["metadata"]["labels"].get("app.kubernetes.io/component", "")
        by_component.setdefault(component, []).append(pod)
    [operator] = by_component["operator"]
    assert operator["status"]["phase"] == "Running"
    assert release.condition(operator, "Ready")["status"] == "True"
    # The agent runs only where the GPU label is: the test kubelet's GPU node.
    [agent] = by_component["agent"]
    assert agent["spec"]["nodeName"] == GPU_NODE
    assert release.condition(agent, "Ready")["status"] == "True"


def test_operator_talks_to_the_apiserver_with_its_own_token(release: RealKube) -> None:
    # The operator pod's API calls carry its service account's identity (audit log), not
    # the admin's: RBAC applies to it.
    user = f"system:serviceaccount:{RELEASE_NS}:benchop-operator"
    assert release.wait_for(
        lambda: any(e["user"]["username"] == user for e in release.audit_events()),
        timeout=30,
        what=f"an API request by {user}",
    )
