"""The Argo CD health check (charts/benchop/argocd/health.lua), run as Lua against sample objects.

Argo CD runs health scripts in gopher-lua, a Lua 5.1, with ``obj`` a global table built from the
object's JSON (every number a float64). The tests run the exact file the chart ships under
lupa's Lua 5.1 and under its newest Lua, with numbers converted to floats the same way.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

SCRIPT = (
    Path(__file__).resolve().parents[2] / "charts" / "benchop" / "argocd" / "health.lua"
).read_text()
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def to_lua(lua: Any, value: Any) -> Any:
    """Python JSON value -> Lua value the way Argo CD builds ``obj`` (numbers are floats)."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value])
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@pytest.fixture(params=["lua51", "lua55"])
def health(request: pytest.FixtureRequest) -> Any:
    module = importlib.import_module(f"lupa.{request.param}")

    def run(obj: dict[str, Any]) -> dict[str, str]:
        lua = module.LuaRuntime()
        lua.globals().obj = to_lua(lua, obj)
        hs = lua.execute(SCRIPT)
        out = dict(hs.items())
        assert set(out) == {"status", "message"}
        assert out["status"] in ARGO_STATUSES
        return out

    return run


def cond(
    type_: str, status: str, reason: str = "", message: str = "", gen: int = 1
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": gen,
    }


def run_obj(
    status: dict[str, Any] | None, generation: int = 1, kind: str = "BenchmarkRun"
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "llama8b-c32", "namespace": "bench", "generation": generation},
        "spec": {"load": {"mode": "concurrency", "concurrency": 32}},
    }
    if status is not None:
        obj["status"] = status
    return obj


RUNNING = [cond("Accepted", "True", "Valid"), cond("Succeeded", "Unknown", "Running")]


def test_no_status_is_progressing(health: Any) -> None:
    assert health(run_obj(None)) == {
        "status": "Progressing",
        "message": "waiting for the operator",
    }


def test_pending_is_progressing(health: Any) -> None:
    hs = health(run_obj({"phase": "Pending", "observedGeneration": 1, "conditions": []}))
    assert hs == {"status": "Progressing", "message": "phase Pending"}


@pytest.mark.parametrize("phase", ["Initializing", "Warmup", "Profiling", "Finalizing"])
def test_running_is_progressing(health: Any, phase: str) -> None:
    hs = health(run_obj({"phase": phase, "observedGeneration": 1, "conditions": RUNNING}))
    assert hs == {"status": "Progressing", "message": f"phase {phase}"}


def test_succeeded_is_healthy(health: Any) -> None:
    conds = [
        cond("Accepted", "True"),
        cond("Succeeded", "True", "Completed", "64/64 requests ok"),
    ]
    hs = health(run_obj({"phase": "Succeeded", "observedGeneration": 1, "conditions": conds}))
    assert hs == {"status": "Healthy", "message": "64/64 requests ok"}


def test_failed_is_degraded_with_reason_and_message(health: Any) -> None:
    conds = [
        cond("Accepted", "True"),
        cond("Succeeded", "False", "JobFailed", "worker 1: OOMKilled"),
    ]
    hs = health(run_obj({"phase": "Failed", "observedGeneration": 1, "conditions": conds}))
    assert hs == {"status": "Degraded", "message": "JobFailed: worker 1: OOMKilled"}


def test_invalid_spec_is_degraded(health: Any) -> None:
    conds = [
        cond("Accepted", "False", "InvalidSpec", "spec.load.concurrency: required"),
        cond("Succeeded", "False", "InvalidSpec"),
    ]
    hs = health(run_obj({"phase": "Failed", "observedGeneration": 1, "conditions": conds}))
    assert hs == {"status": "Degraded", "message": "InvalidSpec"}


def test_stale_generation_is_progressing_even_if_succeeded(health: Any) -> None:
    conds = [cond("Succeeded", "True", "Completed", "done", gen=2)]
    status = {"phase": "Succeeded", "observedGeneration": 2, "conditions": conds}
    hs = health(run_obj(status, generation=3))
    assert hs == {
        "status": "Progressing",
        "message": "waiting for the operator to observe generation 3",
    }


def test_status_without_observed_generation_is_stale(health: Any) -> None:
    hs = health(run_obj({"phase": "Succeeded", "conditions": [cond("Succeeded", "True")]}))
    assert hs["status"] == "Progressing"
    assert hs["message"] == "waiting for the operator to observe generation 1"


def test_condition_from_an_older_generation_is_ignored(health: Any) -> None:
    conds = [cond("Succeeded", "False", "JobFailed", "old failure", gen=1)]
    hs = health(run_obj({"phase": "Pending", "observedGeneration": 2, "conditions": conds}, 2))
    assert hs == {"status": "Progressing", "message": "phase Pending"}


def test_phase_is_the_fallback_without_conditions(health: Any) -> None:
    assert health(run_obj({"phase": "Failed", "observedGeneration": 1}))["status"] == "Degraded"
    assert health(run_obj({"phase": "Succeeded", "observedGeneration": 1}))["status"] == "Healthy"


def test_experiment_uses_the_same_rules(health: Any) -> None:
    done = {
        "phase": "Succeeded",
        "observedGeneration": 4,
        "conditions": [cond("Succeeded", "True", "AllRunsSucceeded", "4/4 runs", gen=4)],
    }
    assert health(run_obj(done, 4, kind="Experiment")) == {
        "status": "Healthy",
        "message": "4/4 runs",
    }
    running = {"phase": "Running", "observedGeneration": 4, "conditions": []}
    assert health(run_obj(running, 4, kind="Experiment"))["status"] == "Progressing"


def test_failed_condition_is_degraded(health: Any) -> None:
    """What the operator writes on a failure: Succeeded=False and its mirror Failed=True."""
    conds = [
        cond("Accepted", "True"),
        cond("Succeeded", "False", "JobFailed", "worker 1: OOMKilled"),
        cond("Failed", "True", "JobFailed", "worker 1: OOMKilled"),
    ]
    hs = health(run_obj({"phase": "Failed", "observedGeneration": 1, "conditions": conds}))
    assert hs == {"status": "Degraded", "message": "JobFailed: worker 1: OOMKilled"}
    # Failed=True alone (a status some other writer trimmed) is still a failure
    only = [cond("Failed", "True", "Aborted", "stopped after 2 failed runs")]
    hs = health(run_obj({"phase": "Failed", "observedGeneration": 1, "conditions": only}))
    assert hs == {"status": "Degraded", "message": "Aborted: stopped after 2 failed runs"}


def test_success_with_failed_false_is_healthy(health: Any) -> None:
    conds = [
        cond("Succeeded", "True", "Completed", "64/64 requests ok"),
        cond("Failed", "False", "Completed", "64/64 requests ok"),
    ]
    hs = health(run_obj({"phase": "Succeeded", "observedGeneration": 1, "conditions": conds}))
    assert hs == {"status": "Healthy", "message": "64/64 requests ok"}


def test_failed_from_an_older_generation_is_ignored(health: Any) -> None:
    conds = [cond("Failed", "True", "JobFailed", "old", gen=1), cond("Succeeded", "Unknown", gen=2)]
    hs = health(run_obj({"phase": "Running", "observedGeneration": 2, "conditions": conds}, 2))
    assert hs == {"status": "Progressing", "message": "phase Running"}
