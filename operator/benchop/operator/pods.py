"""Pure readings of worker pods and the load-generator Job: running, stuck, finished.

view = pod_view(pod_body)      # index, running?, stuck reason, termination message
job = job_view(job_body)       # "Complete" | "Failed" (+ reason) | None
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INDEX_KEY = "batch.kubernetes.io/job-completion-index"

STUCK_WAITING = {
    "ImagePullBackOff": "ImagePullFailed",
    "ErrImagePull": "ImagePullFailed",
    "InvalidImageName": "ImagePullFailed",
    "CreateContainerConfigError": "PodConfigError",
    "CreateContainerError": "PodConfigError",
}
"""Container waiting reasons that mean the worker cannot start -> run failure reason."""
GRACEFUL = {"ImagePullFailed", "Unschedulable"}
"""Failure reasons that may clear by themselves (registry blip, autoscaler): given a grace."""
CRASH_LOOP_RESTARTS = 3
"""A worker in CrashLoopBackOff with at least this many restarts fails the run."""


@dataclass(frozen=True, slots=True)
class PodView:
    """What the operator needs to know about one worker pod."""

    name: str
    index: int | None
    phase: str
    running: bool
    restarts: int
    stuck_reason: str | None  # run failure reason, e.g. "ImagePullFailed", "OOMKilled"
    stuck_message: str
    termination_message: str | None
    resource_version: str = ""  # of the pod as read: the resync compares it with the LIST's


def _index(pod: Mapping[str, Any]) -> int | None:
    meta = pod.get("metadata") or {}
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        value = source.get(INDEX_KEY)
        if value is not None and str(value).isdigit():
            return int(value)
    return None


def pod_view(pod: Mapping[str, Any]) -> PodView:
    """Read one worker pod's status."""
    name = (pod.get("metadata") or {}).get("name", "?")
    st = pod.get("status") or {}
    phase = st.get("phase") or "Pending"
    statuses = st.get("containerStatuses") or []
    cs = statuses[0] if statuses else {}
    state = cs.get("state") or {}
    last = cs.get("lastState") or {}
    restarts = int(cs.get("restartCount") or 0)
    reason: str | None = None
    message = ""
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    last_terminated = last.get("terminated") or {}
    if waiting.get("reason") in STUCK_WAITING:
        reason = STUCK_WAITING[waiting["reason"]]
        message = f"pod {name}: {waiting['reason']}: {waiting.get('message', '')}".strip(": ")
    elif "OOMKilled" in (terminated.get("reason"), last_terminated.get("reason")):
        reason = "OOMKilled"
        message = f"pod {name}: the load generator was OOMKilled (raise spec.pod.resources)"
    elif waiting.get("reason") == "CrashLoopBackOff" and restarts >= CRASH_LOOP_RESTARTS:
        reason = "CrashLoopBackOff"
        detail = (last_terminated.get("message") or "")[:200]
        message = f"pod {name}: crash loop after {restarts} restarts {detail}".strip()
    else:
        for cond in st.get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                reason = "Unschedulable"
                message = f"pod {name}: unschedulable: {cond.get('message', '')}".strip(": ")
    running = phase == "Running" and ("running" in state or not statuses)
    term_msg = terminated.get("message") if terminated.get("exitCode") == 0 else None
    return PodView(
        name=name,
        index=_index(pod),
        phase=phase,
        running=running,
        restarts=restarts,
        stuck_reason=reason,
        stuck_message=message,
        termination_message=term_msg,
        resource_version=(pod.get("metadata") or {}).get("resourceVersion", ""),
    )


@dataclass(frozen=True, slots=True)
class JobView:
    """The Job's terminal state: ``Complete`` or ``Failed`` (with the Job's reason), or None."""

    state: str | None
    reason: str
    message: str
    resource_version: str = ""  # of the Job as read: the resync compares it with the LIST's


def job_view(job: Mapping[str, Any]) -> JobView:
    version = (job.get("metadata") or {}).get("resourceVersion", "")
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Failed":
            reason, message = cond.get("reason") or "JobFailed", cond.get("message") or ""
            return JobView("Failed", reason, message, version)
        if cond.get("type") == "Complete":
            return JobView("Complete", cond.get("reason") or "Completed", "", version)
    return JobView(None, "", "", version)
