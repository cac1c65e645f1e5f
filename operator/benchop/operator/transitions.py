"""Pure status transitions of a BenchmarkRun: ``f(status, ...) -> new status``.

Each function takes the current ``.status`` (a camelCase dict) and returns the new one; the
:class:`~benchop.operator.status.StatusWriter` diffs and writes it. Every condition written here
carries ``observedGeneration``. Once the run is terminal (``Succeeded``/``Failed``) every
transition except :func:`rejected` is a no-op, so a late event never reopens a finished run.

    new = accepted(status, generation=1, now="2024-05-01T12:00:00Z")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from benchop.api import conditions as c
from benchop.api.models import Phase
from benchop.operator.status import with_conditions

Status = dict[str, Any]
Update = tuple[str, str, str, str]  # (type, status, reason, message)
TERMINAL = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})


def is_terminal(status: Mapping[str, Any] | None) -> bool:
    return status is not None and status.get("phase") in TERMINAL


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
        updates.append((c.TELEMETRY_DEGRADED, c.TRUE, why_reason, "; ".join(why)))
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
) -> Status | None:
    """The run failed: Succeeded=False with ``reason``; partial results kept if any.

    ``prometheus_error``: the Prometheus window query failed (TelemetryDegraded, see
    :func:`finished`).
    """
    if is_terminal(status):
        return None
    new = _prometheus_degraded(_close_open(status, generation), generation, prometheus_error)
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
) -> Status | None:
    """Final results are in: ResultsAvailable=True (reason: source), Succeeded True/False.

    ``prometheus_error`` (``spec.prometheus.url`` set, the window query failed): also
    TelemetryDegraded=True PrometheusUnavailable with the error — never a failed run.
    """
    if is_terminal(status):
        return None
    new = _close_open(status, generation) if not succeeded else status
    new = _prometheus_degraded(new, generation, prometheus_error)
    new = {**new, "results": dict(results)}
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
