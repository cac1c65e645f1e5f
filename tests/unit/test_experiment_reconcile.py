"""The Experiment reconciler's pure parts: spec validation, status transitions, parents."""

from __future__ import annotations

from typing import Any

from benchop.api.conditions import get_condition
from benchop.core.children import plan_sweep
from benchop.core.lifecycle import experiment_progressed, experiment_rejected
from benchop.operator.handlers.experiments import (
    MAX_POINTS,
    needs_resync,
    parent_of,
    validate_spec,
)

NOW = "2024-05-01T12:00:00Z"
TEMPLATE: dict[str, Any] = {
    "target": {"url": "http://vllm.default.svc:8000/v1", "model": "m"},
    "load": {"mode": "concurrency", "concurrency": 1},
    "phases": {"profiling": {"requests": 10}},
}


def spec(*axes: tuple[str, list[Any]], **kw: Any) -> dict[str, Any]:
    return {
        "template": TEMPLATE,
        "sweep": [{"path": p, "values": v} for p, v in axes],
        **kw,
    }


def test_valid_spec_gives_the_points() -> None:
    valid = validate_spec(spec(("load.concurrency", [1, 2]), ("target.model", ["a", "b"])))
    assert not isinstance(valid, str)
    exp, points = valid
    assert [p for p, _ in points] == [
        {"load.concurrency": 1, "target.model": "a"},
        {"load.concurrency": 1, "target.model": "b"},
        {"load.concurrency": 2, "target.model": "a"},
        {"load.concurrency": 2, "target.model": "b"},
    ]
    assert [s for _, s in points] == [s for _, s in exp.points()]


def test_unknown_path_and_wrong_type_name_the_field() -> None:
    msg = validate_spec(spec(("load.concurrensy", [1])))
    assert isinstance(msg, str) and msg.startswith("spec.sweep[0].path: ")
    assert "load.concurrensy" in msg
    msg = validate_spec(spec(("load.concurrency", [1, "eight"])))
    assert isinstance(msg, str) and msg.startswith("spec.sweep: ")
    assert 'sweep[0].values[1]: load.concurrency="eight"' in msg
    msg = validate_spec({**spec(("load.concurrency", [1])), "maxParallel": 0})
    assert isinstance(msg, str) and "spec.maxParallel" in msg


def test_a_combination_of_individually_valid_values_can_be_invalid() -> None:
    msg = validate_spec(spec(("load", [{"mode": "rate", "rate": 5.0}]), ("load.concurrency", [4])))
    assert isinstance(msg, str)
    assert msg.startswith('spec.sweep: run 0 ({"load": {"mode": "rate", "rate": 5.0}, ')
    assert "concurrency is only allowed when mode is concurrency" in msg


def test_too_many_points_and_missing_url() -> None:
    big = spec(("load.concurrency", list(range(1, 101))), ("workload.seed", list(range(11))))
    msg = validate_spec(big)
    assert (
        isinstance(msg, str) and f"1100 runs in the cartesian product, at most {MAX_POINTS}" in msg
    )
    no_url = spec(("load.concurrency", [1]))
    no_url["template"] = {**TEMPLATE, "target": {"model": "m"}}
    msg = validate_spec(no_url)
    assert isinstance(msg, str) and msg.startswith("spec.template.target.url: required")
    swept = {**no_url, "sweep": [{"path": "target.url", "values": ["http://a:1/v1"]}]}
    assert not isinstance(validate_spec(swept), str)
    # an operator with a default target (the chart's mock server) takes it: each run fills it in
    valid = validate_spec(no_url, default_target_url="http://mock:8000/v1")
    assert not isinstance(valid, str) and valid[1][0][1].target.url is None


def test_progressed_and_rejected_statuses() -> None:
    valid = validate_spec(spec(("load.concurrency", [1, 2])))
    assert not isinstance(valid, str)
    exp = valid[0]
    st = experiment_progressed({}, generation=2, plan=plan_sweep(exp, {}, 2), now=NOW)
    assert st["phase"] == "Running" and st["observedGeneration"] == 2
    assert st["startTime"] == NOW and "completionTime" not in st
    assert get_condition(st["conditions"], "Accepted")["status"] == "True"  # type: ignore[index]
    assert get_condition(st["conditions"], "Succeeded")["status"] == "Unknown"  # type: ignore[index]
    done = experiment_progressed(
        {**st, "metrics": {"x": 1}},
        generation=2,
        plan=plan_sweep(exp, {0: "Succeeded", 1: "Failed"}, 2),
        now="later",
    )
    cond = get_condition(done["conditions"], "Succeeded")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "SomeFailed")
    assert done["phase"] == "Failed" and done["completionTime"] == "later"
    assert done["startTime"] == NOW and done["metrics"] == {"x": 1}  # not the reconciler's
    assert all(c["observedGeneration"] == 2 for c in done["conditions"])
    bad = experiment_rejected(st, generation=3, reason="InvalidSpec", message="spec.x: no", now=NOW)
    assert bad is not None and bad["phase"] == "Failed"
    acc = get_condition(bad["conditions"], "Accepted")
    assert acc is not None and (acc["status"], acc["message"]) == ("False", "spec.x: no")


def test_a_rejection_waits_for_the_runs_already_started() -> None:
    counts = {"total": 2, "pending": 0, "running": 1, "succeeded": 1, "failed": 0}
    st = experiment_rejected(
        {}, generation=2, reason="SpecChanged", message="m", now=NOW, counts=counts
    )
    assert st is not None and st["phase"] == "Running" and "completionTime" not in st
    assert st["counts"] == counts
    assert needs_resync(st, {"generation": 2})  # the resync timer keeps the counts current
    acc, suc = (get_condition(st["conditions"], t) for t in ("Accepted", "Succeeded"))
    assert acc is not None and (acc["status"], acc["reason"]) == ("False", "SpecChanged")
    assert suc is not None and (suc["status"], suc["reason"]) == ("Unknown", "SpecChanged")
    done = {**counts, "running": 0, "failed": 1}
    st = experiment_rejected(
        st, generation=2, reason="SpecChanged", message="m", now="later", counts=done
    )
    assert st is not None and st["phase"] == "Failed" and st["completionTime"] == "later"
    assert st["counts"] == done and not needs_resync(st, {"generation": 2})
    suc = get_condition(st["conditions"], "Succeeded")
    assert suc is not None and (suc["status"], suc["reason"]) == ("False", "SpecChanged")


def test_parent_of_and_resync_filter() -> None:
    run = {
        "metadata": {
            "namespace": "ns",
            "ownerReferences": [
                {"kind": "Other", "name": "x", "controller": True},
                {"kind": "Experiment", "name": "sw", "controller": True},
            ],
        }
    }
    assert parent_of(run) == ("ns", "sw")
    assert (
        parent_of({"metadata": {"ownerReferences": [{"kind": "Experiment", "name": "a"}]}}) is None
    )
    assert needs_resync({"phase": "Running"}, {"generation": 1})
    assert not needs_resync({"phase": "Succeeded", "observedGeneration": 1}, {"generation": 1})
    assert needs_resync({"phase": "Failed", "observedGeneration": 1}, {"generation": 2})


class FakeApi:
    """Just enough KubeApi for child_event: every experiment is gone (reconcile returns)."""

    def __init__(self) -> None:
        self.gets = 0

    async def get(self, *_: Any) -> None:
        self.gets += 1


class FakeRefresher:
    def __init__(self) -> None:
        self.marks: list[tuple[str, str]] = []

    def mark_dirty(self, namespace: str, name: str) -> None:
        self.marks.append((namespace, name))


async def test_child_events_mark_dirty_only_when_the_row_changes() -> None:
    from benchop.operator.handlers.experiments import ExperimentServices, child_event

    api, refresher = FakeApi(), FakeRefresher()
    services = ExperimentServices(api=api, refresher=refresher)  # type: ignore[arg-type]
    owner = {"kind": "Experiment", "name": "sw", "controller": True}
    meta = {"name": "sw-0", "namespace": "ns", "uid": "u0", "ownerReferences": [owner]}

    async def event(status: dict[str, Any], type_: str | None = "MODIFIED") -> None:
        await child_event(services, {"metadata": meta, "status": status}, type_)

    await event({"phase": "Profiling"}, None)  # initial listing: mark, never reconcile
    assert refresher.marks == [("ns", "sw")] and api.gets == 0
    await event({"phase": "Profiling", "live": {"rps": 3.0}})  # live only: row unchanged
    await event({"phase": "Profiling", "live": {"rps": 4.0}})
    assert len(refresher.marks) == 1 and api.gets == 0
    await event({"phase": "Succeeded", "results": {"throughput": {"rps": 5.0}}})
    assert len(refresher.marks) == 2 and api.gets == 1  # ended: reconcile the experiment
    await event({"phase": "Succeeded", "results": {"throughput": {"rps": 5.0}}})  # kopf noise
    assert len(refresher.marks) == 2 and api.gets == 1
    await event({"phase": "Succeeded"}, "DELETED")
    assert len(refresher.marks) == 3 and api.gets == 2 and services.rows.get(("ns", "sw")) == {}
    await child_event(services, {"metadata": {"name": "orphan", "uid": "u9"}}, "MODIFIED")
    assert len(refresher.marks) == 3  # no Experiment owner: not ours


async def test_memory_of_deleted_experiments_and_rows_is_pruned() -> None:
    from benchop.operator.handlers.experiments import (
        ExperimentServices,
        child_event,
        observe_experiment,
    )

    services = ExperimentServices(api=FakeApi(), refresher=FakeRefresher())  # type: ignore[arg-type]
    owner = {"kind": "Experiment", "name": "sw", "controller": True}
    for uid in ("k1", "k2"):
        meta = {"name": uid, "namespace": "ns", "uid": uid, "ownerReferences": [owner]}
        await child_event(services, {"metadata": meta, "status": {"phase": "Profiling"}}, None)
    services.prune_rows("ns", "sw", {"k2"})  # a reconcile listed only k2
    assert set(services.rows[("ns", "sw")]) == {"k2"}
    exp = {"metadata": {"namespace": "ns", "name": "sw", "uid": "e1"}}
    deleting = {"metadata": {**exp["metadata"], "deletionTimestamp": NOW}}
    observe_experiment(services, deleting, "MODIFIED")
    assert services.gone == {"e1"}
    observe_experiment(services, deleting, "DELETED")
    assert services.gone == set() and services.rows == {} and services.locks == {}
    # DELETED while a reconcile holds the lock: remembered until the reconcile ends.
    async with services.lock("ns", "sw"):
        observe_experiment(services, deleting, "DELETED")
        assert services.gone == {"e1"} and services.deleted == {"e1"}


def test_a_search_spec_validates_without_points_and_needs_a_url() -> None:
    search = {"concurrency": {"min": 1, "max": 64}, "minGoodput": 0.9}
    doc = {"template": {**TEMPLATE, "slo": {"itlMs": 10}}, "search": search}
    valid = validate_spec(doc)
    assert not isinstance(valid, str)
    exp, points = valid
    assert points == [] and exp.search is not None and exp.points() == []
    params, run_spec = exp.probe(8)
    assert params == {"load.concurrency": 8} and run_spec.load.concurrency == 8
    assert run_spec.slo is not None and run_spec.target == exp.template.target
    no_url = {**doc, "template": {**doc["template"], "target": {"model": "m"}}}
    msg = validate_spec(no_url)
    assert isinstance(msg, str) and msg.startswith("spec.template.target.url: required")
    assert not isinstance(validate_spec(no_url, default_target_url="http://mock:8000/v1"), str)
    both = {**doc, "sweep": [{"path": "load.concurrency", "values": [1]}]}
    assert validate_spec(both) == "spec: set exactly one of sweep or search"
