"""Where a workload's files (dataset, tokenizer) are inside a worker pod, and the volumes
that put them there: one rule for the operator's Job builder and the worker that reads them.

A ``file`` source is a path the worker reads as is (inside the image in a cluster; local
mode makes it absolute first). A ``configMap`` key is mounted at
``/workload/<role>/<key>``, a ``pvc`` at ``/workload/<role>/`` with the file at its
``path`` under it; ``<role>`` is ``dataset`` or ``tokenizer``. Both are mounted read-only.

    path = file_path(spec.workload.dataset, "dataset")     # "/workload/dataset/chat.jsonl"
    for volume, mount in volumes(spec.workload): ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from benchop.api.workload import DatasetSpec, TokenizerSpec, WorkloadSpec

__all__ = [
    "MOUNT_ROOT",
    "ROLES",
    "Role",
    "cluster_problem",
    "configmap_problem",
    "configmap_sources",
    "file_path",
    "sources",
    "volumes",
]

MOUNT_ROOT = "/workload"
Role = Literal["dataset", "tokenizer"]
ROLES: tuple[Role, ...] = ("dataset", "tokenizer")


def sources(workload: WorkloadSpec) -> list[tuple[Role, DatasetSpec | TokenizerSpec]]:
    """The workload's file sources with their roles (dataset first)."""
    out: list[tuple[Role, DatasetSpec | TokenizerSpec]] = []
    if workload.dataset is not None:
        out.append(("dataset", workload.dataset))
    if workload.tokenizer is not None:
        out.append(("tokenizer", workload.tokenizer))
    return out


def file_path(source: DatasetSpec | TokenizerSpec, role: Role, root: str = MOUNT_ROOT) -> str:
    """The path a worker reads the source's file at (``root``: where volumes are mounted).

    >>> file_path(TokenizerSpec(config_map={"name": "t", "key": "tokenizer.json"}), "tokenizer")
    '/workload/tokenizer/tokenizer.json'
    """
    if source.file is not None:
        return source.file
    if source.config_map is not None:
        return f"{root}/{role}/{source.config_map.key}"
    assert source.pvc is not None
    return f"{root}/{role}/{source.pvc.path}"


def cluster_problem(workload: WorkloadSpec, where: str = "spec.workload") -> str | None:
    """Why the workload cannot run in a cluster, or None: a ``file`` there is a path in the
    worker image, so a relative one (a local-mode path) would not be found.

    >>> cluster_problem(WorkloadSpec(dataset={"file": "data/chat.jsonl"}))[:33]
    'spec.workload.dataset.file: in a '
    """
    for role, source in sources(workload):
        if source.file is not None and not source.file.startswith("/"):
            return (
                f"{where}.{role}.file: in a cluster, a path in the worker image must be "
                f"absolute (got {source.file!r}); use configMap or pvc for your own file"
            )
    return None


def configmap_sources(workload: WorkloadSpec) -> list[tuple[Role, str, str]]:
    """(role, ConfigMap name, key) of each source that is a ConfigMap."""
    return [
        (role, s.config_map.name, s.config_map.key)
        for role, s in sources(workload)
        if s.config_map is not None
    ]


def configmap_problem(
    role: Role,
    name: str,
    key: str,
    configmap: Mapping[str, Any] | None,
    *,
    namespace: str,
    where: str = "spec.workload",
) -> str | None:
    """Why the kubelet cannot mount ``key`` of ConfigMap ``name`` (``configmap``: the object
    read, None when it does not exist), or None. The kubelet says so only in FailedMount
    events, and keeps the pod in ContainerCreating.

    >>> configmap_problem("dataset", "rows", "a.jsonl", None, namespace="ns")
    'spec.workload.dataset.configMap: ConfigMap rows not found in namespace ns'
    >>> configmap_problem("dataset", "rows", "a.jsonl", {"data": {"b.jsonl": ""}}, namespace="ns")
    "spec.workload.dataset.configMap: ConfigMap rows has no key 'a.jsonl' (its keys: b.jsonl)"
    """
    field = f"{where}.{role}.configMap"
    if configmap is None:
        return f"{field}: ConfigMap {name} not found in namespace {namespace}"
    keys = {*(configmap.get("data") or {}), *(configmap.get("binaryData") or {})}
    if key not in keys:
        return (
            f"{field}: ConfigMap {name} has no key {key!r} "
            f"(its keys: {', '.join(sorted(keys)) or 'none'})"
        )
    return None


def volumes(workload: WorkloadSpec) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod volume, container volumeMount) for each ConfigMap or PVC source, read-only."""
    out = []
    for role, source in sources(workload):
        name = f"workload-{role}"
        volume: dict[str, Any] = {"name": name}
        if source.config_map is not None:
            key = source.config_map.key
            volume["configMap"] = {
                "name": source.config_map.name,
                "items": [{"key": key, "path": key}],
            }
        elif source.pvc is not None:
            volume["persistentVolumeClaim"] = {"claimName": source.pvc.claim_name, "readOnly": True}
        else:
            continue
        out.append((volume, {"name": name, "mountPath": f"{MOUNT_ROOT}/{role}", "readOnly": True}))
    return out
