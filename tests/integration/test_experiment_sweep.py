"""Experiments through kopf against the emulator: sweep order, rollup, deletion, shutdown.

The operator is ``benchop.operator.main`` with ``reconcile_runs=False``: the test plays the
BenchmarkRun controller, patching each child run's status (phase, then Succeeded with results)
itself, one run at a time, instead of running load-generator workers; nothing else writes the
children.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kopf
from kube.harness import (
    BENCHMARKRUNS,
    EXPERIMENTS,
    Kube,
    OperatorFactory,
    stop_operator,
    wait_for,
)

import benchop.operator.main  # noqa: F401 - registers every handler in kopf's default registry
from benchop.api.conditions import get_condition
from benchop.api.models import ExperimentMetrics
from benchop.core.names import CREATED_ANNOTATION as CREATED
from benchop.core.rollup import DEFAULT_CAP, rollup
from benchop.operator.settings import OperatorSettings

TEMPLATE: dict[str, Any] = {
    "target": {"url": "http://vllm.default.svc:8000/v1", "model": "m"},
    "load": {"mode": "concurrency", "concurrency": 1},
    "phases": {"profiling": {"requests": 10}},
}
METRICS_STATUS = "/experiments/{}/status"


def start_operator(
    kube: Kube, operator_task: OperatorFactory, *, refresh_interval_s: float
) -> tuple[kopf.Memo, asyncio.Task[None]]:
    """The operator with the Experiment controller alone; ``memo.experiments`` its services."""
    settings = OperatorSettings(reconcile_runs=False, refresh_interval_s=refresh_interval_s)
    memo = kopf.Memo(settings=settings, connection=kopf.ConnectionInfo(server=kube.url))
    return memo, operator_task(memo=memo)


def experiment(name: str, values: list[Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "template": TEMPLATE,
            "sweep": [{"path": "load.concurrency", "values": values}],
            **spec,
        },
    }


def results(c: int) -> dict[str, Any]:
    """Plausible results of a run at concurrency ``c`` (all different, so rows are checkable)."""
    lat = {"count": 100, "mean": 1.0, "std": 0.1, "min": 0.5, "max": 9.0, "p90": 2.0}
    return {
        "version": 1,
        "complete": True,
        "source": "pubsub",
        "durationS": 10.0,
        "requests": {"total": 100, "ok": 100, "failed": 0},
        "throughput": {"rps": 10.0 * c, "outputTokPerS": 640.0 * c, "inputTokPerS": 1.0},
        "ttftMs": {**lat, "p50": 20.0 + c, "p99": 40.0 + 3 * c},
        "itlMs": {**lat, "p50": 5.0 + c / 10, "p99": 9.0},
        "goodput": {"ratio": 1.0 - c / 100, "rps": 9.0 * c, "slo": {"ttftMs": 200}},
        "gpu": {"utilMean": 10.0 * c, "joulesPerOutputToken": 1.0 / c, "gpus": 1},
        "workers": 1,
    }


def metrics_patches(kube: Kube, name: str) -> int:
    """Status patches of experiment ``name`` that carried ``status.metrics`` (the refresher's)."""
    return sum(
        1
        for call in kube.emulator.calls
        if call.method == "PATCH"
        and call.path.endswith(METRICS_STATUS.format(name))
        and "metrics" in ((call.body or {}).get("status") or {})
        and call.status == 200
    )


async def children(kube: Kube) -> list[dict[str, Any]]:
    return await kube.client.list(BENCHMARKRUNS)


def created_runs(kube: Kube) -> list[str]:
    """Names of the BenchmarkRuns created, in the order the API server saw them."""
    return [
        c.body["metadata"]["name"]
        for c in kube.emulator.calls
        if c.method == "POST" and c.path.endswith("/benchmarkruns") and c.status == 201
    ]


def exp_status(kube: Kube, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (kube.emulator.read(EXPERIMENTS, name) or {}).get("status") or {}
    return status


def status_in(kube: Kube, name: str, phase: str) -> dict[str, Any] | None:
    """The experiment's status once its phase is ``phase`` (for ``wait_for``)."""
    st = exp_status(kube, name)
    return st if st.get("phase") == phase else None


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found = get_condition(status.get("conditions"), type_)
    assert found is not None, f"no {type_} condition in {status}"
    return found


def settled(kube: Kube, name: str) -> bool:
    """Finished, and kopf's last write is done: with the resync timer's filter no longer
    matching, kopf removes its finalizer (a concurrent write a test must not race with)."""
    body = kube.emulator.read(EXPERIMENTS, name) or {}
    phase = (body.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed") and not body["metadata"].get("finalizers")


def read_run(kube: Kube, name: str) -> dict[str, Any] | None:
    return kube.emulator.read(BENCHMARKRUNS, name)


async def finish(kube: Kube, run: str, phase: str = "Succeeded", c: int = 1) -> None:
    """Play the BenchmarkRun operator: the run goes through Profiling to ``phase``."""
    await kube.client.patch_status(BENCHMARKRUNS, run, {"phase": "Profiling"})
    status: dict[str, Any] = {"phase": phase}
    if phase == "Succeeded":
        status["results"] = results(c)
    await kube.client.patch_status(BENCHMARKRUNS, run, status)


async def test_four_point_sweep_runs_in_order_and_rolls_up(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    start_operator(kube, operator_task, refresh_interval_s=0.2)
    values = [1, 2, 4, 8]
    exp = await kube.client.create(EXPERIMENTS, experiment("sw", values))
    for i, c in enumerate(values):
        run = f"sw-{i}"
        body = await wait_for(lambda run=run: read_run(kube, run))  # type: ignore[misc]
        # maxParallel 1: this run is the only non-terminal one, the next does not exist yet.
        assert created_runs(kube) == [f"sw-{j}" for j in range(i + 1)]
        assert body["spec"]["load"]["concurrency"] == c
        assert body["metadata"]["labels"] == {
            "benchop.io/experiment": "sw",
            "benchop.io/load.concurrency": str(c),
        }
        owner = body["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "Experiment",
            exp["metadata"]["uid"],
            True,
        )
        await wait_for(
            lambda i=i: (
                (exp_status(kube, "sw").get("counts") or {})  # type: ignore[misc]
                == {"total": 4, "pending": 4 - i, "running": 0, "succeeded": i, "failed": 0}
            )
        )
        st = exp_status(kube, "sw")
        assert st["phase"] == "Running"
        assert cond(st, "Succeeded")["status"] == "Unknown"
        await finish(kube, run, c=c)
    st = await wait_for(lambda: status_in(kube, "sw", "Succeeded"))
    assert st["counts"] == {"total": 4, "pending": 0, "running": 0, "succeeded": 4, "failed": 0}
    succeeded = cond(st, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("True", "AllSucceeded")
    assert cond(st, "Failed")["status"] == "False"  # its mirror: never True on success
    assert cond(st, "Accepted")["status"] == "True"
    assert st["completionTime"] and st["startTime"] and st["observedGeneration"] == 1

    # The rollup lands: 4 rows equal to the children's results, best per objective.
    def rollup_done() -> dict[str, Any] | None:
        blob = exp_status(kube, "sw").get("metrics") or {}
        rows = blob.get("runs") or []
        return blob if [r.get("phase") for r in rows] == ["Succeeded"] * 4 else None

    blob = await wait_for(rollup_done)
    metrics = ExperimentMetrics.model_validate(blob)
    expected = rollup(await children(kube), cap=DEFAULT_CAP, now=metrics.refreshed_at or "")
    assert metrics == expected
    assert [(r.name, r.params, r.rps, r.ttft_p50) for r in metrics.runs] == [
        (f"sw-{i}", {"load.concurrency": c}, 10.0 * c, 20.0 + c) for i, c in enumerate(values)
    ]
    assert metrics.best == {
        "rps": "sw-3",
        "tokPerS": "sw-3",
        "ttftP50": "sw-0",
        "ttftP99": "sw-0",
        "itlP50": "sw-0",
        "goodput": "sw-0",
        "joulesPerToken": "sw-3",
    }
    assert created_runs(kube) == ["sw-0", "sw-1", "sw-2", "sw-3"]
    # One writer per field: a status patch is either the refresher's (metrics only) or the
    # reconciler's (no metrics).
    status_patches = [
        set((c.body or {}).get("status") or {})
        for c in kube.emulator.calls
        if c.method == "PATCH" and c.path.endswith(METRICS_STATUS.format("sw"))
    ]
    assert status_patches and all(
        keys == {"metrics"} or "metrics" not in keys for keys in status_patches
    )
    assert any(keys == {"metrics"} for keys in status_patches)


async def test_many_child_updates_in_one_interval_are_one_patch(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    # a 3600 s refresh interval: one interval = the whole test
    memo, _ = start_operator(kube, operator_task, refresh_interval_s=3600)
    await kube.client.create(EXPERIMENTS, experiment("many", [1, 2, 4, 8], maxParallel=4))
    await wait_for(lambda: len(created_runs(kube)) == 4)
    for i, c in enumerate([1, 2, 4, 8]):
        run = f"many-{i}"
        for phase in ("Initializing", "Warmup"):
            await kube.client.patch_status(BENCHMARKRUNS, run, {"phase": phase})
        await finish(kube, run, c=c)  # 4 status updates per run: 16 child events
    await wait_for(lambda: exp_status(kube, "many").get("phase") == "Succeeded")
    await wait_for(lambda: settled(kube, "many"))
    refresher = memo.experiments.refresher
    assert refresher.pending == {("default", "many")}
    assert metrics_patches(kube, "many") == 0
    lists_before = kube.emulator.count("GET", "/namespaces/default/benchmarkruns")
    await refresher.flush()
    assert metrics_patches(kube, "many") == 1
    # one read of the children for the experiment in this flush
    assert kube.emulator.count("GET", "/namespaces/default/benchmarkruns") == lists_before + 1
    blob = exp_status(kube, "many")["metrics"]
    assert [r["phase"] for r in blob["runs"]] == ["Succeeded"] * 4
    assert refresher.pending == set()
    await refresher.flush()  # nothing dirty: nothing read, nothing written
    assert metrics_patches(kube, "many") == 1


async def test_a_409_on_either_writer_is_retried_and_the_rollup_lands(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    # a 3600 s refresh interval: flushes driven by the test
    memo, _ = start_operator(kube, operator_task, refresh_interval_s=3600)
    await kube.client.create(EXPERIMENTS, experiment("cf", [1]))
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "cf-0"))
    await wait_for(lambda: exp_status(kube, "cf").get("counts"))
    path = METRICS_STATUS.format("cf")
    # The reconciler's write after the child ended conflicts once: it re-reads and retries.
    fault = kube.emulator.fail_next("PATCH", path, 409)
    await finish(kube, "cf-0", c=4)
    await wait_for(lambda: exp_status(kube, "cf").get("phase") == "Succeeded")
    await wait_for(lambda: settled(kube, "cf"))
    assert fault.times == 0 and kube.emulator.count("PATCH", path, status=409) == 1
    # The refresher's metrics patch conflicts once: the experiment goes back into the set ...
    refresher = memo.experiments.refresher
    fault = kube.emulator.fail_next("PATCH", path, 409)
    await refresher.flush()
    assert fault.times == 0 and refresher.conflicts == 1
    assert refresher.pending == {("default", "cf")} and "metrics" not in exp_status(kube, "cf")
    # ... and the next flush lands it.
    await refresher.flush()
    st = exp_status(kube, "cf")
    assert refresher.pending == set() and metrics_patches(kube, "cf") == 1
    assert st["metrics"]["runs"][0]["rps"] == 40.0
    assert st["metrics"]["best"]["rps"] == "cf-0"
    assert st["phase"] == "Succeeded"  # the reconciler's fields untouched by the refresher


async def test_deletion_mid_sweep_stops_creating_children(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    memo, _ = start_operator(kube, operator_task, refresh_interval_s=3600)
    await kube.client.create(EXPERIMENTS, experiment("del", [1, 2, 4, 8]))
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "del-0"))
    # Hold the object in "deleting" (deletionTimestamp set) with a foreign finalizer.
    held = (kube.emulator.read(EXPERIMENTS, "del") or {})["metadata"].get("finalizers") or []
    await kube.client.patch(EXPERIMENTS, "del", {"metadata": {"finalizers": [*held, "test/hold"]}})
    await kube.client.delete(EXPERIMENTS, "del")
    await wait_for(
        lambda: (
            (kube.emulator.read(EXPERIMENTS, "del") or {})
            .get("metadata", {})
            .get("deletionTimestamp")
        )
    )
    gets = kube.emulator.count("GET", "/experiments/del")
    await finish(kube, "del-0")  # a terminal child would start del-1 ...
    await wait_for(lambda: kube.emulator.count("GET", "/experiments/del") > gets)  # reconciled
    assert created_runs(kube) == ["del-0"]  # ... but not for a deleting experiment
    # Gone for good: the next child event finds 404 and creates nothing either.
    await kube.client.patch(EXPERIMENTS, "del", {"metadata": {"finalizers": None}})
    await wait_for(lambda: kube.emulator.read(EXPERIMENTS, "del") is None)
    gets = kube.emulator.count("GET", "/experiments/del", status=404)
    await kube.client.patch_status(BENCHMARKRUNS, "del-0", {"phase": "Failed"})
    await wait_for(lambda: kube.emulator.count("GET", "/experiments/del", status=404) > gets)
    assert created_runs(kube) == ["del-0"]
    # The refresher skips the deleted experiment: no error, nothing left queued.
    refresher = memo.experiments.refresher
    assert ("default", "del") in refresher.pending
    await refresher.flush()
    assert refresher.pending == set() and refresher.failures == 0 and refresher.patches == 0
    assert await kube.emulator.collect_garbage()  # the owner is gone: its child goes too
    assert kube.emulator.read(BENCHMARKRUNS, "del-0") is None


async def test_shutdown_flushes_pending_refreshes(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    # a 3600 s refresh interval: never flushes by itself
    memo, task = start_operator(kube, operator_task, refresh_interval_s=3600)
    await kube.client.create(EXPERIMENTS, experiment("sd", [1, 2], maxParallel=2))
    await wait_for(lambda: len(created_runs(kube)) == 2)
    await finish(kube, "sd-0", c=1)
    await finish(kube, "sd-1", c=2)
    await wait_for(lambda: exp_status(kube, "sd").get("phase") == "Succeeded")
    await wait_for(lambda: settled(kube, "sd"))
    assert memo.experiments.refresher.pending == {("default", "sd")}
    assert "metrics" not in exp_status(kube, "sd")
    await stop_operator(task)
    assert metrics_patches(kube, "sd") == 1
    blob = exp_status(kube, "sd")["metrics"]
    assert [r["name"] for r in blob["runs"]] == ["sd-0", "sd-1"]
    assert memo.experiments.refresher.pending == set()


async def test_invalid_spec_is_rejected_naming_the_field_without_retries(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    start_operator(kube, operator_task, refresh_interval_s=3600)
    bad_path = experiment("bp", [1])
    bad_path["spec"]["sweep"][0]["path"] = "load.concurrensy"
    bad_value = experiment("bv", [1, "eight"])
    bad_combo = experiment("bc", [4])  # each value valid alone, not together:
    bad_combo["spec"]["sweep"].insert(0, {"path": "load", "values": [{"mode": "rate", "rate": 5}]})
    for body in (bad_path, bad_value, bad_combo):
        await kube.client.create(EXPERIMENTS, body)
    for name, needle in (
        ("bp", "load.concurrensy"),
        ("bv", '"eight"'),
        ("bc", "concurrency is only allowed when mode is concurrency"),
    ):
        st = await wait_for(lambda name=name: status_in(kube, name, "Failed"))  # type: ignore[misc]
        accepted = cond(st, "Accepted")
        assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
        assert needle in accepted["message"] and "spec.sweep" in accepted["message"]
        assert cond(st, "Succeeded")["status"] == "False"
    patches = kube.emulator.count("PATCH", "/experiments/bv/status")
    # An unrelated event (a label) re-runs no handler that writes status: no retry loop.
    await kube.client.patch(EXPERIMENTS, "bv", {"metadata": {"labels": {"x": "y"}}})
    await kube.client.create(EXPERIMENTS, experiment("ok", [1]))  # a later, valid one works
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "ok-0"))
    assert kube.emulator.count("PATCH", "/experiments/bv/status") == patches
    assert created_runs(kube) == ["ok-0"]


async def test_abort_policy_stops_the_sweep(kube: Kube, operator_task: OperatorFactory) -> None:
    start_operator(kube, operator_task, refresh_interval_s=0.2)
    await kube.client.create(EXPERIMENTS, experiment("ab", [1, 2, 4], failurePolicy="abort"))
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "ab-0"))
    await finish(kube, "ab-0", phase="Failed")
    st = await wait_for(lambda: status_in(kube, "ab", "Failed"))
    succeeded = cond(st, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", "Aborted")
    assert (cond(st, "Failed")["status"], cond(st, "Failed")["reason"]) == ("True", "Aborted")
    assert st["counts"] == {"total": 3, "pending": 2, "running": 0, "succeeded": 0, "failed": 1}
    assert created_runs(kube) == ["ab-0"]
    # the refresher may first write the rollup of the child still Profiling: wait for the
    # one that follows its end
    blob = await wait_for(
        lambda: (
            (m := exp_status(kube, "ab").get("metrics")) and m["runs"][0]["phase"] == "Failed" and m
        )
    )
    assert blob["runs"][0]["phase"] == "Failed" and blob["best"] == {}


async def test_restart_resumes_the_sweep_without_duplicates(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    _, task = start_operator(kube, operator_task, refresh_interval_s=0.2)
    await kube.client.create(EXPERIMENTS, experiment("rs", [1, 2]))
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "rs-0"))
    await stop_operator(task)
    await finish(kube, "rs-0")  # while no operator runs
    start_operator(kube, operator_task, refresh_interval_s=0.2)  # on.resume reconciles
    await wait_for(lambda: kube.emulator.read(BENCHMARKRUNS, "rs-1"))
    await finish(kube, "rs-1")
    await wait_for(lambda: exp_status(kube, "rs").get("phase") == "Succeeded")
    assert created_runs(kube) == ["rs-0", "rs-1"]


async def test_spec_edits_extend_the_sweep_or_are_refused(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    start_operator(kube, operator_task, refresh_interval_s=3600)
    await kube.client.create(EXPERIMENTS, experiment("ed", [1]))
    await wait_for(lambda: read_run(kube, "ed-0"))
    await finish(kube, "ed-0")
    await wait_for(lambda: status_in(kube, "ed", "Succeeded"))
    # More values on the (last) axis: existing points unchanged, the new one runs.
    sweep = [{"path": "load.concurrency", "values": [1, 2]}]
    await kube.client.patch(EXPERIMENTS, "ed", {"spec": {"sweep": sweep}})
    body = await wait_for(lambda: read_run(kube, "ed-1"))
    assert body["spec"]["load"]["concurrency"] == 2
    st = await wait_for(lambda: status_in(kube, "ed", "Running"))
    assert st["observedGeneration"] == 2 and "completionTime" not in st
    await finish(kube, "ed-1", c=2)
    st = await wait_for(lambda: status_in(kube, "ed", "Succeeded"))
    assert st["counts"]["succeeded"] == 2 and cond(st, "Succeeded")["reason"] == "AllSucceeded"
    # Changing a point whose run exists is refused, naming the run; nothing new starts.
    sweep = [{"path": "load.concurrency", "values": [3, 2, 4]}]
    await kube.client.patch(EXPERIMENTS, "ed", {"spec": {"sweep": sweep}})
    st = await wait_for(
        lambda: (s := status_in(kube, "ed", "Failed")) and s.get("observedGeneration") == 3 and s
    )
    accepted = cond(st, "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "SpecChanged")
    assert "ed-0" in accepted["message"]
    assert created_runs(kube) == ["ed-0", "ed-1"]


# --------------------------------------------------------------------------- edits by identity

PROMPT = "workload.promptTokens"


async def finish_all(kube: Kube) -> None:
    """Play the BenchmarkRun operator for every child that has no phase yet."""
    for run in await children(kube):
        if not (run.get("status") or {}).get("phase"):
            await finish(kube, run["metadata"]["name"])


def points_of(runs: list[dict[str, Any]]) -> dict[tuple[int, int], str]:
    """(concurrency, promptTokens) -> child name; each child's spec is its params."""
    out = {}
    for run in runs:
        params = json.loads(run["metadata"]["annotations"]["benchop.io/params"])
        c, p = params["load.concurrency"], params[PROMPT]
        assert (run["spec"]["load"]["concurrency"], run["spec"]["workload"]["promptTokens"]) == (
            c,
            p,
        )
        assert (c, p) not in out, f"two children of point {(c, p)}"
        out[(c, p)] = run["metadata"]["name"]
    return out


async def test_extending_any_axis_of_a_multi_axis_sweep_runs_only_the_new_points(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    memo, _ = start_operator(kube, operator_task, refresh_interval_s=3600)

    def sweep(cs: list[int], ps: list[int]) -> list[dict[str, Any]]:
        return [{"path": "load.concurrency", "values": cs}, {"path": PROMPT, "values": ps}]

    body = experiment("mx", [])
    body["spec"] = {**body["spec"], "sweep": sweep([1, 2], [128, 256]), "maxParallel": 30}
    await kube.client.create(EXPERIMENTS, body)
    generation = 1
    edits = [
        ([1, 2], [128, 256, 512]),  # the last axis: point 2 was (2,128), is (1,512) now
        ([1, 2, 4], [128, 256, 512]),  # the first axis
        ([1, 2, 4, 8], [128, 256, 512, 1024]),  # both
    ]
    before: dict[tuple[int, int], str] = {}
    for step, (cs, ps) in enumerate([([1, 2], [128, 256]), *edits]):
        if step:
            await kube.client.patch(EXPERIMENTS, "mx", {"spec": {"sweep": sweep(cs, ps)}})
            generation += 1
        total = len(cs) * len(ps)
        await wait_for(lambda total=total: len(created_runs(kube)) == total)  # type: ignore[misc]
        await finish_all(kube)
        st = await wait_for(
            lambda g=generation: (  # type: ignore[misc]
                (s := status_in(kube, "mx", "Succeeded")) and s["observedGeneration"] == g and s
            )
        )
        assert st["counts"] == {
            "total": total, "pending": 0, "running": 0, "succeeded": total, "failed": 0
        }  # fmt: skip
        assert cond(st, "Accepted")["status"] == "True"
        now = points_of(await children(kube))
        assert set(now) == {(c, p) for c in cs for p in ps}
        assert {k: now[k] for k in before} == before  # old runs kept, none re-run
        assert len(created_runs(kube)) == len(set(created_runs(kube))) == total
        before = now
    # Names: <exp>-<index at creation>, a point key suffix when that name was taken.
    assert before[(1, 512)].startswith("mx-2-") and before[(2, 512)] == "mx-5"
    assert before[(2, 128)] == "mx-2" and before[(4, 128)] == "mx-6"
    # The rollup's rows follow the current sweep (not the indices at creation).
    await memo.experiments.refresher.flush()
    rows = exp_status(kube, "mx")["metrics"]["runs"]
    assert [(r["params"]["load.concurrency"], r["params"][PROMPT]) for r in rows] == [
        (c, p) for c in [1, 2, 4, 8] for p in [128, 256, 512, 1024]
    ]


async def test_extending_a_single_axis_sweep(kube: Kube, operator_task: OperatorFactory) -> None:
    start_operator(kube, operator_task, refresh_interval_s=3600)
    await kube.client.create(EXPERIMENTS, experiment("one", [1, 2], maxParallel=4))
    await wait_for(lambda: len(created_runs(kube)) == 2)
    await finish_all(kube)
    await wait_for(lambda: status_in(kube, "one", "Succeeded"))
    sweep = [{"path": "load.concurrency", "values": [1, 2, 4, 8]}]
    await kube.client.patch(EXPERIMENTS, "one", {"spec": {"sweep": sweep}})
    await wait_for(lambda: len(created_runs(kube)) == 4)
    await finish_all(kube)
    st = await wait_for(
        lambda: (s := status_in(kube, "one", "Succeeded")) and s["observedGeneration"] == 2 and s
    )
    assert st["counts"]["succeeded"] == 4
    assert created_runs(kube) == ["one-0", "one-1", "one-2", "one-3"]
    assert (read_run(kube, "one-3") or {})["spec"]["load"]["concurrency"] == 8


async def test_a_running_child_deleted_by_hand_is_not_recreated(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    start_operator(kube, operator_task, refresh_interval_s=3600)
    await kube.client.create(EXPERIMENTS, experiment("hd", [1, 2, 4]))
    await wait_for(lambda: read_run(kube, "hd-0"))
    await finish(kube, "hd-0")
    await wait_for(lambda: read_run(kube, "hd-1"))

    def recorded() -> set[str]:
        body = kube.emulator.read(EXPERIMENTS, "hd") or {}
        return set((body["metadata"].get("annotations") or {}).get(CREATED, "").split(","))

    await wait_for(lambda: len(recorded()) == 2)  # the high-water set has hd-1
    await kube.client.patch_status(BENCHMARKRUNS, "hd-1", {"phase": "Profiling"})
    await kube.client.delete(BENCHMARKRUNS, "hd-1")  # the highest index, running
    await wait_for(lambda: read_run(kube, "hd-2"))  # the next point starts instead
    st = await wait_for(lambda: (s := exp_status(kube, "hd")).get("counts", {}).get("failed") and s)
    assert st["counts"] == {"total": 3, "pending": 1, "running": 0, "succeeded": 1, "failed": 1}
    await finish(kube, "hd-2")
    st = await wait_for(lambda: status_in(kube, "hd", "Failed"))
    succeeded = cond(st, "Succeeded")
    assert succeeded["reason"] == "SomeFailed" and "deleted by hand: 1" in succeeded["message"]
    assert created_runs(kube) == ["hd-0", "hd-1", "hd-2"]
    assert read_run(kube, "hd-1") is None


async def test_spec_changed_keeps_counting_until_the_running_children_end(
    kube: Kube, operator_task: OperatorFactory
) -> None:
    start_operator(kube, operator_task, refresh_interval_s=3600)
    await kube.client.create(EXPERIMENTS, experiment("sc", [1, 2]))
    await wait_for(lambda: read_run(kube, "sc-0"))
    await kube.client.patch_status(BENCHMARKRUNS, "sc-0", {"phase": "Profiling"})
    sweep = [{"path": "load.concurrency", "values": [3, 2]}]
    await kube.client.patch(EXPERIMENTS, "sc", {"spec": {"sweep": sweep}})
    st = await wait_for(
        lambda: (
            (s := exp_status(kube, "sc")).get("observedGeneration") == 2
            and (s.get("counts") or {}).get("running") == 1
            and s
        )
    )
    assert st["phase"] == "Running" and "completionTime" not in st
    assert cond(st, "Accepted")["reason"] == "SpecChanged"
    assert (cond(st, "Succeeded")["status"], cond(st, "Succeeded")["reason"]) == (
        "Unknown",
        "SpecChanged",
    )
    await finish(kube, "sc-0")  # the run ends: counts follow, the experiment ends Failed
    st = await wait_for(lambda: status_in(kube, "sc", "Failed"))
    assert st["counts"] == {"total": 1, "pending": 0, "running": 0, "succeeded": 1, "failed": 0}
    assert st["completionTime"] and cond(st, "Succeeded")["status"] == "False"
    assert created_runs(kube) == ["sc-0"]
