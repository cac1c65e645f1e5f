"""Reading manifest files for ``benchop run``: one or more ``---`` separated resources.

Every error is a :class:`ManifestError` whose message names the file, and where it can the
line (YAML syntax) or the document and field (validation), so a user can go straight to it:

    examples/bad.yaml:7:12: YAML syntax error: mapping values are not allowed here
    examples/two.yaml: document 2 of 2 (BenchmarkRun b): invalid manifest:
    spec.load.concurrency: Input should be greater than or equal to 1 (got -3)

    manifests = load_manifests(Path("examples/run.yaml"))   # [BenchmarkRun(...)]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from benchop.api.models import BenchmarkRun, Experiment, format_validation_error, load_manifest
from benchop.local.files import local_files

Manifest = BenchmarkRun | Experiment


class ManifestError(ValueError):
    """A manifest file that cannot be run; the message names the file (and line or field)."""


def _yaml_error(path: Path, exc: yaml.YAMLError) -> ManifestError:
    """``file:line:column: YAML syntax error: problem (context at line:column)``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        context += f" that started at {context_mark.line + 1}:{context_mark.column + 1}"
    detail = f"{problem} ({context})" if context else problem
    return ManifestError(f"{where}: YAML syntax error: {detail}")


def _describe(doc: Any) -> str:
    if not isinstance(doc, dict):
        return ""
    name = (
        (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    )
    kind = doc.get("kind")
    parts = [str(p) for p in (kind, name) if isinstance(p, str) and p]
    return f" ({' '.join(parts)})" if parts else ""


def load_manifests(path: Path) -> list[Manifest]:
    """Every resource in ``path``, in file order; empty documents (a trailing ``---``) skipped.

    Raises :class:`ManifestError` for an unreadable file, a YAML syntax error (file:line:col),
    a document that is not a valid BenchmarkRun or Experiment (its number, kind, name and the
    offending field), no resource at all, or two resources of one name. Workload files
    (``dataset.file``, ``tokenizer.file``) are made absolute against the file's directory, and
    a missing one or a ConfigMap/PVC source is refused (:func:`benchop.local.files.local_files`).
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    if not docs:
        raise ManifestError(
            f"{path}: no resource in the file (expected a BenchmarkRun or Experiment)"
        )
    out: list[Manifest] = []
    seen: set[str] = set()
    for i, doc in enumerate(docs):
        where = (
            f"{path}: document {i + 1} of {len(docs)}{_describe(doc)}"
            if len(docs) > 1
            else str(path)
        )
        if not isinstance(doc, dict):
            raise ManifestError(
                f"{where}: expected a BenchmarkRun or Experiment manifest (a mapping)"
            )
        try:
            manifest = load_manifest(doc)
        except ValidationError as exc:
            raise ManifestError(
                f"{where}: invalid manifest:\n{format_validation_error(exc)}"
            ) from None
        try:  # workload files relative to the YAML, cluster-only sources refused
            manifest = local_files(manifest, path.parent)
        except ValueError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        name = manifest.metadata.name or ""
        if name in seen:  # each resource's results go to a directory of its name
            raise ManifestError(f"{where}: a second resource named {name or '(no name)'!r}")
        seen.add(name)
        out.append(manifest)
    return out
