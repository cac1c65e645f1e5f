"""The Helm chart, rendered by a real helm binary and checked offline.

helm comes from hack/install-tools.sh (pinned, in .tools/bin) or PATH; without it these tests
skip with the reason, except under CI=true, where a missing helm is a failure.

Not covered here: the load-generator Job (no service-account token, non-root, read-only root)
is built by the operator, not the chart; its builder tests check it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "benchop"
NS = "benchop-system"
RELEASE = "benchop"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator knows.
KUBE_VERSIONS = ("1.29", "1.37")

NON_DEFAULT: dict[str, Any] = {
    "operator": {
        "watchNamespaces": ["team-a", "team-b"],
        "gateTimeout": "10s",
        "loadgenImage": "registry.example/benchop:loadgen",
        "allowedImages": ["registry.example/benchop:debug"],
        "allowedTargets": ["10.0.0.0/8", "*.svc.cluster.local"],
        "allowedPrometheus": ["prometheus.monitoring.svc"],
        "peering": {"enabled": True},
    },
    "agent": {
        "runtimeClassName": "nvidia",
        "podResources": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "mockServer": {"enabled": True, "port": 8001},
    "argocd": {"healthCheck": {"enabled": True}},
}


# --------------------------------------------------------------------------- helpers


def find_tool(name: str) -> str | None:
    """The pinned tool from hack/install-tools.sh, else the one on PATH."""
    for d in (os.environ.get("BENCHOP_TOOLS_BIN"), str(ROOT / ".tools" / "bin")):
        if d and os.access(Path(d) / name, os.X_OK):
            return str(Path(d) / name)
    return shutil.which(name)


@pytest.fixture(scope="module")
def helm() -> str:
    path = find_tool("helm")
    if path is None:
        msg = "helm not found in .tools/bin or PATH: run `bash hack/install-tools.sh`"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI must have it)")
        pytest.skip(msg)
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


def render(helm: str, tmp_path: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`helm template --include-crds` with the given values, as a list of manifests."""
    vf = tmp_path / "values.yaml"
    vf.write_text(yaml.safe_dump(values or {}))
    res = run_helm(
        helm, "template", RELEASE, str(CHART), "-n", NS, "--include-crds", "-f", str(vf),
        "--kube-version", f"{KUBE_VERSIONS[0]}.0",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


@pytest.fixture(scope="module")
def default_docs(helm: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(helm, tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="module")
def custom_docs(helm: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(helm, tmp_path_factory.mktemp("custom"), NON_DEFAULT)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, kind, name)["spec"]["template"]["spec"]
    return spec


def args_of(container: dict[str, Any]) -> dict[str, list[str]]:
    """`--flag=value` args as {flag: [values]}."""
    out: dict[str, list[str]] = {}
    for a in container["args"][1:]:
        flag, _, value = a.partition("=")
        out.setdefault(flag, []).append(value)
    return out


def crd_files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.yaml"))}


# --------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["default", "non-default"])
def test_helm_lint_strict(helm: str, tmp_path: Path, values: dict[str, Any]) -> None:
    vf = tmp_path / "values.yaml"
    vf.write_text(yaml.safe_dump(values))
    res = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(vf))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 chart(s) failed" in res.stdout


def test_default_render_has_the_expected_objects(default_docs: list[dict[str, Any]]) -> None:
    kinds = sorted(
        (d["kind"], d["metadata"]["name"])
        for d in default_docs
        if d["kind"] != "CustomResourceDefinition"
    )
    assert kinds == [
        ("ClusterRole", "benchop-operator"),
        ("ClusterRoleBinding", "benchop-operator"),
        ("DaemonSet", "benchop-agent"),
        ("Deployment", "benchop-operator"),
        ("NetworkPolicy", "benchop-agent"),
        ("NetworkPolicy", "benchop-operator"),
        ("Role", "benchop-operator-curve"),
        ("RoleBinding", "benchop-operator-curve"),
        ("Service", "benchop-operator"),
        ("ServiceAccount", "benchop-agent"),
        ("ServiceAccount", "benchop-operator"),
    ]


def test_non_default_render_has_roles_servicemonitor_and_argocd(
    custom_docs: list[dict[str, Any]],
) -> None:
    def where(kind: str) -> list[str]:
        return sorted(
            d["metadata"]["namespace"]
            for d in custom_docs
            if d["kind"] == kind and not d["metadata"]["name"].endswith("-curve")
        )

    assert where("Role") == where("RoleBinding") == sorted(["team-a", "team-b", NS])
    one(custom_docs, "ServiceMonitor")
    one(custom_docs, "ConfigMap", "benchop-argocd-health")
    # the mock server, and the operator sends runs without target.url to its Service
    mock = one(custom_docs, "Service", "benchop-mock")
    assert mock["spec"]["ports"][0]["port"] == 8001
    selector = mock["spec"]["selector"]
    template = one(custom_docs, "Deployment", "benchop-mock")["spec"]["template"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert template["spec"]["containers"][0]["args"][:3] == [
        "mock-server", "--host=0.0.0.0", "--port=8001"
    ]  # fmt: skip
    operator = pod_spec(custom_docs, "Deployment", "benchop-operator")["containers"][0]
    assert "--default-target-url=http://benchop-mock.benchop-system.svc:8001/v1" in operator["args"]
    assert one(custom_docs, "Service", "benchop-agent")["spec"]["clusterIP"] == "None"


@pytest.mark.parametrize("which", ["default", "non-default"])
def test_every_manifest_validates_strictly_offline(
    which: str, default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]]
) -> None:
    docs = default_docs if which == "default" else custom_docs
    checked = 0
    for doc in docs:
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            # ServiceMonitor is prometheus-operator's CRD: no schema ships with
            # kubernetes-validate and we do not vendor theirs. Its shape is asserted below.
            continue
        for version in KUBE_VERSIONS:
            # Raises (test fails) on a schema error *and* on an unknown kind.
            kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 7


# --------------------------------------------------------------------------- operator


def test_operator_args_follow_the_contract(custom_docs: list[dict[str, Any]]) -> None:
    c = pod_spec(custom_docs, "Deployment", "benchop-operator")["containers"][0]
    assert c["args"][0] == "operator"
    a = args_of(c)
    assert a["--namespace"] == ["team-a", "team-b"]
    assert a["--gate-port"] == ["5555"]
    assert a["--snapshot-port"] == ["5556"]
    assert a["--live-interval"] == ["5s"]
    assert a["--refresh-interval"] == ["10s"]
    assert a["--health-port"] == ["8080"]
    assert a["--agent-port"] == ["5557"]
    assert a["--image"] == ["registry.example/benchop:loadgen"]
    assert a["--allowed-image"] == ["registry.example/benchop:debug"]
    assert a["--allowed-target"] == ["10.0.0.0/8", "*.svc.cluster.local"]
    assert a["--allowed-prometheus"] == ["prometheus.monitoring.svc"]
    assert a["--gate-timeout"] == ["10s"]
    assert a["--peering"] == ["benchop"]
    svc = one(custom_docs, "Service", "benchop-operator")
    assert a["--operator-service"] == [f"{svc['metadata']['name']}.{NS}.svc"]
    # The selector must match the labels the DaemonSet puts on agent pods.
    agent_labels = one(custom_docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    [selector] = a["--agent-selector"]
    for term in selector.split(","):
        key, _, value = term.partition("=")
        assert agent_labels[key] == value
    assert agent_labels["app.kubernetes.io/component"] == "agent"


def test_operator_defaults_watch_all_namespaces(default_docs: list[dict[str, Any]]) -> None:
    c = pod_spec(default_docs, "Deployment")["containers"][0]
    a = args_of(c)
    assert "--namespace" not in a
    assert "--gate-timeout" not in a and "--peering" not in a
    assert a["--image"] == [c["image"]]
    # no other image, any target and Prometheus host (docs/install.md)
    assert not {"--allowed-image", "--allowed-target", "--allowed-prometheus"} & a.keys()


def test_operator_service_exposes_gate_and_snapshot(default_docs: list[dict[str, Any]]) -> None:
    svc = one(default_docs, "Service", "benchop-operator")
    dep = one(default_docs, "Deployment")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"gate": 5555, "snapshot": 5556}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    c = dep["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"gate": 5555, "snapshot": 5556, "health": 8080}
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080
    # liveness only after the startup probe passed: the preload of runs in progress may be long
    startup = c["startupProbe"]
    assert startup["httpGet"] == c["livenessProbe"]["httpGet"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600
    assert "initialDelaySeconds" not in c["livenessProbe"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize(
    ("kind", "name", "module"),
    [
        ("Deployment", "benchop-operator", "benchop.operator.command"),
        ("DaemonSet", "benchop-agent", "benchagent.command"),
        ("Deployment", "benchop-mock", "benchop.mockserver"),
    ],
)
def test_rendered_args_parse_with_the_real_cli(
    kind: str,
    name: str,
    module: str,
    default_docs: list[dict[str, Any]],
    custom_docs: list[dict[str, Any]],
) -> None:
    """The chart and the CLI agree on every flag (argparse exits on an unknown one)."""
    cli = importlib.import_module(module)
    for docs in (default_docs, custom_docs):
        if not any(d["kind"] == kind and d["metadata"]["name"] == name for d in docs):
            assert docs is default_docs and name == "benchop-mock"  # off by default
            continue
        parser = argparse.ArgumentParser(prog=f"benchop {kind}")
        cli.add_arguments(parser)
        args = pod_spec(docs, kind, name)["containers"][0]["args"][1:]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                parser.parse_args(args)
            except SystemExit:
                pytest.fail(f"{module} rejects the chart's args {args}: {err.getvalue()}")


# --------------------------------------------------------------------------- agent


def test_agent_daemonset_defaults(default_docs: list[dict[str, Any]]) -> None:
    ds = one(default_docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "benchop"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert "runtimeClassName" not in spec
    assert not any(v.get("hostPath") for v in spec["volumes"])
    c = spec["containers"][0]
    a = args_of(c)
    assert c["args"][0] == "agent"
    assert a["--metrics-port"] == ["9400"] and a["--baseline-port"] == ["5557"]
    assert a["--gpu-backend"] == ["auto"] and "--pod-resources-socket" not in a
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9400, "baseline": 5557}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {}))


def test_agent_options(custom_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(custom_docs, "DaemonSet")
    assert spec["runtimeClassName"] == "nvidia"
    [vol] = [v for v in spec["volumes"] if "hostPath" in v]
    assert vol["hostPath"] == {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"}
    c = spec["containers"][0]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
    assert mount["readOnly"] is True
    sock = args_of(c)["--pod-resources-socket"]
    assert sock == [mount["mountPath"] + "/kubelet.sock"]


def test_servicemonitor_scrapes_the_agent_metrics_port(custom_docs: list[dict[str, Any]]) -> None:
    sm = one(custom_docs, "ServiceMonitor")
    svc = one(custom_docs, "Service", "benchop-agent")
    ds = one(custom_docs, "DaemonSet")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    [ep] = sm["spec"]["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics"
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"metrics": 9400}


# --------------------------------------------------------------------------- security


def workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]


@pytest.mark.parametrize("which", ["default", "non-default"])
def test_pods_are_non_root_unprivileged_read_only(
    which: str, default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]]
) -> None:
    docs = default_docs if which == "default" else custom_docs
    seen = []
    for name, spec in workloads(docs):
        seen.append(name)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), (name, key)
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["privileged"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert "add" not in sc["capabilities"], name
            assert not any(p.get("hostPort") for p in c["ports"]), name
            assert c["resources"]["limits"]["memory"], name
            # Python writes only to /tmp (an emptyDir) under a read-only root; the keys are
            # mounted read-only.
            assert {m["mountPath"] for m in c["volumeMounts"]} <= {
                "/tmp",
                "/var/lib/kubelet/pod-resources",
                "/etc/benchop/curve",
            }, name
            assert all(m.get("readOnly") for m in c["volumeMounts"] if m["mountPath"] != "/tmp"), (
                name
            )
    mock = ["benchop-mock"] if which == "non-default" else []
    assert sorted(seen) == ["benchop-agent", *mock, "benchop-operator"]


def test_agent_has_no_api_token(default_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(default_docs, "DaemonSet")
    assert spec["automountServiceAccountToken"] is False
    sa = one(default_docs, "ServiceAccount", spec["serviceAccountName"])
    assert sa["automountServiceAccountToken"] is False
    bound = [
        s["name"]
        for d in default_docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for s in d["subjects"]
    ]
    assert spec["serviceAccountName"] not in bound


def test_schema_rejects_privileged_agent_and_bad_values(helm: str, tmp_path: Path) -> None:
    for bad, expect in (
        ({"agent": {"securityContext": {"privileged": True}}}, "privileged"),
        ({"operator": {"liveInterval": 5}}, "liveInterval"),
        ({"operator": {"liveInterval": "5 seconds"}}, "liveInterval"),
        ({"agent": {"gpuBackend": "cuda"}}, "gpuBackend"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces"),
        ({"operatr": {}}, "operatr"),
    ):
        vf = tmp_path / "bad.yaml"
        vf.write_text(yaml.safe_dump(bad))
        res = run_helm(helm, "template", RELEASE, str(CHART), "-f", str(vf))
        assert res.returncode != 0, bad
        assert expect in res.stderr, (bad, res.stderr)


# --------------------------------------------------------------------------- RBAC

# Everything the operator may be granted, as (apiGroup, resource, verb). The chart may grant
# less (e.g. namespaces only in namespaced mode), never more.
WHITELIST: frozenset[tuple[str, str, str]] = frozenset(
    {
        # Warning events on refused/failed runs; Jobs' FailedCreate events watched.
        *(("", "events", v) for v in ("create", "list", "watch")),
        # kopf discovers and follows the CRDs it serves.
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        # kopf, namespaced mode: matches --namespace against existing namespaces.
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        # BenchmarkRun: watched, finalizer/annotation patches, child runs of Experiments.
        *(("benchop.io", "benchmarkruns", v) for v in ("get", "list", "watch", "patch", "create")),
        # Experiment: watched, finalizer/annotation patches.
        *(("benchop.io", "experiments", v) for v in ("get", "list", "watch", "patch")),
        # Status subresources: the operator is their only writer.
        ("benchop.io", "benchmarkruns/status", "patch"),
        ("benchop.io", "experiments/status", "patch"),
        # blockOwnerDeletion on children, under OwnerReferencesPermissionEnforcement.
        ("benchop.io", "benchmarkruns/finalizers", "update"),
        ("benchop.io", "experiments/finalizers", "update"),
        # Load-generator Jobs: create, watch for failure, suspend a failed run's; the
        # collect Job of a run with an output PVC (create).
        *(("batch", "jobs", v) for v in ("create", "get", "list", "watch", "patch")),
        # The ConfigMap with a run's spec (a 409 on create reads the existing one); the run's
        # results ConfigMap (results.json, timeseries.csv): created at the end, merge-patched
        # when it exists (a restarted operator writes it again); the dataset or tokenizer
        # ConfigMap a run mounts, read while its workers start (missing: the run fails).
        ("", "configmaps", "create"),
        ("", "configmaps", "get"),
        ("", "configmaps", "patch"),
        # Pods, read-only: workers, the target's nodes, agent pods.
        ("", "pods", "list"),
        ("", "pods", "watch"),
        # CurveZMQ keys (curve.enabled): the one Secret by name, made on first start.
        ("", "secrets", "get[benchop-curve]"),
        ("", "secrets", "create"),
        # kopf peering, only when operator.peering.enabled.
        *(
            ("kopf.dev", r, v)
            for r in ("kopfpeerings", "clusterkopfpeerings")
            for v in ("get", "list", "watch", "patch")
        ),
    }
)
PEERING = {t for t in WHITELIST if t[0] == "kopf.dev"}
NAMESPACES = {t for t in WHITELIST if t[1] == "namespaces"}
SECRETS = {t for t in WHITELIST if t[1] == "secrets"}


def grants(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) per grant; a verb limited to names reads ``get[a,b]``."""
    out = set()
    for rule in doc["rules"]:
        assert "nonResourceURLs" not in rule
        names = rule.get("resourceNames")
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    out.add((g, r, f"{v}[{','.join(names)}]" if names else v))
    return out


def all_grants(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return set().union(*(grants(d) for d in docs if d["kind"] in ("Role", "ClusterRole")))


@pytest.mark.parametrize("which", ["default", "non-default"])
def test_rbac_grants_nothing_beyond_the_whitelist(
    which: str, default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]]
) -> None:
    docs = default_docs if which == "default" else custom_docs
    granted = all_grants(docs)
    assert not {t for t in granted if "*" in t}, "no wildcards"
    assert granted - WHITELIST == set()
    # Secrets: the CurveZMQ one only, in the release namespace (the operator never reads the
    # Secrets of runs: the kubelet resolves a run's secretKeyRef)
    for doc in docs:
        if (
            doc["kind"] in ("Role", "ClusterRole")
            and doc["metadata"]["name"] != "benchop-operator-curve"
        ):
            assert not {t for t in grants(doc) if t[1] == "secrets"}, doc["metadata"]
    curve = one(docs, "Role", "benchop-operator-curve")
    assert curve["metadata"]["namespace"] == NS and grants(curve) == SECRETS


def test_cluster_wide_rbac_is_exactly_what_the_operator_needs(
    default_docs: list[dict[str, Any]],
) -> None:
    role = one(default_docs, "ClusterRole")
    assert grants(role) == WHITELIST - PEERING - NAMESPACES - SECRETS
    binding = one(default_docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = pod_spec(default_docs, "Deployment")["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]


def test_namespaced_rbac_is_scoped(custom_docs: list[dict[str, Any]]) -> None:
    cluster = grants(one(custom_docs, "ClusterRole"))
    # Cluster-wide only what is cluster-scoped: CRDs and namespaces.
    assert {r for _, r, _ in cluster} == {"customresourcedefinitions", "namespaces"}
    roles = {
        d["metadata"]["namespace"]: grants(d)
        for d in custom_docs
        if d["kind"] == "Role" and d["metadata"]["name"] == "benchop-operator"
    }
    for ns in ("team-a", "team-b"):
        assert roles[ns] == {
            t for t in WHITELIST - NAMESPACES - PEERING - SECRETS if t[0] != "apiextensions.k8s.io"
        } | {t for t in PEERING if t[1] == "kopfpeerings"}
    # The release namespace holds the agents: pods, read-only, nothing else.
    assert roles[NS] == {("", "pods", "list")}


# ------------------------------------------------------------------- CurveZMQ, NetworkPolicies


def test_curve_is_on_by_default(default_docs: list[dict[str, Any]]) -> None:
    """The operator makes and reads the keys Secret; the agent mounts its own pair and the
    operator's public key (the one client it answers), nothing else of it."""
    assert args_of(pod_spec(default_docs, "Deployment")["containers"][0])["--curve-secret"] == [
        "benchop-curve"
    ]
    agent = pod_spec(default_docs, "DaemonSet")
    a = args_of(agent["containers"][0])
    assert a["--curve-secret-key"] == ["/etc/benchop/curve/agent.key_secret"]
    assert a["--curve-public-keys"] == ["/etc/benchop/curve/clients"]
    assert {"name": "curve", "mountPath": "/etc/benchop/curve", "readOnly": True} in agent[
        "containers"
    ][0]["volumeMounts"]
    [volume] = [v for v in agent["volumes"] if v["name"] == "curve"]
    assert volume == {
        "name": "curve",
        "secret": {
            "secretName": "benchop-curve",
            "items": [
                {"key": "agent.key_secret", "path": "agent.key_secret"},
                {"key": "operator.key", "path": "clients/operator.key"},
            ],
        },
    }
    assert not [d for d in default_docs if d["kind"] == "Secret"]  # no key material rendered


def test_curve_and_network_policies_can_be_turned_off(helm: str, tmp_path: Path) -> None:
    docs = render(
        helm, tmp_path, {"curve": {"enabled": False}, "networkPolicy": {"enabled": False}}
    )
    assert not [d for d in docs if d["kind"] in ("NetworkPolicy", "Secret")]
    assert not {t for t in all_grants(docs) if t[1] == "secrets"}
    assert "--curve-secret" not in args_of(pod_spec(docs, "Deployment")["containers"][0])
    agent = pod_spec(docs, "DaemonSet")
    assert "--curve-secret-key" not in args_of(agent["containers"][0])
    assert "curve" not in {v["name"] for v in agent["volumes"]}


def test_a_named_curve_secret_is_used_everywhere(helm: str, tmp_path: Path) -> None:
    docs = render(helm, tmp_path, {"curve": {"secretName": "sealed-curve"}})
    assert args_of(pod_spec(docs, "Deployment")["containers"][0])["--curve-secret"] == [
        "sealed-curve"
    ]
    [volume] = [v for v in pod_spec(docs, "DaemonSet")["volumes"] if v["name"] == "curve"]
    assert volume["secret"]["secretName"] == "sealed-curve"
    assert ("", "secrets", "get[sealed-curve]") in all_grants(docs)


NETPOL_LABELS = {
    "helm.sh/chart": "benchop-0.1.0",
    "app.kubernetes.io/name": "benchop",
    "app.kubernetes.io/instance": "benchop",
    "app.kubernetes.io/version": "0.1.0",
    "app.kubernetes.io/managed-by": "Helm",
}


def selector(component: str) -> dict[str, Any]:
    return {
        "matchLabels": {
            "app.kubernetes.io/name": "benchop",
            "app.kubernetes.io/instance": "benchop",
            "app.kubernetes.io/component": component,
        }
    }


def test_network_policies_whole(default_docs: list[dict[str, Any]]) -> None:
    """The gate and snapshot ports take load-generator pods only, the baseline port this
    release's operator only; health and metrics stay reachable."""
    assert one(default_docs, "NetworkPolicy", "benchop-operator") == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "benchop-operator",
            "namespace": NS,
            "labels": {**NETPOL_LABELS, "app.kubernetes.io/component": "operator"},
        },
        "spec": {
            "podSelector": selector("operator"),
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchLabels": {
                                    "app.kubernetes.io/name": "benchop",
                                    "app.kubernetes.io/component": "loadgen",
                                }
                            },
                            "namespaceSelector": {},
                        }
                    ],
                    "ports": [
                        {"port": 5555, "protocol": "TCP"},
                        {"port": 5556, "protocol": "TCP"},
                    ],
                },
                {"ports": [{"port": 8080, "protocol": "TCP"}]},
            ],
        },
    }
    assert one(default_docs, "NetworkPolicy", "benchop-agent") == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "benchop-agent",
            "namespace": NS,
            "labels": {**NETPOL_LABELS, "app.kubernetes.io/component": "agent"},
        },
        "spec": {
            "podSelector": selector("agent"),
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": selector("operator")}],
                    "ports": [{"port": 5557, "protocol": "TCP"}],
                },
                {"ports": [{"port": 9400, "protocol": "TCP"}]},
            ],
        },
    }


def test_network_policies_select_the_pods_and_ports_they_guard(
    default_docs: list[dict[str, Any]],
) -> None:
    """Each policy selects its pods, names every port they listen on, and the worker peer
    matches the labels the operator's Jobs put on worker pods."""
    from benchop.operator.builders import labels_for

    for kind, component in (("Deployment", "operator"), ("DaemonSet", "agent")):
        workload = one(default_docs, kind)
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        policy = one(default_docs, "NetworkPolicy", f"benchop-{component}")
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        listening = {
            p["containerPort"]
            for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        opened = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert opened == listening, component
    [workers] = one(default_docs, "NetworkPolicy", "benchop-operator")["spec"]["ingress"][0]["from"]
    assert workers["podSelector"]["matchLabels"].items() <= labels_for("r", "loadgen").items()


def test_network_policies_in_namespaced_mode_admit_workers_of_the_watched_namespaces(
    custom_docs: list[dict[str, Any]],
) -> None:
    [workers] = one(custom_docs, "NetworkPolicy", "benchop-operator")["spec"]["ingress"][0]["from"]
    # the chart's mock server (mockServer.enabled) takes the same workers on its port only
    mock = one(custom_docs, "NetworkPolicy", "benchop-mock")["spec"]
    assert mock["podSelector"] == selector("mock-server")
    assert mock["ingress"] == [{"from": [workers], "ports": [{"port": 8001, "protocol": "TCP"}]}]
    assert workers["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
        ]
    }


def test_agent_metrics_peers_come_from_values(helm: str, tmp_path: Path) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    docs = render(helm, tmp_path, {"networkPolicy": {"metricsFrom": peers}})
    rule = one(docs, "NetworkPolicy", "benchop-agent")["spec"]["ingress"][1]
    assert rule == {"ports": [{"port": 9400, "protocol": "TCP"}], "from": peers}


# --------------------------------------------------------------------------- CRDs, README, Argo CD


def test_chart_crds_are_a_copy_of_crds_dir() -> None:
    source = crd_files(ROOT / "crds")
    if not source:
        pytest.skip("crds/ holds no generated CRDs yet (hack/gen_crds.py writes both copies)")
    assert crd_files(CHART / "crds") == source, "stale chart CRDs: run python hack/gen_crds.py"


def test_rendered_crds_are_ours(default_docs: list[dict[str, Any]]) -> None:
    names = sorted(
        d["metadata"]["name"] for d in default_docs if d["kind"] == "CustomResourceDefinition"
    )
    if not crd_files(CHART / "crds"):
        pytest.skip("charts/benchop/crds is empty until hack/gen_crds.py runs")
    assert names == ["benchmarkruns.benchop.io", "experiments.benchop.io"]


def test_chart_readme_is_fresh() -> None:
    res = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen_chart_readme.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr


def test_argocd_configmap_ships_the_tested_lua(custom_docs: list[dict[str, Any]]) -> None:
    cm = one(custom_docs, "ConfigMap", "benchop-argocd-health")
    lua = (CHART / "argocd" / "health.lua").read_text()
    assert cm["data"] == {
        "resource.customizations.health.benchop.io_BenchmarkRun": lua,
        "resource.customizations.health.benchop.io_Experiment": lua,
    }


# --------------------------------------------------------------------------- e2e inputs, scripts


def test_e2e_manifests_validate() -> None:
    scenario = ROOT / "tests" / "e2e" / "scenarios" / "smoke"
    docs = [d for f in sorted(scenario.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    runs = [d for d in docs if d["apiVersion"].startswith("benchop.io/")]
    for d in docs:
        if d not in runs:
            kubernetes_validate.validate(d, KUBE_VERSIONS[0], strict=True)
    assert [r["kind"] for r in runs] == ["BenchmarkRun"]
    crd_path = ROOT / "crds" / "benchmarkruns.benchop.io.yaml"
    crds = [crd_path] if crd_path.exists() else sorted((ROOT / "crds").glob("*.yaml"))
    for f in crds:
        for crd in yaml.safe_load_all(f.read_text()):
            if crd and crd["spec"]["names"]["kind"] == "BenchmarkRun":
                [version] = [v for v in crd["spec"]["versions"] if v.get("storage")]
                # OpenAPI 3.0 schemas are draft-4 shaped (boolean exclusiveMinimum).
                jsonschema.Draft4Validator(version["schema"]["openAPIV3Schema"]).validate(runs[0])
                break
    from benchop.api.models import BenchmarkRun

    BenchmarkRun.model_validate(runs[0])


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "hack").glob("*.sh")))
def test_hack_scripts_are_shellcheck_clean(script: str) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        msg = "shellcheck not installed (hack/install-tools.sh installs it as root)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    res = subprocess.run(
        [shellcheck, "--severity=style", str(ROOT / "hack" / script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stdout


# --------------------------------------------------------------------------- policy linter

CHECKOV_CONFIG = ROOT / "charts" / "checkov.yaml"
DIGEST = "sha256:" + "0" * 64


@pytest.fixture(scope="module")
def checkov() -> str:
    """checkov from hack/install-tools.sh (its own venv in .tools/checkov), else PATH."""
    for path in (ROOT / ".tools" / "checkov" / "bin" / "checkov", shutil.which("checkov")):
        if path and os.access(path, os.X_OK):
            return str(path)
    msg = "checkov not found in .tools/checkov or PATH: run `bash hack/install-tools.sh`"
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI must have it)")
    pytest.skip(msg)


def run_checkov(checkov: str, docs: list[dict[str, Any]], tmp_path: Path, *args: str) -> Any:
    """checkov's JSON report on the rendered manifests (CRDs are not workloads: left out),
    with charts/checkov.yaml unless ``args`` are given instead."""
    manifests = tmp_path / "chart.yaml"
    manifests.write_text(
        yaml.safe_dump_all([d for d in docs if d["kind"] != "CustomResourceDefinition"])
    )
    res = subprocess.run(
        [checkov, "-f", str(manifests), "-o", "json"]
        + (list(args) or ["--config-file", str(CHECKOV_CONFIG)]),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert res.stdout.startswith(("{", "[")), res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads(res.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.parametrize("which", ["default", "non-default"])
def test_chart_passes_checkov(
    checkov: str,
    default_docs: list[dict[str, Any]],
    custom_docs: list[dict[str, Any]],
    tmp_path: Path,
    which: str,
) -> None:
    """Every checkov Kubernetes policy passes but the ones charts/checkov.yaml skips with
    their reasons; and each of those still applies (a stale skip fails here)."""
    report = run_checkov(checkov, default_docs if which == "default" else custom_docs, tmp_path)
    results = report["results"]
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]
    ]
    assert failed == [], "\n".join(failed)
    assert report["summary"]["passed"] > 150  # the policies ran
    if which == "default":  # the skipped checks, run alone: each must still fail
        skips = yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]
        args = ("--framework", "kubernetes", "--skip-download", "--check", ",".join(skips))
        alone = run_checkov(checkov, default_docs, tmp_path, *args)["results"]
        assert {c["check_id"] for c in alone["failed_checks"]} == set(skips)


def test_an_image_pinned_by_digest_passes_the_digest_check(
    checkov: str, helm: str, tmp_path: Path
) -> None:
    docs = render(helm, tmp_path, {"image": {"tag": f"0.1.0@{DIGEST}"}})
    assert pod_spec(docs, "Deployment")["containers"][0]["image"].endswith(f":0.1.0@{DIGEST}")
    args = ("--framework", "kubernetes", "--skip-download", "--check", "CKV_K8S_43")
    report = run_checkov(checkov, docs, tmp_path, *args)
    assert report["summary"]["failed"] == 0 and report["summary"]["passed"] >= 2, report["summary"]
