"""The results bundle of a run: what ``results.json`` and ``timeseries.csv`` hold (pure).

Every run writes a bundle (docs/results.md): ``results.json`` (every metric, every
percentile, the histograms), ``timeseries.csv`` (per-second rows) and the merged per-request
``records.jsonl``. Local mode, the operator and the collect pod build the first two with
these functions from the same inputs — the merged final snapshots of the workers (raw values:
exact percentiles; their timelines: per-second rows), the run's ``status.results`` and GPU
samples where known — so the files say the same thing wherever they were written.

- :func:`results_document`: ``results.json``. ``metrics.<series>.percentiles`` holds
  ``p50``, ``p90``, ``p95``, ``p99``, ``p99.9`` and those of ``spec.report.percentiles``
  (:func:`percentiles_for`; keys ``p`` + the percentile) — exact when the
  snapshots carried raw values (``exact: true``), else estimated from the histogram (within
  0.78 %). ``histograms.<series>.buckets`` is ``[[lo, hi, count], ...]`` in the series' unit
  (log-linear buckets, benchop.metrics.buckets). ``results`` is ``status.results`` as written.
- :func:`timeseries_table` / :func:`csv_text`: ``timeseries.csv``, one row per second (each
  request counts in the second it ended), percentiles estimated per row from its histogram.
- :func:`configmap_files`: both files size-bounded for a ConfigMap (timeseries rows merged
  into coarser intervals until they fit).

    doc = results_document(merged, results=status_results, run={"name": "r"}, spec=spec)
    header, rows = timeseries_table(merge_rows(s.timeline for s in snaps), start_s=t0)
    files, interval = configmap_files(doc, timeline, start_s=t0)
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from benchagent.wire import SeriesSummary, TimelineRow
from benchop.core.results import MergedMetrics
from benchop.metrics import buckets, names
from benchop.metrics.stats import decode_values, estimate_percentiles
from benchop.metrics.timeline import coarsen, percentiles_ms

BUNDLE_VERSION = 1
RESULTS_FILE = "results.json"
TIMESERIES_FILE = "timeseries.csv"
RECORDS_FILE = "records.jsonl"
EXPERIMENT_FILE = "experiment.json"
"""An Experiment's bundle directory: this file (the Experiment with its status) and one
sub-directory per child run, each a run bundle."""

DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
TIMESERIES_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 95.0, 99.0)
CONFIGMAP_MAX_BYTES = 768 * 1024
"""What the bundle ConfigMap's data may hold (Kubernetes refuses objects over 1 MiB)."""
_COARSER = (2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)

# series name -> (name in results.json, scale from the series' unit, unit)
SERIES: dict[str, tuple[str, float, str]] = {
    names.TTFT: ("ttft_ms", 1e-6, "ms"),
    names.ITL: ("itl_ms", 1e-6, "ms"),
    names.TPOT: ("tpot_ms", 1e-6, "ms"),
    names.E2E: ("e2e_ms", 1e-6, "ms"),
    names.SEND_LAG: ("send_lag_ms", 1e-6, "ms"),
    names.INPUT_TOKENS: ("input_tokens", 1.0, "tokens"),
    names.OUTPUT_TOKENS: ("output_tokens", 1.0, "tokens"),
}


def percentiles_for(report: Any) -> list[float]:
    """The percentiles of results.json: :data:`DEFAULT_PERCENTILES` and any more that
    ``spec.report.percentiles`` asks for (``report``: the spec's ReportSpec or None)."""
    asked = getattr(report, "percentiles", None) or ()
    return sorted({*DEFAULT_PERCENTILES, *(float(q) for q in asked)})


def pkey(q: float) -> str:
    """The key of a percentile: ``p50``, ``p99.9``.

    >>> pkey(50.0), pkey(99.9)
    ('p50', 'p99.9')
    """
    return f"p{q:g}"


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def series_stats(summary: SeriesSummary, scale: float, qs: Sequence[float]) -> dict[str, Any]:
    """count, mean, std, min, max and the percentiles ``qs`` of a (merged) series, scaled."""
    values = decode_values(summary)
    exact = values is not None and values.size == summary.count
    if exact:
        assert values is not None
        pct = [float(x) for x in np.percentile(values, list(qs))]
    else:
        pct = estimate_percentiles(summary.buckets, summary.min, summary.max, qs)
    n = summary.count
    mean = summary.sum / n
    return {
        "count": n,
        "mean": mean * scale,
        "std": math.sqrt(max(summary.m2, 0.0) / n) * abs(scale),
        "min": summary.min * scale,
        "max": summary.max * scale,
        "percentiles": {pkey(q): _finite(p * scale) for q, p in zip(qs, pct, strict=True)},
        "exact": exact,
    }


def histogram(summary: SeriesSummary, scale: float, unit: str) -> dict[str, Any]:
    """The series' log-linear histogram: ``[[lo, hi, count], ...]`` ascending, in ``unit``."""
    rows = []
    for key in sorted(summary.buckets):
        lo, hi = buckets.bounds(key)
        rows.append([lo * scale, hi * scale, summary.buckets[key]])
    return {"unit": unit, "buckets": rows}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def results_document(
    merged: MergedMetrics,
    *,
    results: Mapping[str, Any],
    run: Mapping[str, Any],
    spec: Mapping[str, Any],
    status: Mapping[str, Any] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    created_at: str | None = None,
) -> dict[str, Any]:
    """``results.json`` of one run (without the ``files`` section: :func:`with_files`).

    ``run``: name, namespace, uid, and for an Experiment's child its ``experiment`` and
    ``params``; ``status``: phase and the Succeeded condition's reason and message.
    """
    qs = sorted({float(q) for q in percentiles})
    metrics: dict[str, Any] = {}
    hists: dict[str, Any] = {}
    for name, (label, scale, unit) in SERIES.items():
        summary = merged.series.get(name)
        if summary is None or summary.count == 0:
            continue
        metrics[label] = {"unit": unit, **series_stats(summary, scale, qs)}
        hists[label] = histogram(summary, scale, unit)
    return {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRunResults",
        "version": BUNDLE_VERSION,
        "createdAt": created_at or _now(),
        "run": dict(run),
        "spec": dict(spec),
        "status": dict(status or {}),
        "results": dict(results),
        "percentiles": [pkey(q) for q in qs],
        "metrics": metrics,
        "histograms": hists,
        "counters": dict(sorted(merged.counters.items())),
        "gauges": dict(sorted(merged.gauges.items())),
        "workers": merged.workers,
        "elapsedS": merged.elapsed_s,
    }


def with_files(
    doc: Mapping[str, Any],
    *,
    timeseries: Mapping[str, Any] | None,
    records: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``doc`` with its ``files`` section: which files the bundle holds and how.

    ``timeseries``: ``{"intervalS": 1, "rows": N, "gpu": "agent"}``; ``records``: ``{"count":
    N}`` or ``{"omitted": "why"}``.
    """
    files: dict[str, Any] = {}
    if timeseries is not None:
        files[TIMESERIES_FILE] = dict(timeseries)
    if records is not None:
        files[RECORDS_FILE] = dict(records)
    return {**doc, "files": files}


# --------------------------------------------------------------------------- timeseries


@dataclass(frozen=True, slots=True)
class GpuPoint:
    """GPU readings of the run's GPUs at one instant: power summed, utilisation averaged."""

    t_s: float  # unix seconds
    power_w: float
    util_pct: float


def _gpu_by_row(
    points: Iterable[GpuPoint], first: int, interval: int, n: int
) -> list[tuple[float, float] | None]:
    sums: list[list[float]] = [[0.0, 0.0, 0.0] for _ in range(n)]
    for p in points:
        i = int((math.floor(p.t_s) - first) // interval)
        if 0 <= i < n:
            acc = sums[i]
            acc[0] += p.power_w
            acc[1] += p.util_pct
            acc[2] += 1
    return [(a / k, b / k) if k else None for a, b, k in sums]


def timeseries_table(
    rows: Sequence[TimelineRow],
    *,
    start_s: float | None = None,
    interval_s: int = 1,
    percentiles: Sequence[float] = TIMESERIES_PERCENTILES,
    gpu: Sequence[GpuPoint] = (),
) -> tuple[list[str], list[list[Any]]]:
    """The header and rows of ``timeseries.csv`` (``rows`` already ``interval_s`` apart).

    ``t_s`` is the row's start relative to ``start_s`` (the profiling start; default: the
    first row); rates are per second of the interval; latency percentiles in ms (empty when no
    request of that kind ended in the row); GPU columns average the samples in the row.
    """
    qs = list(percentiles)
    header = [
        "t_s", "epoch_s", "requests", "ok", "failed", "good",
        "rps", "output_tok_per_s", "input_tok_per_s",
        *(f"ttft_{pkey(q)}_ms" for q in qs),
        *(f"itl_{pkey(q)}_ms" for q in qs),
        *(f"e2e_{pkey(q)}_ms" for q in qs),
        "gpu_power_w", "gpu_util_pct",
    ]  # fmt: skip
    if not rows:
        return header, []
    first = rows[0].t_s
    origin = start_s if start_s is not None else float(first)
    gpu_rows = _gpu_by_row(gpu, first, interval_s, len(rows))
    out: list[list[Any]] = []
    for r, g in zip(rows, gpu_rows, strict=True):
        lat = [
            None if math.isnan(x) else round(x, 4)
            for hist in (r.ttft, r.itl, r.e2e)
            for x in percentiles_ms(hist, qs)
        ]
        out.append(
            [
                round(r.t_s - origin, 3),
                r.t_s,
                r.requests,
                r.ok,
                r.requests - r.ok,
                r.good,
                round(r.ok / interval_s, 4),
                round(r.output_tokens / interval_s, 3),
                round(r.input_tokens / interval_s, 3),
                *lat,
                None if g is None else round(g[0], 2),
                None if g is None else round(g[1], 2),
            ]
        )
    return header, out


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV with ``\\n`` line ends; None is an empty cell."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if x is None else x for x in row])
    return buf.getvalue()


def timeseries_csv(
    rows: Sequence[TimelineRow],
    *,
    start_s: float | None = None,
    gpu: Sequence[GpuPoint] = (),
    interval_s: int = 1,
) -> str:
    """``timeseries.csv`` of per-second timeline ``rows`` merged into ``interval_s`` rows."""
    header, table = timeseries_table(
        coarsen(rows, interval_s), start_s=start_s, interval_s=interval_s, gpu=gpu
    )
    return csv_text(header, table)


def timeseries_info(
    interval_s: int, rows: int, gpu_source: str, start_s: float | None
) -> dict[str, Any]:
    """``files["timeseries.csv"]`` of results.json: row interval, row count, where the GPU
    columns came from (``agent``, ``none``) and the profiling start ``t_s`` counts from."""
    info: dict[str, Any] = {"intervalS": interval_s, "rows": rows, "gpu": gpu_source}
    if start_s is not None:
        info["startS"] = start_s
    return info


def dumps(doc: Mapping[str, Any]) -> str:
    """``results.json`` text: indented, keys in the order built, NaN-free."""
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def configmap_files(
    doc: Mapping[str, Any],
    rows: Sequence[TimelineRow],
    *,
    start_s: float | None = None,
    gpu: Sequence[GpuPoint] = (),
    gpu_source: str = "none",
    limit: int = CONFIGMAP_MAX_BYTES,
    records: Mapping[str, Any] | None = None,
) -> tuple[dict[str, str], int]:
    """``results.json`` and ``timeseries.csv`` whose sizes add up to at most ``limit`` bytes,
    and the timeseries interval used: 1 s rows, else the finest coarser interval that fits
    (histograms merged exactly, so the coarse rows' percentiles are as good as the fine).
    Without room for even hourly rows, the histograms leave results.json, then the series."""
    for interval in (1, *_COARSER):
        text = timeseries_csv(rows, start_s=start_s, gpu=gpu, interval_s=interval)
        n = len(coarsen(rows, interval))
        files = _files(doc, text, interval, n, gpu_source, records, start_s)
        if _size(files) <= limit:
            return files, interval
    slim = {k: v for k, v in doc.items() if k != "histograms"}
    files = _files(slim, "", 0, 0, gpu_source, records, start_s)
    if _size(files) > limit:
        slimmer = {k: v for k, v in slim.items() if k != "metrics"}
        files = _files(slimmer, "", 0, 0, "none", None, start_s)
    return {k: v for k, v in files.items() if v}, 0


def _files(
    doc: Mapping[str, Any],
    text: str,
    interval: int,
    n: int,
    gpu_source: str,
    records: Mapping[str, Any] | None,
    start_s: float | None,
) -> dict[str, str]:
    ts = timeseries_info(interval, n, gpu_source, start_s) if text else None
    full = with_files(doc, timeseries=ts, records=records)
    return {RESULTS_FILE: dumps(full), TIMESERIES_FILE: text}


def _size(files: Mapping[str, str]) -> int:
    return sum(len(k) + len(v.encode()) for k, v in files.items())
