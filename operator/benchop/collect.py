"""``benchop collect``: the results bundle on an output PVC, from the workers' files there.

What the run's collect Job runs once the run has ended (docs/results.md)::

    benchop collect --dir /output/<ns>.<run>.<uid8> --workers 2 --from /etc/benchop-results

``--dir`` holds the workers' checkpoint directories ``worker-<i>/`` (records.jsonl,
final.msgpack); ``--from`` the run's results ConfigMap as files (the operator's
results.json). Written into ``--dir``: ``records.jsonl`` (every worker's records merged in the
order the requests ended, streamed), ``timeseries.csv`` (one row per second, from the
timelines in the workers' final snapshots, however long the run) and ``results.json`` (the
operator's, with its ``files`` section for this bundle). Idempotent: a retried pod writes the
same files again. Exit codes: 0 written, 1 on an error (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchagent.codec import MsgpackCodec
from benchagent.wire import MetricsSnapshot, TimelineRow
from benchop import bundle as files
from benchop.core import bundle
from benchop.loadgen.snapshots import FINAL
from benchop.metrics.timeline import merge_rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--dir", type=Path, required=True, help="the run's directory on the claim (worker-<i>/)")
    a("--workers", type=int, required=True, help="how many workers the run had")
    a("--from", dest="source", type=Path, required=True,
      help="the results ConfigMap's files (results.json)")  # fmt: skip


def timelines(run_dir: Path, workers: int) -> list[list[TimelineRow] | None]:
    """The timeline of each worker's final snapshot (None where there is none)."""
    codec = MsgpackCodec()
    out: list[list[TimelineRow] | None] = []
    for w in range(workers):
        try:
            msg = codec.decode((run_dir / f"worker-{w}" / FINAL).read_bytes())
        except OSError:
            msg = None
        out.append(msg.timeline if isinstance(msg, MetricsSnapshot) else None)
    return out


def collect(run_dir: Path, workers: int, source: Path) -> dict[str, Any]:
    """Write the bundle into ``run_dir``; its results.json."""
    doc = json.loads((source / bundle.RESULTS_FILE).read_text())
    before = (doc.get("files") or {}).get(bundle.TIMESERIES_FILE) or {}
    start = before.get("startS")
    parts = timelines(run_dir, workers)
    rows = merge_rows(parts)
    files.write_text(run_dir / bundle.TIMESERIES_FILE, bundle.timeseries_csv(rows, start_s=start))
    worker_dirs = [run_dir / f"worker-{w}" for w in range(workers)]
    count = files.merge_records(worker_dirs, run_dir / bundle.RECORDS_FILE)
    missing = [w for w, p in enumerate(parts) if p is None]
    records: dict[str, Any] = {"count": count}
    if missing:
        records["workersWithoutFinalSnapshot"] = missing
    doc = bundle.with_files(
        doc,
        timeseries=bundle.timeseries_info(1, len(rows), before.get("gpu", "none"), start),
        records=records,
    )
    files.write_text(run_dir / bundle.RESULTS_FILE, bundle.dumps(doc))
    return doc


def run(args: argparse.Namespace) -> int:
    try:
        doc = collect(args.dir, args.workers, args.source)
    except (OSError, ValueError) as exc:
        print(f"benchop collect: {exc}", file=sys.stderr)
        return 1
    info = doc["files"]
    print(
        f"bundle written to {args.dir}: {info[bundle.RECORDS_FILE]['count']} records, "
        f"{info[bundle.TIMESERIES_FILE]['rows']} timeseries rows"
    )
    return 0
