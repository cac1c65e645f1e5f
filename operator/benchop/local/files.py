"""Workload files in local mode: paths made absolute against the manifest's directory.

``benchop run`` reads a dataset or tokenizer ``file`` relative to the YAML that names it (so
``benchop run examples/dataset-run.yaml`` works from any directory), and refuses the sources
only a cluster has (``configMap``, ``pvc``) before anything starts.

    run = local_files(load_manifest(doc), Path("examples"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchop.api.models import BenchmarkRun, BenchmarkRunSpec, Experiment
from benchop.core.workloadfiles import sources

__all__ = ["local_files"]


def _spec(spec: BenchmarkRunSpec, base: Path, where: str) -> BenchmarkRunSpec:
    updates: dict[str, Any] = {}
    for role, source in sources(spec.workload):
        field = f"{where}.workload.{role}"
        if source.config_map is not None or source.pvc is not None:
            kind = "configMap" if source.config_map is not None else "pvc"
            raise ValueError(
                f"{field}.{kind}: a {kind} is mounted by the operator; benchop run reads a "
                f"local file: set {field}.file"
            )
        assert source.file is not None
        path = (base / source.file).resolve()
        if not path.is_file():
            raise ValueError(f"{field}.file: {path} does not exist or is not a file")
        updates[role] = source.model_copy(update={"file": str(path)})
    if not updates:
        return spec
    return spec.model_copy(update={"workload": spec.workload.model_copy(update=updates)})


def local_files(manifest: BenchmarkRun | Experiment, base: Path) -> BenchmarkRun | Experiment:
    """``manifest`` with its workload files absolute (``base``: the YAML's directory);
    ValueError naming the field for a missing file or a cluster-only source."""
    if isinstance(manifest, BenchmarkRun):
        return manifest.model_copy(update={"spec": _spec(manifest.spec, base, "spec")})
    spec = manifest.spec
    template = _spec(spec.template, base, "spec.template")
    return manifest.model_copy(update={"spec": spec.model_copy(update={"template": template})})
