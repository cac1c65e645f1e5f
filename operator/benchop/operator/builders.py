"""Pure builders of a run's child manifests: the spec ConfigMap and the load-generator Job.

No I/O, no clocks, no randomness: the same run gives the same dicts, so creation is
idempotent by name (409 = it exists) and tests compare whole manifests. Names, label keys
and the ownerReference come from :mod:`benchop.core.names`.

    owner = owner_reference(body)
    cm = build_spec_configmap(run, name=spec_configmap_name(run_name), namespace=ns, owner=owner)
    job = build_loadgen_job(run, name=loadgen_job_name(run_name), namespace=ns, owner=owner,
                            image=image, gate_endpoint="tcp://op.ns.svc:5555",
                            snapshot_endpoint="tcp://op.ns.svc:5556")
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from benchop.api.models import BenchmarkRun, BenchmarkRunSpec, SecretKeyRef, to_wire
from benchop.core.names import (
    API_KEY_ENV,
    APP,
    COMPONENT_LABEL,
    LOADGEN,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    RUN_LABEL,
    RUN_NAME_ANNOTATION,
    SECRETS_DIR,
    header_env,
    run_label_value,
    secret_file,
    spec_configmap_name,
)
from benchop.core.workloadfiles import volumes as workload_volumes

SPEC_KEY = "spec.json"
SPEC_DIR = "/etc/benchop"
RESULTS_DIR = "/results"
OUTPUT_DIR = "/output"
"""Where the output PVC (``spec.output.pvc``) is mounted in the worker and collect pods."""
BUNDLE_CONFIG_DIR = "/etc/benchop-results"
"""Where the collect pod mounts the run's results ConfigMap."""
COLLECT = "collect"
"""The component label of a run's collect Job."""
RESULTS = "results"
"""The component label of a run's results ConfigMap."""
TERMINATION_LOG = "/dev/termination-log"
CONTAINER = "loadgen"
BACKOFF_PER_WORKER = 3
"""Container restarts allowed per worker before the Job fails (``backoffLimit = 3 * workers``)."""
SECRET_FILE_MODE = 0o440
"""Secret files in the pod: read-only, for the worker's user and group (fsGroup)."""


def labels_for(run_name: str, component: str) -> dict[str, str]:
    """The labels of every object benchop creates for a run.

    >>> labels_for("r1", "loadgen")["benchop.io/run"]
    'r1'
    """
    return {
        NAME_LABEL: APP,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: "benchop-operator",
        RUN_LABEL: run_label_value(run_name),
    }


def _metadata(
    run_name: str, name: str, namespace: str, owner: Mapping[str, Any], component: str
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels_for(run_name, component),
        "annotations": {RUN_NAME_ANNOTATION: run_name},
        "ownerReferences": [dict(owner)],
    }


def spec_json(run: BenchmarkRun) -> str:
    """The run spec as the workers read it: camelCase JSON, keys sorted (deterministic)."""
    return json.dumps(to_wire(run.spec), sort_keys=True, separators=(",", ":"))


def build_spec_configmap(
    run: BenchmarkRun, *, name: str, namespace: str, owner: Mapping[str, Any]
) -> dict[str, Any]:
    """The ConfigMap holding the run spec (``spec.json``), mounted read-only by the workers."""
    run_name = run.metadata.name or ""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(run_name, name, namespace, owner, LOADGEN),
        "data": {SPEC_KEY: spec_json(run)},
    }


def build_loadgen_job(
    run: BenchmarkRun,
    *,
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    image: str,
    gate_endpoint: str,
    snapshot_endpoint: str,
    run_key: str | None = None,
    config_map: str | None = None,
    curve_server_key: str | None = None,
) -> dict[str, Any]:
    """The Indexed Job of the run's workers (``parallelism = completions = workers``).

    Each pod runs ``benchop loadgen`` on the spec mounted from the ConfigMap (and the
    workload's dataset and tokenizer, when they come from a ConfigMap or a PVC, read-only
    under ``/workload``: :mod:`benchop.core.workloadfiles`); the worker index
    comes from ``JOB_COMPLETION_INDEX`` (set by Kubernetes for Indexed Jobs). ``run_key`` is
    what workers send as their run id (default: the run name). ``restartPolicy: OnFailure``
    on purpose: a killed worker restarts *in the same pod*, so its results emptyDir (with the
    request checkpoint) survives and it resumes without counting a request twice; a new pod
    (deleted, evicted) starts from an empty dir and resumes from the base the operator hands
    it (:mod:`benchop.core.resume`). (``backoffLimitPerIndex`` needs ``Never``, so the backoff
    is the Job-wide ``backoffLimit``.) ``curve_server_key`` (the operator's CurveZMQ public
    key, not a secret) makes the workers' gate and snapshot sockets CurveZMQ.
    """
    spec = run.spec
    run_name = run.metadata.name or ""
    workers = spec.load.workers
    pod = spec.pod
    pvc = spec.output.pvc if spec.output else None
    results_dir = RESULTS_DIR
    results_volume: dict[str, Any] = {"name": "results", "emptyDir": {}}
    results_mount: dict[str, Any] = {"name": "results", "mountPath": RESULTS_DIR}
    if pvc is not None:  # the checkpoint on the claim: the collect pod merges it after the run
        results_dir = f"{OUTPUT_DIR}/{run_key or run_name}/worker-$(JOB_COMPLETION_INDEX)"
        results_volume = _pvc_volume(pvc.claim_name)
        results_mount = _pvc_mount(pvc.sub_path)
    env: list[dict[str, Any]] = [
        {"name": "BENCHOP_RUN", "value": run_key or run_name},
        {"name": "BENCHOP_SPEC_FILE", "value": f"{SPEC_DIR}/{SPEC_KEY}"},
        {"name": "BENCHOP_GATE_ENDPOINT", "value": gate_endpoint},
        {"name": "BENCHOP_SNAPSHOT_ENDPOINT", "value": snapshot_endpoint},
        # the pod's uid: a worker tells an earlier pod of its index from itself by it
        {"name": "BENCHOP_POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        *_secret_env(spec),
    ]
    secret_volumes, secret_mounts = _secret_volumes(spec)
    if curve_server_key is not None:
        env.append({"name": "BENCHOP_CURVE_SERVER_KEY", "value": curve_server_key})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": (pod.image if pod and pod.image else image),
        "command": ["benchop"],
        "args": [
            "loadgen",
            "--spec",
            f"{SPEC_DIR}/{SPEC_KEY}",
            "--workers",
            str(workers),
            "--results-dir",
            results_dir,
            "--termination-log",
            TERMINATION_LOG,
            *(["--secrets-dir", SECRETS_DIR] if secret_volumes else []),
        ],
        "env": env,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            results_mount,
            {"name": "tmp", "mountPath": "/tmp"},
            *secret_mounts,
        ],
    }
    data = workload_volumes(spec.workload)  # a dataset or tokenizer from a ConfigMap or PVC
    container["volumeMounts"] += [mount for _, mount in data]
    if pod and pod.resources:
        container["resources"] = to_wire(pod.resources)
    pod_spec: dict[str, Any] = {
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
        "containers": [container],
        "volumes": [
            {
                "name": "spec",
                "configMap": {"name": config_map or spec_configmap_name(run_name)},
            },
            results_volume,
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            *secret_volumes,
            *(volume for volume, _ in data),
        ],
    }
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": workers,
        "parallelism": workers,
        "backoffLimit": BACKOFF_PER_WORKER * workers,
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return _job(run, name, namespace, owner, LOADGEN, job_spec, pod_spec)


def _job(
    run: BenchmarkRun,
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    component: str,
    job_spec: dict[str, Any],
    pod_spec: dict[str, Any],
) -> dict[str, Any]:
    """A Job of ``component`` for the run: its pods placed as ``spec.pod`` says, labelled and
    annotated with the run, the Job owned by it and kept ``spec.ttlSecondsAfterFinished``."""
    run_name = run.metadata.name or ""
    pod = run.spec.pod
    if pod and pod.node_selector:
        pod_spec["nodeSelector"] = dict(pod.node_selector)
    if pod and pod.tolerations:
        pod_spec["tolerations"] = [to_wire(t) for t in pod.tolerations]
    job_spec["template"] = {
        "metadata": {
            "labels": labels_for(run_name, component),
            "annotations": {RUN_NAME_ANNOTATION: run_name},
        },
        "spec": pod_spec,
    }
    if run.spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = run.spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(run_name, name, namespace, owner, component),
        "spec": job_spec,
    }


def _secret_env(spec: BenchmarkRunSpec) -> list[dict[str, Any]]:
    """The API key and the Secret-valued headers as ``secretKeyRef`` env vars: resolved by the
    kubelet, so the operator never reads a Secret (its RBAC has no access to them). A missing
    Secret or key is ``CreateContainerConfigError``: the run fails PodConfigError."""

    def ref_env(name: str, ref: SecretKeyRef) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}

    out = []
    if spec.target.api_key_secret_ref is not None:
        out.append(ref_env(API_KEY_ENV, spec.target.api_key_secret_ref))
    for i, header in enumerate(spec.target.headers or []):
        if header.value_from is not None:
            out.append(ref_env(header_env(i), header.value_from.secret_key_ref))
    return out


def _secret_volumes(spec: BenchmarkRunSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The TLS files' Secrets as volumes (only the keys used) and their mounts, at
    ``SECRETS_DIR/<secret>/<key>`` where the worker's ``--secrets-dir`` looks. ``optional``: a
    missing Secret or key leaves its file out, and the worker ends the run SecretError with
    the field and the path, rather than the pod waiting in ContainerCreating."""
    tls = spec.target.tls
    refs = [] if tls is None else [
        r for r in (tls.ca_secret_ref, tls.client_cert_secret_ref, tls.client_key_secret_ref)
        if r is not None
    ]  # fmt: skip
    keys: dict[str, list[str]] = {}
    for ref in refs:
        if ref.key not in keys.setdefault(ref.name, []):
            keys[ref.name].append(ref.key)
    volumes, mounts = [], []
    for i, name in enumerate(sorted(keys)):
        volume = f"secret-{i}"
        volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": name,
                    "items": [{"key": k, "path": k} for k in sorted(keys[name])],
                    "defaultMode": SECRET_FILE_MODE,
                    "optional": True,
                },
            }
        )
        mount = str(secret_file(SECRETS_DIR, name, "x").parent)
        mounts.append({"name": volume, "mountPath": mount, "readOnly": True})
    return volumes, mounts


def _pvc_volume(claim: str) -> dict[str, Any]:
    return {"name": "output", "persistentVolumeClaim": {"claimName": claim}}


def _pvc_mount(sub_path: str | None) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": "output", "mountPath": OUTPUT_DIR}
    if sub_path:
        mount["subPath"] = sub_path
    return mount


def bundle_path(run: BenchmarkRun, run_key: str) -> str | None:
    """The bundle's directory inside the output claim (``<subPath>/<run key>``), if any."""
    pvc = run.spec.output.pvc if run.spec.output else None
    if pvc is None:
        return None
    return f"{pvc.sub_path}/{run_key}" if pvc.sub_path else run_key


def build_results_configmap(
    run: BenchmarkRun,
    *,
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    files: Mapping[str, str],
) -> dict[str, Any]:
    """The ConfigMap with the run's results.json and timeseries.csv (benchop.core.bundle sizes
    them below Kubernetes' object limit); ``benchop results NAME`` reads it."""
    run_name = run.metadata.name or ""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(run_name, name, namespace, owner, RESULTS),
        "data": dict(files),
    }


def build_collect_job(
    run: BenchmarkRun,
    *,
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    image: str,
    run_key: str,
    config_map: str,
) -> dict[str, Any]:
    """The one-pod Job that turns the workers' files on the output claim into the bundle.

    It mounts the claim (as the workers do) and the run's results ConfigMap (the results
    the operator built from the final snapshots) and runs ``benchop collect``: records.jsonl
    merged from ``worker-*/``, timeseries.csv at one row per second from the workers' final
    snapshots, results.json. The operator cannot do it: it cannot mount a run's claim.
    """
    spec = run.spec
    assert spec.output is not None and spec.output.pvc is not None
    pod = spec.pod
    container: dict[str, Any] = {
        "name": COLLECT,
        "image": (pod.image if pod and pod.image else image),
        "command": ["benchop"],
        "args": [
            "collect",
            "--dir",
            f"{OUTPUT_DIR}/{run_key}",
            "--workers",
            str(spec.load.workers),
            "--from",
            BUNDLE_CONFIG_DIR,
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            _pvc_mount(spec.output.pvc.sub_path),
            {"name": "bundle", "mountPath": BUNDLE_CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: dict[str, Any] = {
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
        "containers": [container],
        "volumes": [
            _pvc_volume(spec.output.pvc.claim_name),
            {"name": "bundle", "configMap": {"name": config_map}},
            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        ],
    }
    return _job(run, name, namespace, owner, COLLECT, {"backoffLimit": 3}, pod_spec)
