"""testkubelet.status: phase, conditions and container statuses as the kubelet writes them."""

from __future__ import annotations

import pytest
from testkubelet.status import (
    ContainerRecord,
    merge_conditions,
    pod_phase,
    pod_status,
    terminated_state,
    without_times,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"


def pod(policy="Always", init=(), containers=("app",), gates=(), conditions=()):
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "restartPolicy": policy,
            "initContainers": [{"name": n, "image": "i"} for n in init],
            "containers": [{"name": n, "image": "i"} for n in containers],
            "readinessGates": [{"conditionType": g} for g in gates],
        },
        "status": {"conditions": list(conditions)},
    }


def running(name, ready=True):
    r = ContainerRecord(name=name, image="i", state={"running": {"startedAt": T0}})
    r.ready = r.started = ready
    return r


def exited(name, code, *, waiting=False):
    t = terminated_state(code, started_at=T0, finished_at=T1)
    if waiting:
        return ContainerRecord(
            name=name, image="i", last_state=t, state={"waiting": {"reason": "CrashLoopBackOff"}}
        )
    return ContainerRecord(name=name, image="i", state=t)


def waiting(name, reason="ContainerCreating"):
    return ContainerRecord.waiting(name, "i", reason)


@pytest.mark.parametrize(
    ("policy", "init", "regular", "phase"),
    [
        ("Always", [], [waiting("app")], "Pending"),
        ("Always", [], [running("app")], "Running"),
        ("Always", [], [exited("app", 1, waiting=True)], "Running"),
        ("Never", [], [exited("app", 0)], "Succeeded"),
        ("Never", [], [exited("app", 2)], "Failed"),
        ("OnFailure", [], [exited("app", 2, waiting=True)], "Running"),
        ("OnFailure", [], [exited("app", 0)], "Succeeded"),
        ("Never", [], [exited("a", 0), running("b")], "Running"),
        ("Always", [running("init")], [waiting("app", "PodInitializing")], "Pending"),
        ("Never", [exited("init", 1)], [waiting("app", "PodInitializing")], "Failed"),
        ("OnFailure", [exited("init", 1, waiting=True)], [waiting("app")], "Pending"),
        ("Always", [exited("init", 0)], [running("app")], "Running"),
    ],
)
def test_phase(policy, init, regular, phase):
    p = pod(policy, init=[r.name for r in init], containers=[r.name for r in regular])
    assert pod_phase(p, init, regular) == phase


def test_a_deleted_pod_ends_succeeded_or_failed_by_exit_codes():
    p = pod("Always", containers=("a", "b"))
    assert pod_phase(p, [], [exited("a", 0), exited("b", 0)], terminal=True) == "Succeeded"
    assert pod_phase(p, [], [exited("a", 0), exited("b", 143)], terminal=True) == "Failed"
    assert pod_phase(p, [], [exited("a", 0), exited("b", 143)]) == "Running"  # restarting


def conds(status):
    return {c["type"]: c for c in status["conditions"]}


def status_of(p, init, regular, **kw):
    return pod_status(
        p,
        init,
        regular,
        sandbox_ready=True,
        pod_ip="10.244.1.2",
        host_ip="10.244.0.1",
        start_time=T0,
        now=T1,
        **kw,
    )


def test_conditions_while_initializing_and_running():
    p = pod(init=("setup",), containers=("app", "side"))
    s = status_of(
        p,
        [running("setup")],
        [waiting("app", "PodInitializing"), waiting("side", "PodInitializing")],
    )
    c = conds(s)
    assert c["Initialized"]["status"] == "False"
    assert c["Initialized"]["reason"] == "ContainersNotInitialized"
    assert c["Initialized"]["message"] == "containers with incomplete status: [setup]"
    assert c["Ready"]["message"] == "containers with unready status: [app side]"
    assert c["PodReadyToStartContainers"]["status"] == "True"
    assert s["phase"] == "Pending"
    assert [x["name"] for x in s["initContainerStatuses"]] == ["setup"]

    s = status_of(p, [exited("setup", 0)], [running("app"), running("side", ready=False)])
    c = conds(s)
    assert c["Initialized"]["status"] == "True"
    assert c["ContainersReady"] == {
        **c["ContainersReady"],
        "status": "False",
        "reason": "ContainersNotReady",
        "message": "containers with unready status: [side]",
    }
    s = status_of(p, [exited("setup", 0)], [running("app"), running("side")])
    c = conds(s)
    assert c["Ready"]["status"] == "True"
    assert c["Ready"]["reason"] is None and c["Ready"]["message"] is None  # cleared in the patch
    assert s["podIPs"] == [{"ip": "10.244.1.2"}]
    assert s["observedGeneration"] == 1


def test_terminal_pods_report_pod_completed_or_failed():
    p = pod("Never")
    c = conds(status_of(p, [], [exited("app", 0)]))
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "PodCompleted")
    assert c["Initialized"]["reason"] == "PodCompleted"
    c = conds(status_of(p, [], [exited("app", 1)]))
    assert (c["ContainersReady"]["status"], c["ContainersReady"]["reason"]) == (
        "False",
        "PodFailed",
    )


def test_readiness_gates():
    p = pod(gates=("example.com/lb",), conditions=[{"type": "example.com/lb", "status": "False"}])
    c = conds(status_of(p, [], [running("app")]))
    assert c["ContainersReady"]["status"] == "True"
    assert c["Ready"]["reason"] == "ReadinessGatesNotReady"
    assert 'is not "True", but False' in c["Ready"]["message"]


def test_merge_keeps_transition_time_until_the_status_changes():
    old = [{"type": "Ready", "status": "False", "lastTransitionTime": T0}]
    new = {
        t: {"status": "False"}
        for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
    }
    merged = {c["type"]: c for c in merge_conditions(new, old, now=T1, generation=None)}
    assert merged["Ready"]["lastTransitionTime"] == T0
    assert merged["Initialized"]["lastTransitionTime"] == T1
    new["Ready"] = {"status": "True"}
    merged = {c["type"]: c for c in merge_conditions(new, old, now=T1, generation=None)}
    assert merged["Ready"]["lastTransitionTime"] == T1


def test_container_status_shape():
    r = exited("app", 137, waiting=True)
    r.restart_count, r.container_id, r.image_id = 3, "testkubelet://x", "repo@sha256:y"
    r.ready = True  # not running: never reported ready
    s = r.to_status()
    assert s["ready"] is False and s["started"] is False
    assert s["lastState"]["terminated"]["reason"] == "Error"
    assert s["restartCount"] == 3
    assert terminated_state(0, started_at=T0, finished_at=T1)["terminated"]["reason"] == "Completed"


def test_without_times_ignores_only_transition_times():
    p = pod()
    a = status_of(p, [], [running("app")])
    b = pod_status(
        p,
        [],
        [running("app")],
        sandbox_ready=True,
        pod_ip="10.244.1.2",
        host_ip="10.244.0.1",
        start_time=T0,
        now="2030-01-01T00:00:00Z",
    )
    assert a != b
    assert without_times(a) == without_times(b)
