"""Results bundles on disk: check a results directory, merge the workers' records, write and
read a bundle (the contents are :mod:`benchop.core.bundle`'s).

A run's bundle directory holds ``results.json``, ``timeseries.csv`` and ``records.jsonl``;
an Experiment's holds ``experiment.json`` and one run bundle per child, in a sub-directory
named after the child. Files are written atomically (tmp + rename), so a reader never sees a
half-written one.

    check_results_dir(Path("benchop-results/r1"))          # before the run: ValueError if unusable
    n = merge_records([d / "worker-0", d / "worker-1"], out / "records.jsonl")
    bundle = read_bundle(Path("benchop-results/r1"))       # results.json (+ the other paths)
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchop.atomicio import write_atomic
from benchop.core.bundle import EXPERIMENT_FILE, RECORDS_FILE, RESULTS_FILE, TIMESERIES_FILE
from benchop.loadgen.checkpoint import iter_lines

__all__ = [
    "Bundle",
    "check_results_dir",
    "is_bundle",
    "merge_records",
    "read_bundle",
    "write_text",
]

BUNDLE_FILES = (RESULTS_FILE, TIMESERIES_FILE, RECORDS_FILE, EXPERIMENT_FILE)
_BUFFER = 1 << 20


def is_bundle(path: Path) -> bool:
    """Whether ``path`` is a run's or an Experiment's bundle directory."""
    return (path / RESULTS_FILE).is_file() or (path / EXPERIMENT_FILE).is_file()


def check_results_dir(path: Path) -> None:
    """Make sure ``path`` can take a bundle, before anything runs; ValueError says why not.

    Created (with its parents) when missing; an existing directory must be empty or an earlier
    bundle (which is then replaced); it must be writable.
    """
    if path.exists() and not path.is_dir():
        raise ValueError(f"results directory {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create results directory {path}: {exc.strerror}") from None
    entries = [p.name for p in path.iterdir()]
    if entries and not is_bundle(path):
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise ValueError(
            f"results directory {path} is not empty and holds no benchop results ({shown}); "
            "choose another --results-dir"
        )
    probe = path / ".benchop-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"results directory {path} is not writable: {exc.strerror}") from None


def clear_bundle(path: Path) -> None:
    """Remove an earlier bundle's files (and child bundles) from ``path``; nothing else."""
    for name in BUNDLE_FILES:
        (path / name).unlink(missing_ok=True)
    for child in path.iterdir():
        if child.is_dir() and is_bundle(child):
            shutil.rmtree(child)


def write_text(path: Path, text: str) -> None:
    """Write a bundle file atomically."""
    write_atomic(path, text.encode())


def write_json(path: Path, doc: Any) -> None:
    """Write a JSON bundle file atomically (indented)."""
    write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


def _keyed(worker_dir: Path) -> Iterator[tuple[int, int, bytes]]:
    for i, (rec, line) in enumerate(iter_lines(worker_dir)):
        yield rec.sent_ns + rec.e2e_ns, i, line


def merge_records(worker_dirs: Sequence[Path], out: Path) -> int:
    """Merge the workers' ``records.jsonl`` into ``out`` in the order the requests ended;
    returns how many records it wrote.

    Streams: the records of the last :data:`REORDER_NS` in memory (a worker's file is in the
    order requests completed, which can differ from ``sent + e2e`` order by microseconds) plus
    the ids the checkpoint rules need, whatever the files' size. The records that count are
    the checkpoint reader's (:func:`benchop.loadgen.checkpoint.iter_records`: each id once, a
    torn last line and earlier attempts' cancelled requests left out). Written to ``out.tmp``
    and renamed.
    """
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    streams = [_keyed(d) for d in worker_dirs]
    try:
        with open(tmp, "wb", buffering=_BUFFER) as f:
            for _, _, line in _reordered(heapq.merge(*streams), REORDER_NS):
                f.write(line)  # as the worker wrote it, newline included
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return n


REORDER_NS = 2_000_000_000
"""A worker appends records as requests complete, and a request's end (its wall-clock send time
plus its monotonic end-to-end latency) can precede the one appended before it by microseconds:
the merge holds this much back to put them in order."""


def _reordered(
    items: Iterator[tuple[int, int, bytes]], window_ns: int
) -> Iterator[tuple[int, int, bytes]]:
    """``items`` (almost in key order) in key order, exactly when no item comes more than
    ``window_ns`` after a larger key; memory: the items of one window."""
    held: list[tuple[int, int, bytes]] = []
    for item in items:
        heapq.heappush(held, item)
        while held[0][0] < item[0] - window_ns:
            yield heapq.heappop(held)
    while held:
        yield heapq.heappop(held)


@dataclass(frozen=True, slots=True)
class Bundle:
    """A bundle read from a directory or a ConfigMap."""

    where: str  # the directory, or namespace/configmap
    results: dict[str, Any] | None  # results.json (None for an Experiment)
    timeseries: str | None  # timeseries.csv text
    records: Path | None  # records.jsonl, when on disk
    experiment: dict[str, Any] | None = None  # experiment.json
    children: tuple[Bundle, ...] = ()  # an Experiment's run bundles, in sweep order


def read_bundle(path: Path) -> Bundle:
    """The bundle in ``path`` (a run's or an Experiment's); ValueError when there is none."""
    if (path / EXPERIMENT_FILE).is_file():
        exp = json.loads((path / EXPERIMENT_FILE).read_text())
        children = []
        for name in _child_names(exp):
            child = path / name
            if (child / RESULTS_FILE).is_file():
                children.append(read_bundle(child))
        return Bundle(str(path), None, None, None, exp, tuple(children))
    if not (path / RESULTS_FILE).is_file():
        raise ValueError(f"{path} holds no {RESULTS_FILE} or {EXPERIMENT_FILE}")
    ts = path / TIMESERIES_FILE
    rec = path / RECORDS_FILE
    return Bundle(
        str(path),
        json.loads((path / RESULTS_FILE).read_text()),
        ts.read_text() if ts.is_file() else None,
        rec if rec.is_file() else None,
    )


def _child_names(exp: dict[str, Any]) -> list[str]:
    runs = ((exp.get("status") or {}).get("metrics") or {}).get("runs") or []
    return [r["name"] for r in runs if isinstance(r, dict) and r.get("name")]
