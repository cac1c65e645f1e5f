"""Condition types of a BenchmarkRun / Experiment and the one pure updater.

Conditions have the metav1.Condition shape (``type, status, reason, message,
lastTransitionTime, observedGeneration``) as camelCase dicts, and are written
by the operator only (local mode writes the same ones).

What each status means (``-`` = not used):

========================= ============================ ========================= ==================
type                      True                         False                     Unknown
========================= ============================ ========================= ==================
``Accepted``              spec passed semantic         spec invalid: reason      not validated yet
                          validation                   ``InvalidSpec``, message
                                                       names the field
``WorkersReady``          all N worker pods run and    a worker is missing or    pods starting
                          are connected                failed (message: which)
``BaselineStartCaptured`` START gate closed: every     the run failed before     warmup running
                          worker asked; agents acked   the gate closed
                          or timed out (message lists
                          missing agents)
``Profiling``             START gate granted,          profiling is over, or     not started yet
                          profiling runs               the run failed first
``BaselineEndCaptured``   END gate closed, same rules  the run failed before     profiling running
                          as START                     the gate closed
``ResultsAvailable``      final results are in         no results could be       run still going
                          ``status.results``; reason   collected
                          names the source
``Succeeded``             run (every run of a sweep;   failed: reason and        still running
                          a search with an answer)     message say why
                          succeeded
``Failed``                ended in failure (phase      ended in success          still running
                          ``Failed``): the reason and
                          message of ``Succeeded=False``
``TelemetryDegraded``     an agent missed a gate, or   telemetry complete and    -
                          GPU numbers are simulated    real
========================= ============================ ========================= ==================

``Succeeded`` and ``Failed`` are the terminal conditions, always written together (``Failed``
mirrors ``Succeeded``, as a Job has ``Complete`` and ``Failed``): every run and Experiment ends
with exactly one of them True, so ``kubectl wait --for=condition=Succeeded`` and ``kubectl wait
--for=condition=Failed``, run together, never wait to their timeout. The Argo CD health check
reads them too.

Example::

    conds = set_condition(conds, type=ACCEPTED, status="True", reason="Valid",
                          message="", observed_generation=body["metadata"]["generation"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

ACCEPTED = "Accepted"
WORKERS_READY = "WorkersReady"
BASELINE_START_CAPTURED = "BaselineStartCaptured"
PROFILING = "Profiling"
BASELINE_END_CAPTURED = "BaselineEndCaptured"
RESULTS_AVAILABLE = "ResultsAvailable"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TELEMETRY_DEGRADED = "TelemetryDegraded"

CONDITION_TYPES: tuple[str, ...] = (
    ACCEPTED,
    WORKERS_READY,
    BASELINE_START_CAPTURED,
    PROFILING,
    BASELINE_END_CAPTURED,
    RESULTS_AVAILABLE,
    SUCCEEDED,
    FAILED,
    TELEMETRY_DEGRADED,
)

TRUE: Literal["True"] = "True"
FALSE: Literal["False"] = "False"
UNKNOWN: Literal["Unknown"] = "Unknown"

REASON_INVALID_SPEC = "InvalidSpec"
"""``Accepted=False`` reason for a spec the schema let through but the models reject."""


def now_rfc3339() -> str:
    """Current UTC time as metav1.Time serializes it: ``2024-05-01T12:00:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conds: Sequence[Mapping[str, Any]] | None,
    *,
    type: str,
    status: Literal["True", "False", "Unknown"],
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """A new list with condition ``type`` set; the input is not modified.

    ``lastTransitionTime`` is kept when the status is unchanged and set to
    ``now`` (default: the current time) when it changes or the condition is
    new. Other conditions keep their order; a new one is appended.
    """
    new: dict[str, Any] = {
        "type": type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now or now_rfc3339(),
    }
    if observed_generation is not None:
        new["observedGeneration"] = observed_generation
    out: list[dict[str, Any]] = []
    found = False
    for cond in conds or ():
        if cond.get("type") != type:
            out.append(dict(cond))
            continue
        if found:  # a duplicate entry of this type: drop it
            continue
        found = True
        if cond.get("status") == status and cond.get("lastTransitionTime"):
            new["lastTransitionTime"] = cond["lastTransitionTime"]
        out.append(new)
    if not found:
        out.append(new)
    return out


def get_condition(conds: Sequence[Mapping[str, Any]] | None, type: str) -> dict[str, Any] | None:
    """A copy of the condition of this type, or None."""
    for cond in conds or ():
        if cond.get("type") == type:
            return dict(cond)
    return None


def is_true(conds: Sequence[Mapping[str, Any]] | None, type: str) -> bool:
    """Whether the condition exists with status ``True``."""
    cond = get_condition(conds, type)
    return cond is not None and cond.get("status") == TRUE
