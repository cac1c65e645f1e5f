"""Pod status as the kubelet writes it (pure builders).

``ContainerRecord`` is this kubelet's view of one container; :func:`pod_status` turns the records
of a pod into the ``status`` the kubelet would PATCH: phase (kubelet ``getPhase``), the conditions
it owns (``PodReadyToStartContainers``, ``Initialized``, ``ContainersReady``, ``Ready``, with the
reasons and messages of pkg/kubelet/status/generate.go), container statuses, IPs, startTime.
``PodScheduled`` and other conditions stay the scheduler's and controllers'.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

OWNED_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")


def now_iso() -> str:
    """RFC 3339 seconds, the precision of metav1.Time."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerRecord:
    """One container of a pod, across its restarts."""

    name: str
    image: str
    state: dict[str, Any]
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str | None = None
    image_id: str = ""

    @classmethod
    def waiting(cls, name: str, image: str, reason: str) -> ContainerRecord:
        return cls(name=name, image=image, state={"waiting": {"reason": reason}})

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> dict[str, Any] | None:
        return self.state.get("terminated")

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "lastState": self.last_state,
            "ready": self.ready and self.running,
            "restartCount": self.restart_count,
            "image": self.image,
            "imageID": self.image_id,
            "started": self.started and self.running,
        }
        if self.container_id:
            out["containerID"] = self.container_id
        return out


def terminated_state(
    exit_code: int,
    *,
    started_at: str,
    finished_at: str,
    message: str = "",
    container_id: str = "",
    reason: str | None = None,
) -> dict[str, Any]:
    """``{"terminated": {...}}`` with the runtime's reasons: Completed for 0, Error otherwise."""
    t: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": finished_at,
    }
    if message:
        t["message"] = message
    if container_id:
        t["containerID"] = container_id
    return {"terminated": t}


def _restartable_init(c: dict[str, Any]) -> bool:
    return c.get("restartPolicy") == "Always"


def pod_phase(
    pod: dict[str, Any],
    init: list[ContainerRecord],
    regular: list[ContainerRecord],
    *,
    terminal: bool = False,
) -> str:
    """kubelet ``getPhase`` (without per-container restart rules). ``terminal``: the pod is
    being torn down for good (deleted), so stopped containers make it Succeeded or Failed."""
    policy = pod["spec"].get("restartPolicy", "Always")
    by_name = {r.name: r for r in init + regular}
    pending_init = failed_init = 0
    running = waiting = stopped = succeeded = unknown = 0
    for c in pod["spec"].get("initContainers") or []:
        r = by_name.get(c["name"])
        if _restartable_init(c):
            if r is None:
                unknown += 1
            elif r.running:
                running += 1
                pending_init += 0 if r.started else 1
            elif r.terminated is None and not r.last_state.get("terminated"):
                pending_init += 1
                waiting += 1
            continue
        if r is None or r.running:
            pending_init += 1
        elif r.terminated is not None:
            failed_init += r.terminated["exitCode"] != 0
        elif r.last_state.get("terminated"):
            failed_init += r.last_state["terminated"]["exitCode"] != 0
        else:
            pending_init += 1
    for c in pod["spec"]["containers"]:
        r = by_name.get(c["name"])
        if r is None:
            unknown += 1
        elif r.running:
            running += 1
        elif r.terminated is not None:
            stopped += 1
            succeeded += r.terminated["exitCode"] == 0
        elif r.last_state.get("terminated"):
            stopped += 1
        else:
            waiting += 1
    if failed_init and policy == "Never":
        return "Failed"
    if pending_init or waiting:
        return "Pending"
    if running and not unknown:
        return "Running"
    if not running and stopped and not unknown:
        if terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _names(names: list[str]) -> str:
    return "[" + " ".join(names) + "]"  # Go's %s of a []string


def _conditions(
    pod: dict[str, Any],
    init: list[ContainerRecord],
    regular: list[ContainerRecord],
    phase: str,
    sandbox_ready: bool,
    api_conditions: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    spec = pod["spec"]
    by_name = {r.name: r for r in init + regular}
    conds: dict[str, dict[str, Any]] = {}
    conds["PodReadyToStartContainers"] = {"status": "True" if sandbox_ready else "False"}

    # Initialized
    incomplete = []
    for c in spec.get("initContainers") or []:
        r = by_name.get(c["name"])
        if r is None:
            incomplete.append(c["name"])
        elif _restartable_init(c):
            if not (r.started and r.running):
                incomplete.append(c["name"])
        elif not (r.terminated is not None and r.terminated["exitCode"] == 0):
            incomplete.append(c["name"])
    any_started = any(r.running or r.terminated or r.last_state for r in regular)
    if phase == "Succeeded":
        conds["Initialized"] = {"status": "True", "reason": "PodCompleted"}
    elif any_started or not incomplete:
        conds["Initialized"] = {"status": "True"}
    else:
        conds["Initialized"] = {
            "status": "False",
            "reason": "ContainersNotInitialized",
            "message": f"containers with incomplete status: {_names(incomplete)}",
        }

    # ContainersReady, Ready
    if phase in ("Succeeded", "Failed"):
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        ready = {"status": "False", "reason": reason}
        conds["ContainersReady"] = dict(ready)
        conds["Ready"] = dict(ready)
        return conds
    unready = [
        c["name"]
        for c in [
            *(x for x in spec.get("initContainers") or [] if _restartable_init(x)),
            *spec["containers"],
        ]
        if not (by_name.get(c["name"]) and by_name[c["name"]].ready and by_name[c["name"]].running)
    ]
    if unready:
        msg = f"containers with unready status: {_names(unready)}"
        conds["ContainersReady"] = {
            "status": "False",
            "reason": "ContainersNotReady",
            "message": msg,
        }
        conds["Ready"] = dict(conds["ContainersReady"])
        return conds
    conds["ContainersReady"] = {"status": "True"}
    by_type = {c["type"]: c for c in api_conditions}
    gate_msgs = []
    for gate in spec.get("readinessGates") or []:
        t = gate["conditionType"]
        if t not in by_type:
            gate_msgs.append(f'corresponding condition of pod readiness gate "{t}" does not exist.')
        elif by_type[t].get("status") != "True":
            got = by_type[t].get("status")
            gate_msgs.append(f'the status of pod readiness gate "{t}" is not "True", but {got}')
    if gate_msgs:
        conds["Ready"] = {
            "status": "False",
            "reason": "ReadinessGatesNotReady",
            "message": ", ".join(gate_msgs),
        }
    else:
        conds["Ready"] = {"status": "True"}
    return conds


def merge_conditions(
    new: dict[str, dict[str, Any]], old: list[dict[str, Any]], *, now: str, generation: int | None
) -> list[dict[str, Any]]:
    """Our conditions in the kubelet's order, keeping ``lastTransitionTime`` unless the status
    changes."""
    old_by_type = {c["type"]: c for c in old}
    out = []
    for t in OWNED_CONDITIONS:
        # explicit nulls: a strategic merge patch would otherwise keep an old reason/message
        c = {"type": t, "reason": None, "message": None, **new[t]}
        prev = old_by_type.get(t)
        c["lastTransitionTime"] = (
            prev["lastTransitionTime"]
            if prev and prev.get("status") == c["status"] and prev.get("lastTransitionTime")
            else now
        )
        c["lastProbeTime"] = None
        if generation is not None:
            c["observedGeneration"] = generation
        out.append(c)
    return out


def pod_status(
    pod: dict[str, Any],
    init: list[ContainerRecord],
    regular: list[ContainerRecord],
    *,
    sandbox_ready: bool,
    pod_ip: str | None,
    host_ip: str,
    start_time: str | None,
    now: str,
    terminal: bool = False,
) -> dict[str, Any]:
    """The ``status`` this kubelet PATCHes (strategic merge: conditions merge by type, so
    ``PodScheduled`` and others stay as they are)."""
    phase = pod_phase(pod, init, regular, terminal=terminal)
    api_status = pod.get("status") or {}
    conds = _conditions(
        pod, init, regular, phase, sandbox_ready, api_status.get("conditions") or []
    )
    generation = pod["metadata"].get("generation")
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": merge_conditions(
            conds, api_status.get("conditions") or [], now=now, generation=generation
        ),
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "containerStatuses": [r.to_status() for r in regular],
    }
    if generation is not None:
        status["observedGeneration"] = generation
    if init:
        status["initContainerStatuses"] = [r.to_status() for r in init]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    if start_time:
        status["startTime"] = start_time
    return status


def without_times(status: dict[str, Any]) -> dict[str, Any]:
    """``status`` minus condition transition times, to compare two computed statuses."""
    out = dict(status)
    out["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]
    ]
    return out
