"""The operator's pure builders: whole manifests vs expected dicts (k6-operator style)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from kubernetes_validate import validate as k8s_validate
from pydantic import ValidationError

from benchop.api.models import BenchmarkRun
from benchop.core.names import (
    MAX_WORKERS,
    RUN_LABEL,
    collect_job_name,
    loadgen_job_name,
    owner_reference,
    results_configmap_name,
    safe_name,
    spec_configmap_name,
)
from benchop.core.workloadfiles import configmap_problem, configmap_sources, file_path
from benchop.operator.builders import (
    build_collect_job,
    build_loadgen_job,
    build_results_configmap,
    build_spec_configmap,
    labels_for,
)

K8S_VERSION = "1.30"


def run_doc(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "target": {"url": "http://vllm.default.svc:8000/v1", "model": "m"},
        "load": {"mode": "concurrency", "concurrency": 8, "workers": 2},
        "phases": {"profiling": {"requests": 100}},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": "r1", "namespace": "ns", "uid": "uid-1", "generation": 1},
        "spec": spec,
    }


OWNER = {
    "apiVersion": "benchop.io/v1alpha1",
    "kind": "BenchmarkRun",
    "name": "r1",
    "uid": "uid-1",
    "controller": True,
    "blockOwnerDeletion": True,
}
LABELS = {
    "app.kubernetes.io/name": "benchop",
    "app.kubernetes.io/component": "loadgen",
    "app.kubernetes.io/managed-by": "benchop-operator",
    "benchop.io/run": "r1",
}
META = {
    "name": "r1-loadgen",
    "namespace": "ns",
    "labels": LABELS,
    "annotations": {"benchop.io/run-name": "r1"},
    "ownerReferences": [OWNER],
}


def expected_job(
    *, env_extra: list[dict[str, Any]] | None = None, image: str = "img:1"
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": META,
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 6,
            "template": {
                "metadata": {
                    "labels": LABELS,
                    "annotations": {"benchop.io/run-name": "r1"},
                },
                "spec": {
                    "restartPolicy": "OnFailure",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "loadgen",
                            "image": image,
                            "command": ["benchop"],
                            "args": [
                                "loadgen",
                                "--spec",
                                "/etc/benchop/spec.json",
                                "--workers",
                                "2",
                                "--results-dir",
                                "/results",
                                "--termination-log",
                                "/dev/termination-log",
                            ],
                            "env": [
                                {"name": "BENCHOP_RUN", "value": "ns.r1"},
                                {"name": "BENCHOP_SPEC_FILE", "value": "/etc/benchop/spec.json"},
                                {"name": "BENCHOP_GATE_ENDPOINT", "value": "tcp://op:5555"},
                                {"name": "BENCHOP_SNAPSHOT_ENDPOINT", "value": "tcp://op:5556"},
                                {
                                    "name": "BENCHOP_POD_UID",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}},
                                },
                                *(env_extra or []),
                            ],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File",
                            "volumeMounts": [
                                {"name": "spec", "mountPath": "/etc/benchop", "readOnly": True},
                                {"name": "results", "mountPath": "/results"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "spec", "configMap": {"name": "r1-spec"}},
                        {"name": "results", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }


def job_for(doc: dict[str, Any]) -> dict[str, Any]:
    run = BenchmarkRun.model_validate(doc)
    return build_loadgen_job(
        run,
        name="r1-loadgen",
        namespace="ns",
        owner=owner_reference(doc),
        image="img:1",
        gate_endpoint="tcp://op:5555",
        snapshot_endpoint="tcp://op:5556",
        run_key="ns.r1",
    )


def test_minimal_job_whole_manifest() -> None:
    assert job_for(run_doc()) == expected_job()


def test_job_with_every_pod_override_whole_manifest() -> None:
    doc = run_doc(
        pod={
            "image": "custom:2",
            "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi", "cpu": 2}},
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        },
        activeDeadlineSeconds=600,
        ttlSecondsAfterFinished=3600,
    )
    doc["spec"]["target"]["apiKeySecretRef"] = {"name": "hf", "key": "token"}
    want = expected_job(
        image="custom:2",
        env_extra=[
            {
                "name": "BENCHOP_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
            }
        ],
    )
    want["spec"]["activeDeadlineSeconds"] = 600
    want["spec"]["ttlSecondsAfterFinished"] = 3600
    pod = want["spec"]["template"]["spec"]
    pod["containers"][0]["resources"] = {
        "requests": {"cpu": "500m"},
        "limits": {"memory": "1Gi", "cpu": 2},
    }
    pod["nodeSelector"] = {"pool": "cpu"}
    pod["tolerations"] = [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]
    assert job_for(doc) == want


def test_job_with_secret_headers_and_tls_whole_manifest() -> None:
    """Header values from Secrets are secretKeyRef env vars (BENCHOP_HEADER_<index>), the TLS
    files secret volumes of just their keys at /var/run/benchop/secrets/<secret>/<key> (one
    volume per Secret, optional: the worker names a missing one), and the worker is told
    where they are. Plain header values stay in the spec, not the pod."""
    doc = run_doc()
    doc["spec"]["target"] = {
        "urls": ["https://a.llm.svc:8443/v1", "https://b.llm.svc:8443/v1"],
        "model": "m",
        "apiKeySecretRef": {"name": "hf", "key": "token"},
        "headers": [
            {"name": "x-tenant", "value": "tenant-7"},
            {"name": "x-api-key", "valueFrom": {"secretKeyRef": {"name": "gw", "key": "key"}}},
        ],
        "tls": {
            "caSecretRef": {"name": "gw-ca", "key": "ca.crt"},
            "clientCertSecretRef": {"name": "client", "key": "tls.crt"},
            "clientKeySecretRef": {"name": "client", "key": "tls.key"},
        },
    }
    want = expected_job(
        env_extra=[
            {
                "name": "BENCHOP_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
            },
            {
                "name": "BENCHOP_HEADER_1",
                "valueFrom": {"secretKeyRef": {"name": "gw", "key": "key"}},
            },
        ]
    )
    pod = want["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["args"] += ["--secrets-dir", "/var/run/benchop/secrets"]
    container["volumeMounts"] += [
        {"name": "secret-0", "mountPath": "/var/run/benchop/secrets/client", "readOnly": True},
        {"name": "secret-1", "mountPath": "/var/run/benchop/secrets/gw-ca", "readOnly": True},
    ]
    pod["volumes"] += [
        {
            "name": "secret-0",
            "secret": {
                "secretName": "client",
                "items": [
                    {"key": "tls.crt", "path": "tls.crt"},
                    {"key": "tls.key", "path": "tls.key"},
                ],
                "defaultMode": 0o440,
                "optional": True,
            },
        },
        {
            "name": "secret-1",
            "secret": {
                "secretName": "gw-ca",
                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                "defaultMode": 0o440,
                "optional": True,
            },
        },
    ]
    job = job_for(doc)
    assert job == want
    k8s_validate(job, K8S_VERSION, strict=True)
    assert "tenant-7" not in json.dumps(job)  # a plain value stays in the spec (ConfigMap)


def test_job_mounts_a_configmap_dataset_and_a_pvc_tokenizer_whole_manifest() -> None:
    doc = run_doc(
        workload={
            "dataset": {"format": "sharegpt", "configMap": {"name": "chats", "key": "sg.json"}},
            "tokenizer": {"pvc": {"claimName": "models", "path": "llama3/tokenizer.json"}},
        }
    )
    want = expected_job()
    pod = want["spec"]["template"]["spec"]
    pod["containers"][0]["volumeMounts"] += [
        {"name": "workload-dataset", "mountPath": "/workload/dataset", "readOnly": True},
        {"name": "workload-tokenizer", "mountPath": "/workload/tokenizer", "readOnly": True},
    ]
    pod["volumes"] += [
        {
            "name": "workload-dataset",
            "configMap": {"name": "chats", "items": [{"key": "sg.json", "path": "sg.json"}]},
        },
        {
            "name": "workload-tokenizer",
            "persistentVolumeClaim": {"claimName": "models", "readOnly": True},
        },
    ]
    assert job_for(doc) == want
    k8s_validate(job_for(doc), K8S_VERSION, strict=True)
    # ... where the worker reads them
    spec = BenchmarkRun.model_validate(doc).spec.workload
    assert spec.dataset is not None and spec.tokenizer is not None
    assert file_path(spec.dataset, "dataset") == "/workload/dataset/sg.json"
    assert file_path(spec.tokenizer, "tokenizer") == "/workload/tokenizer/llama3/tokenizer.json"


def test_the_configmaps_a_job_mounts_are_the_ones_checked_for_their_keys() -> None:
    doc = run_doc(
        workload={
            "dataset": {"configMap": {"name": "chats", "key": "c.jsonl"}},
            "tokenizer": {"configMap": {"name": "tok", "key": "tokenizer.json"}},
        }
    )
    mounted = [
        (v["configMap"]["name"], v["configMap"]["items"][0]["key"])
        for v in job_for(doc)["spec"]["template"]["spec"]["volumes"]
        if v["name"].startswith("workload-")
    ]
    refs = configmap_sources(BenchmarkRun.model_validate(doc).spec.workload)
    assert (
        [(name, key) for _, name, key in refs]
        == mounted
        == [
            ("chats", "c.jsonl"),
            ("tok", "tokenizer.json"),
        ]
    )
    assert configmap_sources(BenchmarkRun.model_validate(run_doc()).spec.workload) == []

    def problem(cm: dict[str, Any] | None) -> str | None:
        return configmap_problem("tokenizer", "tok", "tokenizer.json", cm, namespace="ns")

    assert problem({"data": {"tokenizer.json": "{}"}}) is None
    assert problem({"binaryData": {"tokenizer.json": "e30="}}) is None  # mounted just the same
    assert (
        problem(None)
        == "spec.workload.tokenizer.configMap: ConfigMap tok not found in namespace ns"
    )
    assert problem({"data": {"vocab.json": "", "merges.txt": ""}}) == (
        "spec.workload.tokenizer.configMap: ConfigMap tok has no key 'tokenizer.json' "
        "(its keys: merges.txt, vocab.json)"
    )
    assert str(problem({})).endswith("(its keys: none)")


def test_job_for_a_dataset_file_in_the_image_mounts_nothing_more() -> None:
    doc = run_doc(workload={"dataset": {"file": "/data/chat.jsonl"}})
    assert job_for(doc) == expected_job()


def test_secret_value_never_in_manifest() -> None:
    doc = run_doc()
    doc["spec"]["target"]["apiKeySecretRef"] = {"name": "hf", "key": "token"}
    text = json.dumps(job_for(doc))
    assert "secretKeyRef" in text and '"value": "hf"' not in text


def test_job_with_curve_whole_manifest() -> None:
    """CurveZMQ on: the workers get the operator's public key (not a secret), nothing else."""
    run = BenchmarkRun.model_validate(run_doc())
    job = build_loadgen_job(
        run,
        name="r1-loadgen",
        namespace="ns",
        owner=OWNER,
        image="img:1",
        gate_endpoint="tcp://op:5555",
        snapshot_endpoint="tcp://op:5556",
        run_key="ns.r1",
        curve_server_key="K" * 40,
    )
    assert job == expected_job(env_extra=[{"name": "BENCHOP_CURVE_SERVER_KEY", "value": "K" * 40}])


def _secret_refs(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every place under ``node`` whose key mentions a Secret (secretKeyRef, secret volumes,
    projected sources, envFrom secretRef), with its path."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if "secret" in k.lower() or k in ("envFrom", "projected"):
                out.append((f"{path}.{k}", v))
            out += _secret_refs(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _secret_refs(v, f"{path}[{i}]")
    return out


def test_a_run_reaches_only_the_named_key_of_a_secret_in_its_namespace() -> None:
    """The only Secret a worker pod sees is spec.target.apiKeySecretRef's one key, resolved
    by the kubelet in the Job's namespace (a secretKeyRef has no namespace field); no envFrom,
    no secret or projected volume, whatever else the spec mounts."""
    doc = run_doc(workload={"dataset": {"configMap": {"name": "chats", "key": "c.jsonl"}}})
    doc["spec"]["target"]["apiKeySecretRef"] = {"name": "hf", "key": "token"}
    job = job_for(doc)
    assert job["metadata"]["namespace"] == doc["metadata"]["namespace"]
    env = ".spec.template.spec.containers[0].env[5].valueFrom"
    assert _secret_refs(job) == [(f"{env}.secretKeyRef", {"name": "hf", "key": "token"})]
    assert _secret_refs(job_for(run_doc())) == []


def test_spec_configmap_whole_manifest() -> None:
    doc = run_doc()
    run = BenchmarkRun.model_validate(doc)
    cm = build_spec_configmap(run, name="r1-spec", namespace="ns", owner=owner_reference(doc))
    assert cm == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**META, "name": "r1-spec"},
        "data": {
            "spec.json": json.dumps(
                {
                    "gates": {"baseline": True, "timeout": "5s"},
                    "load": {
                        "arrival": "poisson",
                        "concurrency": 8,
                        "failureWindow": 50,
                        "maxFailureRatio": 0.5,
                        "mode": "concurrency",
                        "requestTimeout": "300s",
                        "workers": 2,
                    },
                    "phases": {"profiling": {"requests": 100}},
                    "preflight": {"enabled": True, "timeout": "2s"},
                    "request": {
                        "includeUsage": True,
                        "outputTokensFields": ["max_tokens"],
                        "stream": True,
                    },
                    "target": {
                        "api": "chat",
                        "model": "m",
                        "url": "http://vllm.default.svc:8000/v1",
                    },
                    "workload": {"seed": 0},
                },
                sort_keys=True,
                separators=(",", ":"),
            )
        },
    }
    # the mounted spec validates back into the same model
    again = BenchmarkRun.model_validate({"spec": json.loads(cm["data"]["spec.json"])})
    assert again.spec == run.spec


def test_builders_are_deterministic() -> None:
    assert job_for(run_doc()) == job_for(run_doc())


@pytest.mark.parametrize("builder", ["job", "configmap"])
def test_manifests_pass_kubernetes_schema(builder: str) -> None:
    doc = run_doc(pod={"resources": {"limits": {"cpu": 2}}}, activeDeadlineSeconds=60)
    run = BenchmarkRun.model_validate(doc)
    manifest = (
        job_for(doc)
        if builder == "job"
        else build_spec_configmap(run, name="r1-spec", namespace="ns", owner=owner_reference(doc))
    )
    k8s_validate(manifest, K8S_VERSION, strict=True)


def test_names_and_labels() -> None:
    assert loadgen_job_name("r1") == "r1-loadgen"
    assert spec_configmap_name("r1") == "r1-spec"
    assert labels_for("r1", "loadgen") == LABELS
    long = "a" * 60 + ".b" * 40
    for name in (loadgen_job_name(long), spec_configmap_name(long)):
        assert len(name) <= 63 and name[-1].isalnum() and name[0].isalnum()
    assert loadgen_job_name(long) != loadgen_job_name(long + "x")
    assert loadgen_job_name(long) == loadgen_job_name(long)  # stable
    value = labels_for(long, "loadgen")[RUN_LABEL]
    assert len(value) <= 63 and value[-1].isalnum()
    assert safe_name("x" * 63) == "x" * 63


@pytest.mark.parametrize(
    "run",
    ["r1", "r" * 63, "llama.8b.c32", "a." + "b" * 58 + ".c", "x" * 253, "a.b", "a-b", "9.9"],
)
def test_loadgen_job_name_leaves_every_pod_a_dns_label(run: str) -> None:
    job = loadgen_job_name(run)
    for index in (0, MAX_WORKERS - 1):  # Indexed Job pods: <job>-<index>
        hostname = f"{job}-{index}"
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", hostname), hostname
        assert len(hostname) <= 63, hostname


def test_loadgen_job_names_of_different_runs_differ() -> None:
    names = ["a.b", "a-b", "r" * 63, "r" * 64, "llama.8b.c32", "llama-8b.c32"]
    assert len({loadgen_job_name(n) for n in names}) == len(names)


# --------------------------------------------------------------------------- results bundle

OUTPUT = {"pvc": {"claimName": "bench-results", "subPath": "team/a"}}


def test_job_with_an_output_pvc_whole_manifest() -> None:
    """The workers' checkpoint directories go on the claim: /output/<run key>/worker-<i>."""
    want = expected_job()
    pod = want["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    args[args.index("--results-dir") + 1] = "/output/ns.r1/worker-$(JOB_COMPLETION_INDEX)"
    pod["containers"][0]["volumeMounts"][1] = {
        "name": "output",
        "mountPath": "/output",
        "subPath": "team/a",
    }
    pod["volumes"][1] = {"name": "output", "persistentVolumeClaim": {"claimName": "bench-results"}}
    assert job_for(run_doc(output=OUTPUT)) == want
    k8s_validate(job_for(run_doc(output=OUTPUT)), K8S_VERSION, strict=True)


def collect_for(doc: dict[str, Any]) -> dict[str, Any]:
    return build_collect_job(
        BenchmarkRun.model_validate(doc),
        name="r1-collect",
        namespace="ns",
        owner=owner_reference(doc),
        image="img:1",
        run_key="ns.r1.uid-1",
        config_map="r1-results",
    )


def test_collect_job_whole_manifest() -> None:
    labels = {**LABELS, "app.kubernetes.io/component": "collect"}
    want = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**META, "name": "r1-collect", "labels": labels},
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 600,
            "template": {
                "metadata": {"labels": labels, "annotations": {"benchop.io/run-name": "r1"}},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "collect",
                            "image": "img:1",
                            "command": ["benchop"],
                            "args": [
                                "collect",
                                "--dir",
                                "/output/ns.r1.uid-1",
                                "--workers",
                                "2",
                                "--from",
                                "/etc/benchop-results",
                            ],
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "output", "mountPath": "/output", "subPath": "team/a"},
                                {
                                    "name": "bundle",
                                    "mountPath": "/etc/benchop-results",
                                    "readOnly": True,
                                },
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "output",
                            "persistentVolumeClaim": {"claimName": "bench-results"},
                        },
                        {"name": "bundle", "configMap": {"name": "r1-results"}},
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }
    doc = run_doc(output=OUTPUT, ttlSecondsAfterFinished=600)
    assert collect_for(doc) == want
    k8s_validate(collect_for(doc), K8S_VERSION, strict=True)


def test_results_configmap_whole_manifest() -> None:
    doc = run_doc()
    files = {"results.json": "{}\n", "timeseries.csv": "t_s\n"}
    cm = build_results_configmap(
        BenchmarkRun.model_validate(doc),
        name="r1-results",
        namespace="ns",
        owner=owner_reference(doc),
        files=files,
    )
    labels = {**LABELS, "app.kubernetes.io/component": "results"}
    assert cm == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {**META, "name": "r1-results", "labels": labels},
        "data": files,
    }
    k8s_validate(cm, K8S_VERSION, strict=True)


def test_results_names() -> None:
    assert results_configmap_name("r1") == "r1-results"
    assert collect_job_name("r1") == "r1-collect"
    long = "a" * 60 + ".b" * 40
    for name in (results_configmap_name(long), collect_job_name(long)):
        assert len(name) <= 63 and name[-1].isalnum() and name[0].isalnum()
    assert collect_job_name("a.b") != collect_job_name("a-b")  # dots become dashes: hashed
    assert "." not in collect_job_name(long)


def test_output_pvc_sub_path_must_be_relative() -> None:
    for bad in ("/abs", "../up", "a/../b", ".", "a/./b", "a//b"):
        with pytest.raises(ValidationError):
            BenchmarkRun.model_validate(run_doc(output={"pvc": {"claimName": "c", "subPath": bad}}))
    BenchmarkRun.model_validate(run_doc(output={"pvc": {"claimName": "c", "subPath": "a/b.c"}}))
