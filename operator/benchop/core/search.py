"""SLO search, pure: which load to probe next, and where the knee is.

An Experiment with ``spec.search`` looks for the **knee**: the highest load (concurrency or
request rate) whose goodput — the share of requests meeting ``template.slo`` — stays at or above
``minGoodput``: the highest probed load ``L`` that passed while every probed load below ``L``
passed too. Each probe is one child BenchmarkRun of the template at one load; the operator's
reconciler and ``benchop run`` both ask :func:`search_step` for the next one, one probe at a
time, from the probes so far — a function of their results only, never of a stored cursor, so
a restarted operator (or an edited range) carries on from the children alone.

1. **Bracketing**: the first probe is ``min``; while every probe passed, the next is the highest
   passing load times ``growth`` (at most ``max``; for concurrency at least one more).
   ``max`` passing ends the search: ``AtMax`` (the knee is at least ``max``). ``min`` failing
   ends it: ``BelowMin`` (no knee).
2. **Bisection**: once a probe failed, the next is the midpoint between the knee so far
   (``lo``, the highest passing load below the lowest failing one) and the lowest failing load
   (``limit``) — rounded down for concurrency — until ``limit - lo <= resolution``:
   ``KneeFound``.
3. **Bound**: at most ``maxProbes`` probes; a search that would need another ends
   ``ProbeLimit`` with the bracket it has (knee ``lo``, ``limit``).

Probes needed without the bound: bracketing ``ceil(log_growth(max / min)) + 1``, then
bisection ``ceil(log2(gap / resolution))`` where ``gap`` is the bracket the growth step left
(at most ``max * (1 - 1/growth)``): a concurrency search of 1..1024 at resolution 1 takes at
most 11 + 9 = 20 probes, of 1..256 at most 9 + 7 = 16.

Non-monotone goodput (a load above ``limit`` passing, e.g. noise on a real server) is handled
conservatively: only the lowest failing load bounds the knee, a pass above it is reported
(``monotone: false``) but never raises the knee. A probe whose run failed (phase ``Failed``:
e.g. every request timed out) or was deleted by hand counts as missing the target.

    step = search_step(spec.search, {1: True, 2: True, 4: False})
    step.next, step.knee, step.limit      # -> 3, 2, 4
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from benchop.api.models import (
    ExperimentSearch,
    Phase,
    SearchOutcome,
    SearchProbe,
    SearchSpec,
)
from benchop.core.children import Plan, SucceededReason, child_params, child_phase, sweep_index
from benchop.core.names import TERMINAL_PHASES

Load = int | float
_PHASES = {p.value for p in Phase}

__all__ = [
    "Load",
    "SearchStep",
    "probe_passed",
    "probe_value",
    "probes_of",
    "search_plan",
    "search_step",
    "search_summary",
]


@dataclass(frozen=True, slots=True)
class SearchStep:
    """Where a search stands, and the load to probe next (None: wait, or finished)."""

    outcome: SearchOutcome
    next: Load | None
    knee: Load | None
    limit: Load | None
    probes: int
    """Probes counted against ``maxProbes`` (running ones and ones deleted by hand too)."""
    monotone: bool
    message: str

    @property
    def finished(self) -> bool:
        return self.outcome != "Searching"


def _fmt(value: Load) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _candidate(search: SearchSpec, lo: Load | None, limit: Load | None) -> Load | None:
    """The next load to probe given the bracket, or None when the bracket is final."""
    bounds = search.range
    integer = search.concurrency is not None
    if lo is None:
        return None if limit is not None and limit <= bounds.min else bounds.min
    if limit is None:
        if lo >= bounds.max:
            return None
        grown = lo * search.growth
        nxt: Load = max(lo + 1, math.ceil(grown)) if integer else grown
        return min(nxt, bounds.max)
    if limit - lo <= bounds.resolution:
        return None
    mid = (lo + limit) // 2 if integer else (lo + limit) / 2
    return mid if lo < mid < limit else None


def search_step(
    search: SearchSpec,
    probes: Mapping[Load, bool | None],
    gone: Callable[[Load], bool] = lambda _: False,
) -> SearchStep:
    """The search's state after ``probes`` (load -> passed; None while its run is going).

    ``gone(load)``: a probe of that load was created once but its run no longer exists
    (deleted by hand): it counts as failed, and is never probed again. Loads outside
    ``[min, max]`` (from before an edit of the range) are ignored.
    """
    bounds = search.range
    results = {v: p for v, p in probes.items() if bounds.min <= v <= bounds.max}
    while True:
        done = {v: p for v, p in results.items() if p is not None}
        failing = [v for v, p in done.items() if not p]
        limit = min(failing) if failing else None
        passing = [v for v, p in done.items() if p and (limit is None or v < limit)]
        lo = max(passing) if passing else None
        nxt = _candidate(search, lo, limit)
        if nxt is None or nxt in results or not gone(nxt):
            break
        results[nxt] = False  # created before, deleted by hand: a failed probe
    monotone = limit is None or not any(p and v > limit for v, p in done.items())
    used = len(probes) + sum(1 for v in results if v not in probes)
    running = [v for v, p in results.items() if p is None]
    path, target = search.path, f"goodput >= {search.min_goodput:g}"
    outcome: SearchOutcome = "Searching"
    if nxt is None and lo is None:
        outcome = "BelowMin"
        message = f"{path}={_fmt(bounds.min)} (the minimum) missed {target}: no knee"
    elif nxt is None and limit is None:
        outcome = "AtMax"
        message = (
            f"{target} up to {path}={_fmt(bounds.max)} (the maximum): the knee is there or above"
        )
    elif nxt is None:
        outcome = "KneeFound"
        message = f"knee {path}={_fmt(lo or 0)}: {target} there, not at {_fmt(limit or 0)}"
    elif running:
        message = f"probe {path}={_fmt(running[0])} running"
    elif used >= search.max_probes:
        outcome = "ProbeLimit"
        above = f"not at {_fmt(limit)}" if limit is not None else f"{_fmt(nxt)} not probed"
        message = (
            f"maxProbes ({search.max_probes}) used: knee {path}={_fmt(lo or 0)} meets {target}, "
            f"{above}"
        )
    else:
        message = f"next probe {path}={_fmt(nxt)}"
    if outcome == "Searching" and lo is not None:
        message += f"; knee so far {_fmt(lo)}"
    if not monotone:
        message += f"; goodput not monotone: a load above {_fmt(limit or 0)} met the target"
    return SearchStep(
        outcome=outcome,
        next=nxt if outcome == "Searching" and not running else None,
        knee=lo,
        limit=limit,
        probes=used,
        monotone=monotone,
        message=message,
    )


# --------------------------------------------------------------------------- children


def probe_value(run: Mapping[str, Any], search: SearchSpec) -> Load | None:
    """The load a child run probed (its params annotation), or None if it is not a probe."""
    value = child_params(run).get(search.path)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _goodput(run: Mapping[str, Any]) -> float | None:
    status = run.get("status")
    results = status.get("results") if isinstance(status, Mapping) else None
    goodput = results.get("goodput") if isinstance(results, Mapping) else None
    ratio = goodput.get("ratio") if isinstance(goodput, Mapping) else None
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
        return None
    return float(ratio)


def probe_passed(run: Mapping[str, Any], search: SearchSpec) -> bool | None:
    """None while the run is going; True when it Succeeded with goodput >= minGoodput."""
    phase = child_phase(run)
    if phase not in TERMINAL_PHASES:
        return None
    goodput = _goodput(run)
    return phase == Phase.SUCCEEDED.value and goodput is not None and goodput >= search.min_goodput


def probes_of(runs: Sequence[Mapping[str, Any]], search: SearchSpec) -> dict[Load, bool | None]:
    """Load -> passed of the children that are probes of this search."""
    out: dict[Load, bool | None] = {}
    for run in runs:
        value = probe_value(run, search)
        if value is not None:
            out[value] = probe_passed(run, search)
    return out


def search_summary(
    runs: Sequence[Mapping[str, Any]],
    search: SearchSpec,
    gone: Callable[[Load], bool] = lambda _: False,
) -> ExperimentSearch:
    """``status.metrics.search``: the knee, the limit and every probe in the order run."""
    step = search_step(search, probes_of(runs, search), gone)
    rows: list[tuple[int, str, SearchProbe]] = []
    for run in runs:
        value = probe_value(run, search)
        if value is None:
            continue
        phase = child_phase(run)
        probe = SearchProbe(
            run=_name(run),
            value=value,
            phase=Phase(phase) if phase in _PHASES else None,
            goodput=_goodput(run),
            passed=probe_passed(run, search),
        )
        index = sweep_index(run)
        rows.append((index if index is not None else 1 << 30, probe.run, probe))
    ordered = [probe for _, _, probe in sorted(rows, key=lambda r: r[:2])]
    run_of = {probe.value: probe.run for probe in ordered}
    return ExperimentSearch(
        path=search.path,
        min_goodput=search.min_goodput,
        outcome=step.outcome,
        knee=step.knee,
        knee_run=run_of.get(step.knee) if step.knee is not None else None,
        limit=step.limit,
        limit_run=run_of.get(step.limit) if step.limit is not None else None,
        monotone=step.monotone,
        message=step.message,
        probes=ordered,
    )


def _name(run: Mapping[str, Any]) -> str:
    return str((run.get("metadata") or {}).get("name") or "")


def search_plan(step: SearchStep, phases: Sequence[str]) -> Plan:
    """The status-facing :class:`~benchop.core.children.Plan` of a search step (``phases``: of
    the existing probes). ``create`` holds the next probe's index (the probes so far) when
    there is one. The search succeeds unless no load met the target (``BelowMin``)."""
    active = [p for p in phases if p not in TERMINAL_PHASES]
    pending = sum(1 for p in active if p == Phase.PENDING.value)
    create = (step.probes,) if step.next is not None else ()
    counts = {
        "total": len(phases) + len(create),
        "pending": pending + len(create),
        "running": len(active) - pending,
        "succeeded": sum(1 for p in phases if p == Phase.SUCCEEDED.value),
        "failed": sum(1 for p in phases if p == Phase.FAILED.value),
    }
    finished = step.finished and not active
    reason: SucceededReason = "Running"
    if finished and step.outcome != "Searching":
        reason = step.outcome
    return Plan(create, counts, finished, reason, step.message)
