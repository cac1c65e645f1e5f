"""The Experiment rollup, pure: child BenchmarkRuns in, ``status.metrics`` out.

One row of headline numbers per child run (sweep order), plus the best run per objective,
chosen only among ``Succeeded`` runs that have the metric (ties: the earlier run). The table is
bounded: at most ``cap`` rows; when there are more, ``capped`` is true, the best runs are
always kept and the rest are the first ones in sweep order (``status.counts.total`` says how
many runs there are).

Row fields come from the child's ``status.results``: ``rps`` and ``tokPerS`` (throughput),
``ttftP50``/``ttftP99``/``itlP50`` (ms), ``goodput`` (share of requests meeting every SLO,
0..1), ``gpuUtil`` (mean %, profiling window), ``joulesPerToken`` (J per output token). A child
whose results are missing or malformed gets a row with its phase and no numbers.

``status.metrics`` is a denormalized cache of this rollup, written by the operator's refresher.
A reader uses it when its ``version`` is :data:`~benchop.api.models.METRICS_VERSION` and it
decodes (:func:`cached_rollup`); anything else — no metrics yet, an older or newer version, a
malformed blob — is a cache miss: :func:`read_rollup` computes it from the child runs with
the same :func:`rollup`. A bad blob never fails the read (nor a listing of many experiments).

    metrics = rollup(children, cap=DEFAULT_CAP, now="2024-05-01T12:00:00Z")
    metrics.best["ttftP50"]   # -> "sweep-0"
    metrics, source = await read_rollup(experiment, list_children)   # "cache" | "hydrated"
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from benchop.api.conditions import now_rfc3339
from benchop.api.models import (
    METRICS_VERSION,
    ExperimentMetrics,
    ExperimentRunRow,
    Phase,
    SearchSpec,
)
from benchop.core.children import (
    child_params,
    order_children,
    owned_by,
    parse_created,
    point_key,
)
from benchop.core.search import probe_value, search_summary

DEFAULT_CAP = 200
"""Rows kept in ``status.metrics.runs`` (about 300 bytes each: far below etcd's object limit)."""

OBJECTIVES: dict[str, Literal["max", "min"]] = {
    "rps": "max",
    "tokPerS": "max",
    "ttftP50": "min",
    "ttftP99": "min",
    "itlP50": "min",
    "goodput": "max",
    "joulesPerToken": "min",
}
"""Objective (row field, camelCase) -> whether the best run has its maximum or minimum."""

# row field (camelCase) -> path under status.results
_SOURCES: dict[str, tuple[str, ...]] = {
    "rps": ("throughput", "rps"),
    "tokPerS": ("throughput", "outputTokPerS"),
    "ttftP50": ("ttftMs", "p50"),
    "ttftP99": ("ttftMs", "p99"),
    "itlP50": ("itlMs", "p50"),
    "goodput": ("goodput", "ratio"),
    "gpuUtil": ("gpu", "utilMean"),
    "joulesPerToken": ("gpu", "joulesPerOutputToken"),
}
_PHASES = {p.value for p in Phase}


def _number(obj: Any, path: Sequence[str]) -> float | None:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    if isinstance(obj, bool) or not isinstance(obj, int | float) or not math.isfinite(obj):
        return None
    return float(obj)


def run_row(run: Mapping[str, Any]) -> ExperimentRunRow:
    """The headline numbers of one child run (tolerant of missing or malformed status)."""
    meta = run.get("metadata") or {}
    status = run.get("status")
    status = status if isinstance(status, Mapping) else {}
    phase = status.get("phase")
    results = status.get("results")
    numbers = {field: _number(results, path) for field, path in _SOURCES.items()}
    return ExperimentRunRow.model_validate(
        {
            "name": str(meta.get("name") or ""),
            "params": child_params(run),
            "phase": phase if phase in _PHASES else None,
            **numbers,
        }
    )


def best_runs(rows: Sequence[ExperimentRunRow]) -> dict[str, str]:
    """Objective -> name of the best Succeeded run having that metric (earliest on ties)."""
    succeeded = [
        (row.name, row.model_dump(by_alias=True)) for row in rows if row.phase == Phase.SUCCEEDED
    ]
    best: dict[str, str] = {}
    for objective, direction in OBJECTIVES.items():
        winner: tuple[float, str] | None = None
        for name, values in succeeded:
            value = values[objective]
            if value is None:
                continue
            better = winner is None or (
                value > winner[0] if direction == "max" else value < winner[0]
            )
            if better:
                winner = (value, name)
        if winner is not None:
            best[objective] = winner[1]
    return best


def _search_spec(search: Any) -> SearchSpec | None:
    if not isinstance(search, Mapping):
        return None
    try:
        return SearchSpec.model_validate(dict(search))
    except ValidationError:
        return None


def rollup(
    runs: Sequence[Mapping[str, Any]],
    *,
    cap: int,
    now: str,
    sweep: Any = None,
    search: Any = None,
    created: Collection[str] = (),
) -> ExperimentMetrics:
    """``status.metrics`` of an Experiment from its child runs (see the module doc).

    ``runs`` are BenchmarkRun bodies in any order; rows come out in sweep order (of ``sweep``,
    the Experiment's raw ``spec.sweep``, when given: see
    :func:`~benchop.core.children.order_children`). ``cap`` >= 1. With ``search`` (the raw
    ``spec.search``) the rows are in load order and ``search`` holds the SLO search's summary
    (:func:`~benchop.core.search.search_summary`; ``created``: the point keys of every probe
    ever created, so one deleted by hand counts as failed, as the reconciler counts it).
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    summary = None
    slo_search = _search_spec(search)
    if slo_search is not None:
        path = slo_search.path
        loads = sorted({v for v in (probe_value(r, slo_search) for r in runs) if v is not None})
        sweep = [{"path": path, "values": loads}]
        keys = set(created)
        summary = search_summary(runs, slo_search, gone=lambda v: point_key({path: v}) in keys)
    rows = [run_row(run) for run in order_children(runs, sweep)]
    best = best_runs(rows)
    capped = len(rows) > cap
    if capped:
        keep = set(list(dict.fromkeys(best[o] for o in OBJECTIVES if o in best))[:cap])
        for row in rows:
            if len(keep) >= cap:
                break
            keep.add(row.name)
        rows = [row for row in rows if row.name in keep]
    return ExperimentMetrics(
        version=METRICS_VERSION,
        refreshed_at=now,
        capped=capped,
        runs=rows,
        best=best,
        search=summary,
    )


def same_rollup(a: ExperimentMetrics, b: ExperimentMetrics) -> bool:
    """Equal apart from ``refreshedAt`` (then a refresh has nothing to write)."""
    return a.model_copy(update={"refreshed_at": None}) == b.model_copy(
        update={"refreshed_at": None}
    )


# --------------------------------------------------------------------------- cache

Source = Literal["cache", "hydrated"]
ListChildren = Callable[[Mapping[str, Any]], Awaitable[Sequence[Mapping[str, Any]]]]
"""``await list_children(experiment) -> [BenchmarkRun bodies]`` (its children, by label)."""


def cached_rollup(experiment: Mapping[str, Any]) -> ExperimentMetrics | None:
    """The decoded ``status.metrics`` if present, of the current version and well-formed."""
    status = experiment.get("status")
    blob = status.get("metrics") if isinstance(status, Mapping) else None
    if not isinstance(blob, Mapping) or blob.get("version") != METRICS_VERSION:
        return None
    try:
        return ExperimentMetrics.model_validate(blob)
    except ValidationError:
        return None


async def read_rollup(
    experiment: Mapping[str, Any],
    list_children: ListChildren,
    *,
    cap: int = DEFAULT_CAP,
    now: str | None = None,
) -> tuple[ExperimentMetrics, Source]:
    """The experiment's rollup and where it came from (see the module doc).

    Hydrating lists the children once and keeps only those owned by this experiment's uid.
    """
    cached = cached_rollup(experiment)
    if cached is not None:
        return cached, "cache"
    children = await list_children(experiment)
    uid = (experiment.get("metadata") or {}).get("uid")
    if uid:
        children = [c for c in children if owned_by(c, uid)]
    spec = experiment.get("spec") or {}
    metrics = rollup(
        children,
        cap=cap,
        now=now or now_rfc3339(),
        sweep=spec.get("sweep"),
        search=spec.get("search"),
        created=parse_created(experiment),
    )
    return metrics, "hydrated"
