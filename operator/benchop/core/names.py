"""Names and constants of the benchop API and of the objects the operator makes.

The one place that spells the API group, its version, kinds and plurals, the label and
annotation keys, kopf's finalizer, which phases are terminal, and how child object names
are derived from a run's name (bounded to Kubernetes' 63 characters).

    >>> loadgen_job_name("llama-c32")
    'llama-c32-loadgen'
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal

GROUP: Final = "benchop.io"
VERSION: Final = "v1alpha1"
ApiVersion = Literal["benchop.io/v1alpha1"]
API_VERSION: Final[ApiVersion] = "benchop.io/v1alpha1"  # GROUP/VERSION, as a type for the models

BENCHMARKRUN_KIND: Final = "BenchmarkRun"
EXPERIMENT_KIND: Final = "Experiment"
BENCHMARKRUN_PLURAL: Final = "benchmarkruns"
EXPERIMENT_PLURAL: Final = "experiments"

TERMINAL_PHASES: Final = frozenset({"Succeeded", "Failed"})
"""Phases a BenchmarkRun or an Experiment never leaves."""

FINALIZER: Final = f"{GROUP}/finalizer"
"""kopf's finalizer on our objects (its progress and diff-base annotations share the group)."""

LABEL_PREFIX: Final = f"{GROUP}/"
RUN_LABEL: Final = LABEL_PREFIX + "run"
"""On a run's ConfigMap, Job and worker pods: the run's name (bounded, :func:`run_label_value`)."""
RUN_NAME_ANNOTATION: Final = LABEL_PREFIX + "run-name"
"""On a run's ConfigMap, Job and worker pods: the run's exact name."""
EXPERIMENT_LABEL: Final = LABEL_PREFIX + "experiment"
"""On an Experiment's child runs: the Experiment's name (bounded)."""
EXPERIMENT_NAME_ANNOTATION: Final = LABEL_PREFIX + "experiment-name"
INDEX_ANNOTATION: Final = LABEL_PREFIX + "sweep-index"
"""On a child run: its index in the sweep when it was created."""
PARAMS_ANNOTATION: Final = LABEL_PREFIX + "params"
"""On a child run: its sweep point's params as JSON."""
CREATED_ANNOTATION: Final = LABEL_PREFIX + "created-points"
"""On an Experiment: the point key of every point that ever had a child, comma-separated."""

NAME_LABEL: Final = "app.kubernetes.io/name"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
APP: Final = "benchop"
LOADGEN: Final = "loadgen"
"""The component label of a run's load-generator objects."""

MAX_NAME: Final = 63
"""Longest child name (a Job's name is also a label value on its pods)."""
MAX_WORKERS: Final = 1000
"""Most load-generator pods one run may have (``spec.load.workers``); an Indexed Job's pods are
``<job>-<index>``, so the Job's name leaves room for ``-999``."""


API_KEY_ENV: Final = "BENCHOP_API_KEY"
"""The workers' env var with ``spec.target.apiKeySecretRef``'s value (a ``secretKeyRef``)."""
REQUEST_ID_HEADER: Final = "x-benchop-request-id"
"""On every request a worker sends: ``<run>/<worker>/<phase>/<index>`` (docs/request.md); a
request a resumed worker sends again carries the same value."""
SECRETS_DIR: Final = "/var/run/benchop/secrets"
"""Where a worker pod mounts the Secrets of ``spec.target.tls``: ``<dir>/<secret>/<key>``."""


def header_env(index: int) -> str:
    """The workers' env var with the value of ``spec.target.headers[index].valueFrom``.

    >>> header_env(0)
    'BENCHOP_HEADER_0'
    """
    return f"BENCHOP_HEADER_{index}"


def secret_file(root: str | Path, secret: str, key: str) -> Path:
    """``<root>/<secret>/<key>``: a Secret's key as a file, mounted (``SECRETS_DIR``) or in
    the directory of ``benchop run --secrets-dir``.

    >>> str(secret_file("/s", "ca", "ca.crt"))
    '/s/ca/ca.crt'
    """
    return Path(root) / secret / key


def safe_name(base: str, suffix: str = "", limit: int = MAX_NAME) -> str:
    """``base`` + ``-suffix`` if that fits ``limit``; else a truncated base plus a stable hash.

    >>> safe_name("r1", "loadgen")
    'r1-loadgen'
    """
    full = f"{base}-{suffix}" if suffix else base
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    tail = f"-{digest}-{suffix}" if suffix else f"-{digest}"
    return base[: limit - len(tail)].rstrip("-.") + tail


def loadgen_job_name(run_name: str) -> str:
    """``<run>-loadgen``, a DNS label with room for the worker pods' hostnames.

    An Indexed Job's pods are named and hostnamed ``<job>-<index>``, which must be a DNS label
    (at most 63 characters, no dots), or the apiserver refuses the Job. So dots become dashes
    and the name leaves room for ``-<largest index>``; a name that had to change carries a hash
    of the run name, so two runs never share a Job.

    >>> loadgen_job_name("r1"), loadgen_job_name("llama.8b")
    ('r1-loadgen', 'llama-8b-17f6c930-loadgen')
    """
    limit = MAX_NAME - len(f"-{MAX_WORKERS - 1}")
    label = run_name.replace(".", "-")
    full = f"{label}-loadgen"
    if label == run_name and len(full) <= limit:
        return full
    tail = f"-{hashlib.sha256(run_name.encode()).hexdigest()[:8]}-loadgen"
    return label[: limit - len(tail)].rstrip("-") + tail


def spec_configmap_name(run_name: str) -> str:
    """``<run>-spec`` (truncated with a hash above 63 characters)."""
    return safe_name(run_name, "spec")


def results_configmap_name(run_name: str) -> str:
    """``<run>-results``: the ConfigMap with the run's results.json and timeseries.csv."""
    return safe_name(run_name, "results")


def collect_job_name(run_name: str) -> str:
    """``<run>-collect``: the Job that merges the workers' files on the output PVC (a DNS
    label, as its pods' hostnames; a name that had to change carries a hash of the run name).

    >>> collect_job_name("r1"), collect_job_name("llama.8b")
    ('r1-collect', 'llama-8b-17f6c930-collect')
    """
    label = run_name.replace(".", "-")
    if label != run_name:
        label = f"{label}-{hashlib.sha256(run_name.encode()).hexdigest()[:8]}"
    return safe_name(label, "collect")


def run_label_value(run_name: str) -> str:
    """The ``benchop.io/run`` label value: the run name, hashed down to 63 characters if longer."""
    return safe_name(run_name)


def experiment_label_value(experiment: str) -> str:
    """The ``benchop.io/experiment`` label value: the name, hashed down to 63 chars if longer."""
    return safe_name(experiment)


def owner_reference(body: Mapping[str, Any], kind: str = BENCHMARKRUN_KIND) -> dict[str, Any]:
    """The controller ownerReference pointing at a benchop object's body (needs metadata.uid)."""
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
