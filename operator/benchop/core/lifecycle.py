"""Status transitions of BenchmarkRuns and Experiments: ``f(status, ...) -> new status``.

Each function takes the current ``.status`` (a camelCase dict) and returns the new one, or
None when nothing changes; the operator's status writer diffs it (:func:`merge_diff`) and
patches the difference, local mode keeps it. Every condition written here carries
``observedGeneration``. Once a run is terminal every run transition except :func:`rejected`
is a no-op, so a late event never reopens a finished run.

    new = accepted(status, generation=1, now="2024-05-01T12:00:00Z")
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from benchop.api import conditions as c
from benchop.api.models import ExperimentPhase, Phase
from benchop.core.children import Plan
from benchop.core.names import TERMINAL_PHASES

Status = dict[str, Any]
Update = tuple[str, Literal["True", "False", "Unknown"], str, str]  # type, status, reason, message


def is_terminal(status: Mapping[str, Any] | None) -> bool:
    """Whether a run's or an Experiment's status is in a phase it never leaves."""
    return isinstance(status, Mapping) and status.get("phase") in TERMINAL_PHASES


def merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new`` (removed keys -> None).

    >>> merge_diff({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}, "e": 4})
    {'a': None, 'b': {'d': None}, 'e': 4}
    """
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_diff(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or before != value:
            patch[key] = copy.deepcopy(value)
    return dict(sorted(patch.items()))


def with_conditions(
    status: Mapping[str, Any], updates: Sequence[Update], generation: int | None
) -> Status:
    """``status`` with each ``(type, status, reason, message)`` applied via ``set_condition``.

    A ``Succeeded`` update also sets its mirror ``Failed`` (True when Succeeded is False, False
    when True, Unknown while Unknown; same reason and message): the one place that keeps the
    two in step, so ``kubectl wait --for=condition=Failed`` returns on every terminal failure.
    """
    conds = list(status.get("conditions") or [])
    for type_, cstatus, reason, message in _with_failed(updates):
        conds = c.set_condition(
            conds,
            type=type_,
            status=cstatus,
            reason=reason,
            message=message,
            observed_generation=generation,
        )
    return {**status, "conditions": conds}


_MIRROR: dict[str, Literal["True", "False", "Unknown"]] = {
    c.TRUE: c.FALSE,
    c.FALSE: c.TRUE,
    c.UNKNOWN: c.UNKNOWN,
}


def _with_failed(updates: Sequence[Update]) -> list[Update]:
    out: list[Update] = []
    for update in updates:
        out.append(update)
        type_, cstatus, reason, message = update
        if type_ == c.SUCCEEDED:
            out.append((c.FAILED, _MIRROR[cstatus], reason, message))
    return out


# --------------------------------------------------------------------------- runs


def _cond(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    return c.get_condition(status.get("conditions"), type_)


def accepted(status: Status, *, generation: int, now: str) -> Status | None:
    """Valid spec: Accepted=True, Succeeded=Unknown, phase Initializing, startTime."""
    if is_terminal(status):
        return None
    updates: list[Update] = [(c.ACCEPTED, c.TRUE, "Valid", "the spec passed validation")]
    succeeded = _cond(status, c.SUCCEEDED)
    if succeeded is None or succeeded.get("observedGeneration") != generation:
        updates.append((c.SUCCEEDED, c.UNKNOWN, "Running", "the run has not finished"))
    if _cond(status, c.WORKERS_READY) is None:
        updates.append((c.WORKERS_READY, c.UNKNOWN, "Starting", "waiting for the worker pods"))
    new = with_conditions(status, updates, generation)
    new["observedGeneration"] = generation
    new.setdefault("startTime", now)
    if not new.get("phase") or new["phase"] == Phase.PENDING.value:
        new["phase"] = Phase.INITIALIZING.value
    return new


def rejected(status: Status, *, generation: int, message: str, now: str) -> Status:
    """Invalid spec: Accepted=False InvalidSpec (message names the field), run Failed."""
    new = with_conditions(
        status,
        [
            (c.ACCEPTED, c.FALSE, c.REASON_INVALID_SPEC, message),
            (c.SUCCEEDED, c.FALSE, c.REASON_INVALID_SPEC, message),
        ],
        generation,
    )
    new["observedGeneration"] = generation
    new["phase"] = Phase.FAILED.value
    new.setdefault("completionTime", now)
    return new


def workers_ready(
    status: Status, *, generation: int, running: int, workers: int, warmup: bool
) -> Status | None:
    """All N worker pods run: WorkersReady=True; phase Warmup when the spec has a warmup."""
    if is_terminal(status) or c.is_true(status.get("conditions"), c.WORKERS_READY):
        return None
    new = with_conditions(
        status,
        [(c.WORKERS_READY, c.TRUE, "AllRunning", f"{running}/{workers} worker pods are running")],
        generation,
    )
    if warmup and new.get("phase") in (None, Phase.PENDING.value, Phase.INITIALIZING.value):
        new["phase"] = Phase.WARMUP.value
    return new


_GRAVITY = {"Simulated": 1, "AgentMissing": 2, "NoAgents": 3}
"""TelemetryDegraded reasons of the gates, the gravest last: a later gate never softens one."""


def gate_closed(
    status: Status,
    *,
    generation: int,
    boundary: str,
    record: Mapping[str, Any],
    requested: bool = True,
) -> Status | None:
    """A gate closed: persist it under ``status.gates.<boundary>`` and move the conditions.

    ``requested`` is ``spec.gates.baseline`` (the record's ``baseline`` says whether a
    handshake ran, which it cannot without agents).

    START: BaselineStartCaptured=True, Profiling=True, phase Profiling. END:
    BaselineEndCaptured=True, Profiling=False, phase Finalizing. Missing agents or simulated
    GPUs: TelemetryDegraded=True (else False, unless an earlier gate degraded it).
    """
    if is_terminal(status):
        return None
    gates = dict(status.get("gates") or {})
    gates[boundary] = dict(record)
    new: Status = {**status, "gates": gates}
    missing = list(record.get("missing") or [])
    simulated = bool(record.get("simulated"))
    agents = list(record.get("agents") or [])
    if missing:
        captured_msg = f"agents that did not answer in time: {', '.join(missing)}"
    elif not requested:
        captured_msg = "baselines disabled (spec.gates.baseline=false)"
    elif not agents:
        captured_msg = "no agent serves the target's nodes"
    else:
        captured_msg = f"{len(agents)} agent(s) acked"
    reason = "TimedOut" if missing else "Captured"
    updates: list[Update]
    if boundary == "START":
        updates = []
        if not c.is_true(status.get("conditions"), c.WORKERS_READY):
            # every worker asked for the gate: all are running and connected
            updates.append(
                (c.WORKERS_READY, c.TRUE, "AllConnected", "every worker reached the START gate")
            )
        updates += [
            (c.BASELINE_START_CAPTURED, c.TRUE, reason, captured_msg),
            (c.PROFILING, c.TRUE, "GateGranted", "the START gate was granted to every worker"),
        ]
        new["phase"] = Phase.PROFILING.value
    else:
        updates = [
            (c.BASELINE_END_CAPTURED, c.TRUE, reason, captured_msg),
            (c.PROFILING, c.FALSE, "ProfilingDone", "the END gate closed"),
        ]
        new["phase"] = Phase.FINALIZING.value
    degraded = c.is_true(status.get("conditions"), c.TELEMETRY_DEGRADED)
    if not requested:
        pass  # baselines off (spec.gates.baseline=false): no telemetry was asked for
    elif missing or simulated or not agents:
        why = []
        if not agents:
            why.append("no agent serves the target's nodes (spec.target.podSelector): no GPU data")
        if missing:
            why.append(f"{boundary}: missing agents {', '.join(missing)}")
        if simulated:
            why.append("GPU numbers are simulated")
        why_reason = "NoAgents" if not agents else "AgentMissing" if missing else "Simulated"
        message = "; ".join(why)
        # an earlier gate's graver degradation stays (START missing an agent, END only
        # simulated: the window's GPU numbers are still incomplete)
        before = _cond(status, c.TELEMETRY_DEGRADED) or {}
        if (
            before.get("status") == c.TRUE
            and _GRAVITY.get(str(before.get("reason")), 0) > (_GRAVITY[why_reason])
        ):
            why_reason = str(before["reason"])
            message = f"{before.get('message')}; {message}"
        updates.append((c.TELEMETRY_DEGRADED, c.TRUE, why_reason, message))
    elif not degraded:
        updates.append((c.TELEMETRY_DEGRADED, c.FALSE, "Complete", "every agent acked"))
    return with_conditions(new, updates, generation)


def _prometheus_degraded(status: Status, generation: int, error: str | None) -> Status:
    """``TelemetryDegraded=True PrometheusUnavailable`` with Prometheus' error (and the earlier
    degradation's message, if the gates already degraded telemetry)."""
    if not error:
        return status
    message = f"Prometheus GPU stats unavailable: {error}"
    before = _cond(status, c.TELEMETRY_DEGRADED)
    if before is not None and before.get("status") == c.TRUE and before.get("message"):
        message += f"; {before['message']}"
    return with_conditions(
        status, [(c.TELEMETRY_DEGRADED, c.TRUE, "PrometheusUnavailable", message)], generation
    )


def _close_open(status: Status, generation: int) -> Status:
    """Conditions still in progress become False when the run ends early."""
    updates: list[Update] = []
    for type_ in (c.BASELINE_START_CAPTURED, c.BASELINE_END_CAPTURED):
        if not c.is_true(status.get("conditions"), type_):
            updates.append((type_, c.FALSE, "RunEnded", "the run ended before this gate closed"))
    if c.is_true(status.get("conditions"), c.PROFILING):
        updates.append((c.PROFILING, c.FALSE, "RunEnded", "the run ended"))
    return with_conditions(status, updates, generation) if updates else status


def failed(
    status: Status,
    *,
    generation: int,
    reason: str,
    message: str,
    now: str,
    results: Mapping[str, Any] | None = None,
    results_reason: str = "",
    prometheus_error: str | None = None,
    output: Mapping[str, Any] | None = None,
) -> Status | None:
    """The run failed: Succeeded=False with ``reason``; partial results kept if any.

    ``prometheus_error``: the Prometheus window query failed (TelemetryDegraded, see
    :func:`finished`); ``output``: where the results bundle went (``status.output``).
    """
    if is_terminal(status):
        return None
    new = _prometheus_degraded(_close_open(status, generation), generation, prometheus_error)
    if output is not None:
        new["output"] = dict(output)
    updates: list[Update] = [(c.SUCCEEDED, c.FALSE, reason, message)]
    if results is not None:
        new["results"] = dict(results)
        updates.insert(0, (c.RESULTS_AVAILABLE, c.TRUE, results_reason, "partial results"))
    else:
        updates.insert(0, (c.RESULTS_AVAILABLE, c.FALSE, "NoResults", "no worker reported"))
    new = with_conditions(new, updates, generation)
    new["phase"] = Phase.FAILED.value
    new["completionTime"] = now
    return new


def finished(
    status: Status,
    *,
    generation: int,
    results: Mapping[str, Any],
    results_reason: str,
    succeeded: bool,
    reason: str,
    message: str,
    now: str,
    prometheus_error: str | None = None,
    output: Mapping[str, Any] | None = None,
) -> Status | None:
    """Final results are in: ResultsAvailable=True (reason: source), Succeeded True/False.

    ``prometheus_error`` (``spec.prometheus.url`` set, the window query failed): also
    TelemetryDegraded=True PrometheusUnavailable with the error — never a failed run.
    ``output``: where the results bundle went (``status.output``).
    """
    if is_terminal(status):
        return None
    new = _close_open(status, generation) if not succeeded else status
    new = _prometheus_degraded(new, generation, prometheus_error)
    new = {**new, "results": dict(results)}
    if output is not None:
        new["output"] = dict(output)
    complete = "complete" if results.get("complete") else "incomplete"
    new = with_conditions(
        new,
        [
            (c.RESULTS_AVAILABLE, c.TRUE, results_reason, f"{complete} results"),
            (c.SUCCEEDED, c.TRUE if succeeded else c.FALSE, reason, message),
        ],
        generation,
    )
    if c.is_true(new.get("conditions"), c.PROFILING):
        new = with_conditions(new, [(c.PROFILING, c.FALSE, "ProfilingDone", "")], generation)
    new["phase"] = Phase.SUCCEEDED.value if succeeded else Phase.FAILED.value
    new["completionTime"] = now
    return new


def with_live(status: Status, live: Mapping[str, Any]) -> Status | None:
    """``status.live`` replaced (not while terminal)."""
    if is_terminal(status):
        return None
    return {**status, "live": dict(live)}


# --------------------------------------------------------------------------- Experiments


def experiment_rejected(
    status: Status,
    *,
    generation: int,
    reason: str,
    message: str,
    now: str,
    counts: Mapping[str, int] | None = None,
) -> Status:
    """Accepted=False with ``reason``. While children still run (``counts``: of the existing
    children) the phase stays Running with Succeeded=Unknown, so reconciles keep the counts
    current; once none is active, Succeeded=False and phase Failed with a completionTime."""
    active = counts is not None and counts.get("pending", 0) + counts.get("running", 0) > 0
    succeeded: Update
    if active:
        waiting = f"{message}; waiting for the runs already started to finish"
        succeeded = (c.SUCCEEDED, c.UNKNOWN, reason, waiting)
    else:
        succeeded = (c.SUCCEEDED, c.FALSE, reason, message)
    new = with_conditions(status, [(c.ACCEPTED, c.FALSE, reason, message), succeeded], generation)
    new["observedGeneration"] = generation
    if counts is not None:
        new["counts"] = dict(counts)
    if active:
        new["phase"] = ExperimentPhase.RUNNING.value
        new.pop("completionTime", None)
    else:
        new["phase"] = ExperimentPhase.FAILED.value
        new.setdefault("completionTime", now)
    return new


def experiment_progressed(status: Status, *, generation: int, plan: Plan, now: str) -> Status:
    """Accepted=True, counts, Succeeded (Unknown while running), phase, start/completion."""
    succeeded: Update
    if plan.finished:
        succeeded = (c.SUCCEEDED, c.TRUE if plan.succeeded else c.FALSE, plan.reason, plan.message)
        phase = ExperimentPhase.SUCCEEDED if plan.succeeded else ExperimentPhase.FAILED
    else:
        succeeded = (c.SUCCEEDED, c.UNKNOWN, plan.reason, plan.message)
        started = plan.counts["total"] > plan.counts["pending"] or plan.create
        phase = ExperimentPhase.RUNNING if started else ExperimentPhase.PENDING
    new = with_conditions(
        status, [(c.ACCEPTED, c.TRUE, "Valid", "the spec passed validation"), succeeded], generation
    )
    new["observedGeneration"] = generation
    new["phase"] = phase.value
    new["counts"] = dict(plan.counts)
    new.setdefault("startTime", now)
    if plan.finished:
        new.setdefault("completionTime", now)
    else:
        new.pop("completionTime", None)
    return new
