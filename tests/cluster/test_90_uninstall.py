"""Uninstall as docs/install.md says (runs first, then the release, then the CRDs) leaves
nothing behind: the real garbage collector removes every run's Job, pods and ConfigMap, and
helm everything it installed. Runs last: it removes the release the other tests share."""

from __future__ import annotations

import pytest
from realkube import RELEASE, RELEASE_NS, RealKube

pytestmark = pytest.mark.cluster

KINDS = (
    "deployments,daemonsets,replicasets,pods,services,serviceaccounts,configmaps,secrets,jobs,"
    "roles,rolebindings,networkpolicies"
)


def leftovers(cluster: RealKube) -> list[str]:
    found = cluster.kubectl(
        "get", KINDS, "-A", "-l", "app.kubernetes.io/name=benchop", "-o", "name"
    ).stdout.split()
    found += cluster.kubectl(
        "get", "clusterroles,clusterrolebindings", "-l", "app.kubernetes.io/name=benchop",
        "-o", "name",
    ).stdout.split()  # fmt: skip
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout.split()
    return found + [c for c in crds if c.endswith(".benchop.io")]


def test_uninstall_leaves_nothing_behind(release: RealKube) -> None:
    release.kubectl("delete", "br,bexp", "--all", "-A", "--wait", "--timeout=120s", timeout=130)
    release.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", "--timeout", "2m", timeout=150)
    release.kubectl(
        "delete", "crd", "benchmarkruns.benchop.io", "experiments.benchop.io",
        "--wait", "--timeout=60s", timeout=70,
    )  # fmt: skip
    release.wait_for(lambda: leftovers(release) == [], timeout=90, what="nothing left behind")
