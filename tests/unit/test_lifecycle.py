"""Pure status transitions and the status merge diff (core), and the operator's pod/Job
readings and watchdog deadline."""

from __future__ import annotations

from typing import Any

from benchop.api import conditions as c
from benchop.api.models import ExperimentPhase, Phase
from benchop.core import lifecycle as t
from benchop.core.lifecycle import is_terminal, merge_diff
from benchop.core.names import TERMINAL_PHASES
from benchop.operator.pods import job_view, pod_view

NOW = "2024-05-01T12:00:00Z"
LATER = "2024-05-01T12:05:00Z"


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = c.get_condition(status.get("conditions"), type_)
    assert found is not None, type_
    return found


def test_accepted_sets_conditions_phase_start_time_with_generation() -> None:
    st = t.accepted({}, generation=3, now=NOW)
    assert st is not None
    assert st["phase"] == "Initializing" and st["startTime"] == NOW
    assert st["observedGeneration"] == 3
    assert cond(st, c.ACCEPTED)["status"] == "True"
    assert cond(st, c.SUCCEEDED)["status"] == "Unknown"
    assert cond(st, c.WORKERS_READY)["status"] == "Unknown"
    assert all(x["observedGeneration"] == 3 for x in st["conditions"])
    # idempotent on resume: same status back (no write), startTime kept
    again = t.accepted(st, generation=3, now=LATER)
    assert again is not None and again["startTime"] == NOW
    assert [x["lastTransitionTime"] for x in again["conditions"]] == [
        x["lastTransitionTime"] for x in st["conditions"]
    ]


def test_accepted_does_not_move_a_later_phase_back() -> None:
    st = t.accepted({"phase": "Profiling"}, generation=1, now=NOW)
    assert st is not None and st["phase"] == "Profiling"


def test_rejected_names_the_field_and_fails() -> None:
    st = t.rejected({}, generation=1, message="spec.load.concurrency: required", now=NOW)
    a = cond(st, c.ACCEPTED)
    assert (a["status"], a["reason"]) == ("False", "InvalidSpec")
    assert "spec.load.concurrency" in a["message"]
    s = cond(st, c.SUCCEEDED)
    assert (s["status"], s["reason"]) == ("False", "InvalidSpec")
    assert st["phase"] == "Failed" and st["completionTime"] == NOW


def test_terminal_runs_are_never_reopened() -> None:
    done = t.rejected({}, generation=1, message="x", now=NOW)
    assert t.accepted(done, generation=1, now=NOW) is None
    assert t.workers_ready(done, generation=1, running=1, workers=1, warmup=False) is None
    assert t.gate_closed(done, generation=1, boundary="START", record={}) is None
    assert t.failed(done, generation=1, reason="R", message="m", now=NOW) is None
    assert t.with_live(done, {"requests": 1}) is None


def test_gates_move_conditions_and_phase() -> None:
    st = t.accepted({}, generation=1, now=NOW)
    assert st is not None
    st = t.workers_ready(st, generation=1, running=2, workers=2, warmup=True)
    assert st is not None and st["phase"] == "Warmup"
    rec = {"agents": ["a1"], "missing": [], "baseline": True, "simulated": False}
    st = t.gate_closed(st, generation=1, boundary="START", record=rec)
    assert st is not None and st["phase"] == "Profiling"
    assert cond(st, c.BASELINE_START_CAPTURED)["status"] == "True"
    assert cond(st, c.PROFILING)["status"] == "True"
    assert cond(st, c.TELEMETRY_DEGRADED)["status"] == "False"
    assert st["gates"]["START"] == rec
    end = {"agents": ["a1"], "missing": ["a2"], "baseline": True, "simulated": False}
    st = t.gate_closed(st, generation=1, boundary="END", record=end)
    assert st is not None and st["phase"] == "Finalizing"
    assert cond(st, c.PROFILING)["status"] == "False"
    deg = cond(st, c.TELEMETRY_DEGRADED)
    assert deg["status"] == "True" and "a2" in deg["message"]
    captured = cond(st, c.BASELINE_END_CAPTURED)
    assert captured["reason"] == "TimedOut" and "a2" in captured["message"]


def test_simulated_gpus_degrade_telemetry() -> None:
    rec = {"agents": ["a1"], "missing": [], "simulated": True}
    st = t.gate_closed({}, generation=1, boundary="START", record=rec)
    assert st is not None and cond(st, c.TELEMETRY_DEGRADED)["reason"] == "Simulated"


def test_an_agent_missing_at_start_is_not_hidden_by_simulated_gpus_at_end() -> None:
    # found by hack/fault_suite.py (operator-deleted-gate): START timed out without the agent,
    # END had it with simulated GPUs, and the run ended TelemetryDegraded=Simulated
    start = {"agents": ["a1"], "missing": ["a1"], "simulated": True}
    st = t.gate_closed({}, generation=1, boundary="START", record=start)
    assert st is not None and cond(st, c.TELEMETRY_DEGRADED)["reason"] == "AgentMissing"
    end = {"agents": ["a1"], "missing": [], "simulated": True}
    st = t.gate_closed(st, generation=1, boundary="END", record=end)
    assert st is not None
    deg = cond(st, c.TELEMETRY_DEGRADED)
    assert (deg["status"], deg["reason"]) == ("True", "AgentMissing")
    assert "START: missing agents a1" in deg["message"]
    # and the other way round: simulated at START, missing at END
    st = t.gate_closed({}, generation=1, boundary="START", record=end)
    assert st is not None
    st = t.gate_closed(st, generation=1, boundary="END", record={**start})
    assert st is not None and cond(st, c.TELEMETRY_DEGRADED)["reason"] == "AgentMissing"


def test_failed_closes_open_conditions_and_keeps_partial_results() -> None:
    st = t.gate_closed({}, generation=2, boundary="START", record={"agents": []})
    assert st is not None
    out = t.failed(
        st,
        generation=2,
        reason="BackoffLimitExceeded",
        message="Job failed",
        now=NOW,
        results={"complete": False},
        results_reason="LatestLiveSnapshots",
    )
    assert out is not None and out["phase"] == "Failed" and out["completionTime"] == NOW
    assert cond(out, c.SUCCEEDED)["reason"] == "BackoffLimitExceeded"
    assert cond(out, c.PROFILING)["status"] == "False"
    assert cond(out, c.BASELINE_END_CAPTURED)["status"] == "False"
    assert cond(out, c.RESULTS_AVAILABLE)["reason"] == "LatestLiveSnapshots"
    assert out["results"] == {"complete": False}


def test_finished_success_and_all_failed() -> None:
    res = {"complete": True, "requests": {"total": 4, "ok": 4, "failed": 0}}
    ok = t.finished(
        {},
        generation=1,
        results=res,
        results_reason="PubSubComplete",
        succeeded=True,
        reason="Completed",
        message="4 of 4",
        now=NOW,
    )
    assert ok is not None and ok["phase"] == "Succeeded" and ok["results"] == res
    assert cond(ok, c.RESULTS_AVAILABLE)["reason"] == "PubSubComplete"
    assert cond(ok, c.SUCCEEDED)["status"] == "True"
    bad = t.finished(
        {},
        generation=1,
        results=res,
        results_reason="PubSubComplete",
        succeeded=False,
        reason="TargetUnreachable",
        message="m",
        now=NOW,
    )
    assert bad is not None and bad["phase"] == "Failed"
    assert cond(bad, c.SUCCEEDED)["reason"] == "TargetUnreachable"


def pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p0",
            "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
        },
        "status": status,
    }


def test_pod_views() -> None:
    running = pod_view(
        pod(phase="Running", containerStatuses=[{"state": {"running": {}}, "restartCount": 0}])
    )
    assert running.running and running.index == 1 and running.stuck_reason is None
    pull = pod_view(
        pod(
            phase="Pending",
            containerStatuses=[{"state": {"waiting": {"reason": "ImagePullBackOff"}}}],
        )
    )
    assert pull.stuck_reason == "ImagePullFailed" and "ImagePullBackOff" in pull.stuck_message
    oom = pod_view(
        pod(
            phase="Running",
            containerStatuses=[
                {
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                    "restartCount": 1,
                }
            ],
        )
    )
    assert oom.stuck_reason == "OOMKilled"
    one_crash = pod_view(
        pod(
            phase="Running",
            containerStatuses=[
                {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "restartCount": 1}
            ],
        )
    )
    assert one_crash.stuck_reason is None  # a killed worker restarts and resumes
    loop = pod_view(
        pod(
            phase="Running",
            containerStatuses=[
                {"state": {"waiting": {"reason": "CrashLoopBackOff"}}, "restartCount": 3}
            ],
        )
    )
    assert loop.stuck_reason == "CrashLoopBackOff"
    unsched = pod_view(
        pod(
            phase="Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes",
                }
            ],
        )
    )
    assert unsched.stuck_reason == "Unschedulable" and "0/3 nodes" in unsched.stuck_message
    done = pod_view(
        pod(
            phase="Succeeded",
            containerStatuses=[
                {"state": {"terminated": {"exitCode": 0, "message": '{"run":"x"}'}}}
            ],
        )
    )
    assert done.termination_message == '{"run":"x"}' and not done.running


def test_job_views() -> None:
    failed = job_view(
        {
            "status": {
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                        "message": "too long",
                    }
                ]
            }
        }
    )
    assert (failed.state, failed.reason, failed.message) == (
        "Failed",
        "DeadlineExceeded",
        "too long",
    )
    assert job_view({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}).state == (
        "Complete"
    )
    assert job_view({"status": {}}).state is None


def test_merge_diff_is_a_minimal_rfc7386_patch() -> None:
    old = {"phase": "A", "live": {"rps": 1, "x": 2}, "conditions": [1], "gone": 1}
    new = {"phase": "A", "live": {"rps": 2}, "conditions": [1, 2], "added": {"k": 1}}
    assert merge_diff(old, new) == {
        "added": {"k": 1},
        "conditions": [1, 2],
        "gone": None,
        "live": {"rps": 2, "x": None},
    }
    assert merge_diff(new, new) == {}


def test_telemetry_without_agents_is_degraded_unless_baselines_are_off() -> None:
    rec = {"agents": [], "baseline": False}  # no agent: no handshake ran, though asked for
    none = t.gate_closed({}, generation=1, boundary="START", record=rec)
    assert none is not None and cond(none, c.TELEMETRY_DEGRADED)["reason"] == "NoAgents"
    assert "no agent" in cond(none, c.BASELINE_START_CAPTURED)["message"]
    off = t.gate_closed({}, generation=1, boundary="START", record=rec, requested=False)
    assert off is not None and c.get_condition(off["conditions"], c.TELEMETRY_DEGRADED) is None
    assert "disabled" in cond(off, c.BASELINE_START_CAPTURED)["message"]


def test_watchdog_deadline() -> None:
    from benchop.api.models import BenchmarkRunSpec
    from benchop.operator.handlers.runs import deadline_s
    from benchop.operator.settings import OperatorSettings

    base = {
        "target": {"url": "http://m/v1", "model": "m"},
        "load": {"mode": "concurrency", "concurrency": 1},
    }
    settings = OperatorSettings(default_deadline_s=3600, deadline_grace_s=60)

    def spec(**kw: Any) -> BenchmarkRunSpec:
        return BenchmarkRunSpec.model_validate({**base, **kw})

    assert deadline_s(settings, spec(phases={"profiling": {"requests": 5}})) == 3600
    assert deadline_s(settings, spec(phases={"profiling": {"duration": "3h"}})) == 2 * 10800 + 600
    with_deadline = spec(phases={"profiling": {"duration": "3h"}}, activeDeadlineSeconds=100)
    assert deadline_s(settings, with_deadline) == 160


def _finished(status: dict[str, Any], prometheus_error: str | None) -> dict[str, Any]:
    out = t.finished(
        status,
        generation=1,
        results={"complete": True},
        results_reason="PubSubComplete",
        succeeded=True,
        reason="Completed",
        message="4 of 4",
        now=NOW,
        prometheus_error=prometheus_error,
    )
    assert out is not None
    return out


def test_prometheus_error_degrades_telemetry_but_never_fails_the_run() -> None:
    simulated = t.gate_closed(
        {}, generation=1, boundary="END", record={"agents": ["a1"], "simulated": True}
    )
    assert simulated is not None
    err = "cannot connect to Prometheus at http://127.0.0.1:1: connection refused"
    out = _finished(simulated, err)
    assert out["phase"] == "Succeeded" and cond(out, c.SUCCEEDED)["status"] == "True"
    degraded = cond(out, c.TELEMETRY_DEGRADED)
    assert (degraded["status"], degraded["reason"]) == ("True", "PrometheusUnavailable")
    assert err in degraded["message"] and "simulated" in degraded["message"]  # both said
    assert degraded["observedGeneration"] == 1
    # no error: the condition is left as the gates set it; no Prometheus: no condition at all
    assert cond(_finished(simulated, None), c.TELEMETRY_DEGRADED)["reason"] == "Simulated"
    assert c.get_condition(_finished({}, None).get("conditions"), c.TELEMETRY_DEGRADED) is None
    failed = t.failed(
        {}, generation=1, reason="DeadlineExceeded", message="m", now=NOW, prometheus_error=err
    )
    assert failed is not None and cond(failed, c.SUCCEEDED)["reason"] == "DeadlineExceeded"
    assert cond(failed, c.TELEMETRY_DEGRADED)["reason"] == "PrometheusUnavailable"


def test_terminal_phases_are_those_of_both_kinds() -> None:
    assert {Phase.SUCCEEDED, Phase.FAILED} == TERMINAL_PHASES
    assert {ExperimentPhase.SUCCEEDED, ExperimentPhase.FAILED} == TERMINAL_PHASES
    assert is_terminal({"phase": "Failed"}) and not is_terminal({"phase": "Running"})
    assert not is_terminal(None) and not is_terminal({})


def _terminal_statuses() -> dict[str, dict[str, Any]]:
    """One status per way a run or an Experiment can end, from the public transitions."""
    from benchop.api.models import ExperimentSpec
    from benchop.core.children import plan_sweep

    res = {"complete": True}
    running = t.accepted({}, generation=1, now=NOW)
    assert running is not None
    exp = ExperimentSpec.model_validate(
        {
            "template": {
                "target": {"model": "m"},
                "load": {"concurrency": 1},
                "phases": {"profiling": {"requests": 1}},
            },
            "sweep": [{"path": "load.concurrency", "values": [1, 2]}],
        }
    )
    counts = {"total": 1, "pending": 0, "running": 0, "succeeded": 0, "failed": 1}
    out = {
        "rejected": t.rejected(running, generation=1, message="spec.x: bad", now=NOW),
        "failed": t.failed(running, generation=1, reason="JobFailed", message="m", now=NOW),
        "finished-ok": t.finished(running, generation=1, results=res, results_reason="r",
                                  succeeded=True, reason="Completed", message="ok", now=NOW),
        "finished-bad": t.finished(running, generation=1, results=res, results_reason="r",
                                   succeeded=False, reason="NoRequests", message="m", now=NOW),
        "exp-rejected": t.experiment_rejected({}, generation=1, reason="InvalidSpec",
                                              message="m", now=NOW, counts=counts),
        "exp-ok": t.experiment_progressed(
            {}, generation=1, plan=plan_sweep(exp, {0: "Succeeded", 1: "Succeeded"}, 2), now=NOW
        ),
        "exp-bad": t.experiment_progressed(
            {}, generation=1, plan=plan_sweep(exp, {0: "Succeeded", 1: "Failed"}, 2), now=NOW
        ),
    }  # fmt: skip
    return {k: v for k, v in out.items() if v is not None}


def test_failed_mirrors_succeeded_so_kubectl_wait_ends_both_ways() -> None:
    ended = _terminal_statuses()
    assert len(ended) == 7
    for name, st in ended.items():
        succeeded, failed = cond(st, c.SUCCEEDED), cond(st, c.FAILED)
        assert is_terminal(st), name
        # exactly one of the two is True, and it is the one the phase names
        assert {succeeded["status"], failed["status"]} == {"True", "False"}, name
        assert (failed["status"] == "True") == (st["phase"] == "Failed"), name
        assert (failed["reason"], failed["message"]) == (succeeded["reason"], succeeded["message"])
        assert failed["observedGeneration"] == 1
    assert cond(ended["failed"], c.FAILED)["reason"] == "JobFailed"
    # while running, both are Unknown: `kubectl wait --for=condition=Failed` keeps waiting
    running = t.accepted({}, generation=1, now=NOW)
    assert running is not None
    assert cond(running, c.SUCCEEDED)["status"] == cond(running, c.FAILED)["status"] == "Unknown"
    active = t.experiment_rejected(
        {}, generation=1, reason="SpecChanged", message="m", now=NOW,
        counts={"total": 1, "pending": 0, "running": 1, "succeeded": 0, "failed": 0},
    )  # fmt: skip
    assert cond(active, c.FAILED)["status"] == "Unknown" and active["phase"] == "Running"
