"""A BenchmarkRun grants no more than a Job (docs/install.md), on the real control plane with
the chart as installed (hack/local-cluster-values.yaml: an image and a target allowlist,
CurveZMQ and NetworkPolicies on by default):

- a run naming another worker image, or a target host outside the allowlist, is refused with
  Accepted=False naming the field and what is allowed, and gets no Job;
- the NetworkPolicies are accepted by the apiserver as rendered (the test kubelet does not
  enforce them: docs/testing.md), the operator made the CurveZMQ Secret, and a run takes its
  GPU baselines through CurveZMQ;
- a run whose API key comes from a Secret succeeds (the mock server refuses requests without
  it) and the key shows up in no status, event, object or pod log (tests/integration/
  secretscan.py)."""

from __future__ import annotations

import base64
import json
import secrets
import sys
from typing import Any

import pytest
import yaml
from realkube import GPU_NODE, PROJECT_IMAGE, RELEASE_NS, ROOT, KubeError, RealKube, namespace

sys.path.insert(0, str(ROOT / "tests" / "integration"))
from secretscan import as_yaml, describe, scan

pytestmark = pytest.mark.cluster

NS = "benchop-e2e-priv"


def run_manifest(name: str, url: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "target": {"url": url, "model": "mock"},
            "workload": {"promptTokens": 16, "outputTokens": 4},
            "load": {"mode": "concurrency", "concurrency": 2, "workers": 2},
            "phases": {"profiling": {"requests": 8}},
            "gates": {"baseline": False},
            **spec,
        },
    }


def refused(cluster: RealKube, name: str) -> str:
    run = cluster.wait_ended("br", name, NS, timeout=60)
    accepted = cluster.condition(run, "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec"), run["status"]
    assert cluster.get("job", f"{name}-loadgen", namespace=NS) is None
    return str(accepted["message"])


def test_another_image_or_a_forbidden_host_is_refused(release: RealKube) -> None:
    namespace(release, NS)
    release.apply(
        [
            run_manifest("image", "http://mock.x.svc:8000/v1", pod={"image": "busybox:1.36"}),
            run_manifest("metadata", "http://169.254.169.254/latest/v1"),
            run_manifest("outside", "https://api.example.com/v1"),
        ]
    )
    assert refused(release, "image") == (
        "spec.pod.image: 'busybox:1.36' is not allowed; the operator runs workers only from "
        f"{PROJECT_IMAGE}, registry.invalid/nope:1 (its --image and --allowed-image)"
    )
    allowlist = "*.svc, *.svc.cluster.local, 10.0.0.0/8, 127.0.0.0/8"
    assert refused(release, "metadata") == (
        f"spec.target.url: host 169.254.169.254 is not in the allowlist {allowlist} "
        "(the operator's --allowed-target)"
    )
    assert refused(release, "outside").startswith(
        "spec.target.url: host api.example.com is not in the allowlist"
    )


def test_network_policies_and_curve_keys_are_in_place(release: RealKube) -> None:
    """The apiserver took the NetworkPolicies as rendered (it would refuse a malformed one);
    enforcing them is the CNI's job, which the test kubelet does not do."""
    rendered = release.helm(
        "get", "manifest", "benchop", "-n", RELEASE_NS
    ).stdout  # what helm applied
    wanted = {
        d["metadata"]["name"]: d["spec"]
        for d in yaml.safe_load_all(rendered)
        if d and d["kind"] == "NetworkPolicy"
    }
    stored = {
        p["metadata"]["name"]: p["spec"] for p in release.get("networkpolicy", namespace=RELEASE_NS)
    }
    assert sorted(stored) == sorted(wanted)
    assert {"benchop-agent", "benchop-operator"} <= wanted.keys()
    for name, spec in wanted.items():
        assert stored[name] == spec, name
    curve = release.get("secret", "benchop-curve", namespace=RELEASE_NS)
    assert sorted(curve["data"]) == [
        "agent.key",
        "agent.key_secret",
        "operator.key",
        "operator.key_secret",
    ]
    # The operator may read that one Secret and no other.
    sa = f"system:serviceaccount:{RELEASE_NS}:benchop-operator"
    can = release.kubectl(
        "auth", "can-i", "get", "secrets", "-n", RELEASE_NS, "--as", sa, check=False
    )
    assert can.stdout.strip() == "no"
    can = release.kubectl(
        "auth", "can-i", "get", "secret/benchop-curve", "-n", RELEASE_NS, "--as", sa, check=False
    )
    assert can.stdout.strip() == "yes"


def mock_with_key(cluster: RealKube, key: str) -> str:
    """The mock server, refusing requests without ``Authorization: Bearer <key>``, its key
    from the same Secret the run names; returns its URL."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "llm-key", "namespace": NS},
            "data": {"token": base64.b64encode(key.encode()).decode()},
        }
    )
    scenario = ROOT / "tests" / "e2e" / "scenarios" / "smoke" / "mock-server.yaml"
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(scenario.read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = NS
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            pod["nodeSelector"] = {"kubernetes.io/hostname": GPU_NODE}
            for c in pod["containers"]:
                c["image"] = PROJECT_IMAGE
                c["imagePullPolicy"] = "IfNotPresent"
                c["args"] += ["--api-key-env", "MOCK_KEY"]
                c["env"] = [
                    {
                        "name": "MOCK_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "llm-key", "key": "token"}},
                    }
                ]
    cluster.apply(docs)
    try:
        cluster.kubectl(
            "-n", NS, "rollout", "status", "deployment/mock-llm", "--timeout=120s", timeout=130
        )
    except KubeError as e:
        pods = cluster.kubectl("-n", NS, "get", "pods", "-o", "wide", check=False).stdout
        raise KubeError(f"{e}\n{pods}") from None
    return f"http://mock-llm.{NS}.svc:8000/v1"


def test_a_secret_api_key_works_through_curve_and_leaks_nowhere(release: RealKube) -> None:
    namespace(release, NS)
    key = "sk-bench-" + secrets.token_hex(12)
    url = mock_with_key(release, key)
    run = run_manifest(
        "keyed",
        url,
        target={
            "url": url,
            "model": "mock-llm",  # what the mock lists: each worker's preflight checks it
            "apiKeySecretRef": {"name": "llm-key", "key": "token"},
            "podSelector": {"matchLabels": {"app": "mock-llm"}},
        },
        gates={"baseline": True, "timeout": "5s"},
    )
    release.apply(run)
    body = release.wait_ended("br", "keyed", NS, timeout=180)
    assert release.condition(body, "Succeeded")["status"] == "True", body["status"]
    results = body["status"]["results"]
    assert results["requests"]["ok"] == results["requests"]["total"] == 8  # no 401
    # both baselines reached the agent over CurveZMQ (it answers only the operator's key)
    assert results["gpu"]["agents"], results.get("gpu")
    assert release.condition(body, "BaselineStartCaptured")["status"] == "True"
    job = release.get("job", "keyed-loadgen", namespace=NS)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert len(env["BENCHOP_CURVE_SERVER_KEY"]["value"]) == 40

    sources = {
        "run": as_yaml(body),
        "job": as_yaml(job),
        "configmap": as_yaml(release.get("configmap", "keyed-spec", namespace=NS)),
        "worker pods": as_yaml(release.get("pods", namespace=NS)),
        "events": as_yaml(release.get("events", namespace=NS))
        + as_yaml(release.get("events", namespace=RELEASE_NS)),
    }
    for ns, prefix, container in (
        (NS, "keyed-loadgen", "loadgen"),
        (NS, "mock-llm", "mock-llm"),
        (RELEASE_NS, "benchop-operator", "operator"),
        (RELEASE_NS, "benchop-agent", "agent"),
    ):
        logs = release.container_logs(ns, prefix, container)
        assert logs or container == "mock-llm", f"no {container} log read"
        sources[f"{container} log"] = logs
    operator_log = release.kubectl(
        "-n", RELEASE_NS, "logs", "deployment/benchop-operator", "--tail=-1"
    ).stdout
    assert operator_log
    sources["kubectl logs operator"] = operator_log
    leaks = scan(key, sources)
    assert leaks == [], describe(leaks)
    assert key not in json.dumps(sources)  # the scanner's plainest form, said twice
