"""The pure Experiment rollup: rows, best run per objective, capping."""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchop.api.models import METRICS_VERSION, ExperimentMetrics, to_wire
from benchop.core.names import INDEX_ANNOTATION, PARAMS_ANNOTATION
from benchop.core.rollup import OBJECTIVES, best_runs, rollup, run_row, same_rollup

NOW = "2024-05-01T12:00:00Z"


def results(
    rps: float,
    tok: float,
    ttft50: float,
    ttft99: float,
    itl50: float,
    good: float | None = None,
    util: float | None = None,
    jpt: float | None = None,
) -> dict[str, Any]:
    lat = {"count": 10, "mean": 1.0, "std": 0.1, "min": 0.5, "max": 2.0, "p90": 1.5}
    out: dict[str, Any] = {
        "version": 1,
        "complete": True,
        "source": "pubsub",
        "durationS": 10.0,
        "requests": {"total": 10, "ok": 10, "failed": 0},
        "throughput": {"rps": rps, "outputTokPerS": tok, "inputTokPerS": 1.0},
        "ttftMs": {**lat, "p50": ttft50, "p99": ttft99},
        "itlMs": {**lat, "p50": itl50, "p99": itl50 * 2},
        "workers": 1,
    }
    if good is not None:
        out["goodput"] = {"ratio": good, "rps": rps * good, "slo": {"ttftMs": 100}}
    if util is not None or jpt is not None:
        out["gpu"] = {"utilMean": util, "joulesPerOutputToken": jpt, "gpus": 1}
    return out


def child(
    index: int, phase: str | None, res: dict[str, Any] | None = None, name: str | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if res is not None:
        status["results"] = res
    return {
        "metadata": {
            "name": name or f"sweep-{index}",
            "annotations": {
                INDEX_ANNOTATION: str(index),
                PARAMS_ANNOTATION: json.dumps({"load.concurrency": 2**index}),
            },
        },
        "status": status,
    }


def test_rows_carry_each_runs_headline_numbers_in_sweep_order() -> None:
    runs = [
        child(1, "Succeeded", results(20, 2000, 30, 90, 6, good=0.9, util=55.5, jpt=0.25)),
        child(0, "Succeeded", results(10, 1000, 20, 40, 5, good=1.0, util=30.0, jpt=0.5)),
        child(2, "Profiling"),
    ]
    m = rollup(runs, cap=10, now=NOW)
    assert m.version == METRICS_VERSION and m.refreshed_at == NOW and m.capped is False
    assert [r.name for r in m.runs] == ["sweep-0", "sweep-1", "sweep-2"]
    row = to_wire(m)["runs"][1]
    assert row == {
        "name": "sweep-1",
        "params": {"load.concurrency": 2},
        "phase": "Succeeded",
        "rps": 20.0,
        "tokPerS": 2000.0,
        "ttftP50": 30.0,
        "ttftP99": 90.0,
        "itlP50": 6.0,
        "goodput": 0.9,
        "gpuUtil": 55.5,
        "joulesPerToken": 0.25,
    }
    assert to_wire(m)["runs"][2] == {
        "name": "sweep-2",
        "params": {"load.concurrency": 4},
        "phase": "Profiling",
    }


def test_best_per_objective_among_succeeded_runs_with_the_metric() -> None:
    runs = [
        child(0, "Succeeded", results(10, 1000, 20, 40, 5, good=1.0, jpt=0.5)),
        child(1, "Succeeded", results(20, 2500, 30, 90, 4, good=0.5)),  # no GPU numbers
        child(2, "Succeeded", results(15, 2000, 25, 35, 6, good=0.8, jpt=0.2)),
        # A failed run with better numbers everywhere never wins.
        child(3, "Failed", results(99, 9999, 1, 1, 1, good=1.0, jpt=0.01)),
    ]
    best = rollup(runs, cap=10, now=NOW).best
    assert best == {
        "rps": "sweep-1",
        "tokPerS": "sweep-1",
        "ttftP50": "sweep-0",
        "ttftP99": "sweep-2",
        "itlP50": "sweep-1",
        "goodput": "sweep-0",
        "joulesPerToken": "sweep-2",
    }
    assert set(best) == set(OBJECTIVES)


def test_ties_go_to_the_earlier_run_and_missing_metrics_have_no_best() -> None:
    runs = [
        child(0, "Succeeded", results(10, 100, 20, 40, 5)),
        child(1, "Succeeded", results(10, 100, 20, 40, 5)),
    ]
    best = rollup(runs, cap=10, now=NOW).best
    assert best["rps"] == "sweep-0" and best["ttftP50"] == "sweep-0"
    assert "goodput" not in best and "joulesPerToken" not in best


def test_no_succeeded_run_means_no_best() -> None:
    m = rollup([child(0, "Failed", results(1, 1, 1, 1, 1)), child(1, None)], cap=5, now=NOW)
    assert m.best == {}
    assert [r.phase for r in m.runs] == ["Failed", None]


def test_malformed_child_status_gives_a_row_without_numbers() -> None:
    bad = child(0, "Succeeded")
    bad["status"]["results"] = {"throughput": {"rps": "fast"}, "ttftMs": [1, 2], "gpu": None}
    odd = child(1, "Exploded", {"throughput": {"rps": float("nan"), "outputTokPerS": True}})
    odd["metadata"]["annotations"][PARAMS_ANNOTATION] = "{not json"
    none = {"metadata": {"name": "x"}, "status": "garbage"}
    m = rollup([bad, odd, none], cap=5, now=NOW)
    assert [(r.name, r.phase, r.rps, r.tok_per_s, r.params) for r in m.runs] == [
        ("sweep-0", "Succeeded", None, None, {"load.concurrency": 1}),
        ("sweep-1", None, None, None, {}),
        ("x", None, None, None, {}),
    ]
    assert m.best == {}


def test_capping_keeps_the_best_runs_and_says_so() -> None:
    runs = [child(i, "Succeeded", results(10 + i, 100, 50 - i, 60, 5)) for i in range(10)]
    m = rollup(runs, cap=4, now=NOW)
    assert m.capped is True and len(m.runs) == 4
    names = [r.name for r in m.runs]
    # rps and ttftP50 are best at sweep-9; itlP50/tokPerS/ttftP99 tie -> sweep-0.
    assert m.best["rps"] == "sweep-9" and m.best["ttftP50"] == "sweep-9"
    assert m.best["itlP50"] == "sweep-0"
    assert names == ["sweep-0", "sweep-1", "sweep-2", "sweep-9"]  # sweep order kept
    assert set(m.best.values()) <= set(names)


def test_cap_smaller_than_the_number_of_best_runs() -> None:
    runs = [
        child(0, "Succeeded", results(99, 1, 99, 99, 99)),  # best rps
        child(1, "Succeeded", results(1, 99, 99, 99, 99)),  # best tok/s
        child(2, "Succeeded", results(1, 1, 1, 99, 99)),  # best ttftP50
    ]
    m = rollup(runs, cap=1, now=NOW)
    assert m.capped and [r.name for r in m.runs] == ["sweep-0"]


def test_exactly_cap_rows_is_not_capped() -> None:
    runs = [child(i, None) for i in range(3)]
    m = rollup(runs, cap=3, now=NOW)
    assert not m.capped and len(m.runs) == 3
    with pytest.raises(ValueError):
        rollup(runs, cap=0, now=NOW)


def test_rollup_round_trips_through_the_wire_and_compares_without_the_timestamp() -> None:
    runs = [child(0, "Succeeded", results(10, 100, 20, 40, 5, good=0.5, util=1.0, jpt=2.0))]
    a = rollup(runs, cap=5, now=NOW)
    b = rollup(runs, cap=5, now="2030-01-01T00:00:00Z")
    assert ExperimentMetrics.model_validate(json.loads(json.dumps(to_wire(a)))) == a
    assert same_rollup(a, b) and a != b
    runs[0]["status"]["phase"] = "Failed"
    assert not same_rollup(a, rollup(runs, cap=5, now=NOW))


def test_best_runs_of_rows_directly() -> None:
    rows = [run_row(child(0, "Succeeded", results(3, 3, 3, 3, 3)))]
    assert best_runs(rows)["rps"] == "sweep-0"
    assert best_runs([]) == {}


def test_rows_follow_the_current_sweep_after_an_axis_grew() -> None:
    def kid(name: str, index: int, c: int, p: int) -> dict[str, Any]:
        params = {"load.concurrency": c, "workload.promptTokens": p}
        ann = {INDEX_ANNOTATION: str(index), PARAMS_ANNOTATION: json.dumps(params)}
        return {"metadata": {"name": name, "annotations": ann}, "status": {"phase": "Succeeded"}}

    # Created for [c:[1,2], p:[128,256]], then p grew to [128,256,512].
    runs = [
        kid("s-0", 0, 1, 128),
        kid("s-1", 1, 1, 256),
        kid("s-2", 2, 2, 128),
        kid("s-3", 3, 2, 256),
        kid("s-2-k", 2, 1, 512),
        kid("s-5", 5, 2, 512),
        kid("odd", 9, 7, 7),  # params no longer in the sweep: last
    ]
    sweep = [
        {"path": "load.concurrency", "values": [1, 2]},
        {"path": "workload.promptTokens", "values": [128, 256, 512]},
    ]
    m = rollup(runs, cap=10, now=NOW, sweep=sweep)
    assert [r.name for r in m.runs] == ["s-0", "s-1", "s-2-k", "s-2", "s-3", "s-5", "odd"]
    plain = rollup(runs, cap=10, now=NOW)  # no sweep: index at creation, then name
    assert [r.name for r in plain.runs] == ["s-0", "s-1", "s-2", "s-2-k", "s-3", "s-5", "odd"]
    assert rollup(runs, cap=10, now=NOW, sweep="garbage").runs == plain.runs


def test_a_search_rollup_orders_rows_by_load_and_names_the_knee() -> None:
    def probe(index: int, c: int, good: float) -> dict[str, Any]:
        run = child(index, "Succeeded", results(10 * c, 100 * c, 20, 40, 5, good=good))
        run["metadata"]["name"] = f"kn-{index}"
        run["metadata"]["annotations"][PARAMS_ANNOTATION] = json.dumps({"load.concurrency": c})
        return run

    runs = [probe(0, 1, 1.0), probe(1, 2, 1.0), probe(2, 4, 0.5), probe(3, 3, 0.95)]
    search = {"concurrency": {"min": 1, "max": 16}, "minGoodput": 0.9}
    m = rollup(runs, cap=10, now=NOW, search=search)
    assert [r.name for r in m.runs] == ["kn-0", "kn-1", "kn-3", "kn-2"]  # by load
    assert m.search is not None
    assert (m.search.outcome, m.search.knee, m.search.knee_run) == ("KneeFound", 3, "kn-3")
    assert (m.search.limit, m.search.limit_run) == (4, "kn-2")
    assert [p.run for p in m.search.probes] == ["kn-0", "kn-1", "kn-2", "kn-3"]  # as run
    wire = to_wire(m)["search"]
    assert wire["kneeRun"] == "kn-3" and wire["minGoodput"] == 0.9
    assert ExperimentMetrics.model_validate(to_wire(m)) == m  # what the cache reader decodes
    # a sweep has no search; a malformed search blob is no summary, never an error
    assert rollup(runs, cap=10, now=NOW).search is None
    assert rollup(runs, cap=10, now=NOW, search={"concurrency": "x"}).search is None
