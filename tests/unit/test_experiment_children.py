"""An Experiment's children, pure: names, labels, the whole manifest, and the sweep plan."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_validate import validate as k8s_validate

from benchop.api.models import ExperimentSpec
from benchop.core.children import (
    build_child_run,
    child_name,
    format_created,
    label_value,
    param_label_key,
    parse_created,
    pick_child_name,
    plan_sweep,
    point_key,
    should_stop,
)
from benchop.core.names import CREATED_ANNOTATION
from benchop.core.selectors import experiment_selector

TEMPLATE: dict[str, Any] = {
    "target": {"url": "http://vllm.default.svc:8000/v1", "model": "m"},
    "load": {"mode": "concurrency", "concurrency": 1},
    "phases": {"profiling": {"requests": 10}},
}


def spec(**kw: Any) -> ExperimentSpec:
    doc: dict[str, Any] = {
        "template": TEMPLATE,
        "sweep": [{"path": "load.concurrency", "values": [1, 2, 4, 8]}],
        **kw,
    }
    return ExperimentSpec.model_validate(doc)


EXP = {"metadata": {"name": "sweep", "namespace": "ns", "uid": "uid-1", "generation": 1}}


def test_child_manifest_whole() -> None:
    s = ExperimentSpec.model_validate(
        {
            "template": TEMPLATE,
            "sweep": [
                {"path": "target.model", "values": ["meta-llama/Llama-3.1-8B-Instruct"]},
                {"path": "load.concurrency", "values": [1, 32]},
            ],
        }
    )
    params, run_spec = s.points()[1]
    manifest = build_child_run(EXP, index=1, params=params, spec=run_spec)
    assert manifest == {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {
            "name": "sweep-1",
            "namespace": "ns",
            "labels": {
                "benchop.io/experiment": "sweep",
                "benchop.io/target.model": "meta-llama-Llama-3.1-8B-Instruct",
                "benchop.io/load.concurrency": "32",
            },
            "annotations": {
                "benchop.io/experiment-name": "sweep",
                "benchop.io/sweep-index": "1",
                "benchop.io/params": json.dumps(
                    {"target.model": "meta-llama/Llama-3.1-8B-Instruct", "load.concurrency": 32},
                    separators=(",", ":"),
                ),
            },
            "ownerReferences": [
                {
                    "apiVersion": "benchop.io/v1alpha1",
                    "kind": "Experiment",
                    "name": "sweep",
                    "uid": "uid-1",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            **run_spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        },
    }
    assert manifest["spec"]["load"]["concurrency"] == 32
    assert manifest["spec"]["target"]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    # metadata is valid Kubernetes ObjectMeta (labels, names) as a ConfigMap's would be
    k8s_validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": manifest["metadata"]}, "1.30", True
    )


def test_names_are_deterministic_and_bounded() -> None:
    assert child_name("sweep", 0) == "sweep-0"
    long = "x" * 80
    a, b = child_name(long, 12), child_name(long, 12)
    assert a == b and len(a) <= 63 and a.endswith("-12")
    assert child_name(long, 1) != child_name("x" * 81, 1)
    key, value = experiment_selector(long).split("=")
    assert key == "benchop.io/experiment" and len(value) <= 63 and value != long[:63]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (8, "8"),
        (0.5, "0.5"),
        (True, "true"),
        (None, "null"),
        ("chat", "chat"),
        ("a b/c", "a-b-c"),
        ("-edge-", "edge"),
        ({"requests": 50}, "requests-50"),
        ("", ""),
    ],
)
def test_label_values_are_legal(value: Any, expected: str) -> None:
    assert label_value(value) == expected


def test_long_label_values_keep_distinct_values_distinct() -> None:
    a, b = label_value("a" * 100 + "1"), label_value("a" * 100 + "2")
    assert a != b and len(a) <= 63 and len(b) <= 63
    k8s_validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"k": a}}},
        "1.30",
        True,
    )
    assert param_label_key("phases.profiling") == "benchop.io/phases.profiling"


def test_plan_starts_in_order_at_most_max_parallel() -> None:
    s = spec()
    p = plan_sweep(s, {}, 4)
    assert p.create == (0,) and not p.finished and p.reason == "Running"
    assert p.counts == {"total": 4, "pending": 4, "running": 0, "succeeded": 0, "failed": 0}
    p = plan_sweep(s, {0: "Profiling"}, 4)
    assert p.create == ()
    assert p.counts == {"total": 4, "pending": 3, "running": 1, "succeeded": 0, "failed": 0}
    p = plan_sweep(s, {0: "Succeeded"}, 4)
    assert p.create == (1,)
    p = plan_sweep(spec(maxParallel=3), {0: "Succeeded", 1: "Warmup"}, 4)
    assert p.create == (2, 3)


def test_plan_all_succeeded() -> None:
    p = plan_sweep(spec(), dict.fromkeys(range(4), "Succeeded"), 4)
    assert p.finished and p.succeeded and p.reason == "AllSucceeded" and p.create == ()
    assert p.counts == {"total": 4, "pending": 0, "running": 0, "succeeded": 4, "failed": 0}


def test_plan_continue_runs_everything_and_ends_some_failed() -> None:
    phases = {0: "Failed", 1: "Succeeded"}
    assert plan_sweep(spec(), phases, 4).create == (2,)
    p = plan_sweep(spec(), {0: "Failed", 1: "Succeeded", 2: "Failed", 3: "Succeeded"}, 4)
    assert p.finished and not p.succeeded and p.reason == "SomeFailed"
    assert "2 of 4" in p.message


def test_plan_abort_stops_starting_runs_and_waits_for_the_running_ones() -> None:
    s = spec(failurePolicy="abort", maxParallel=2)
    p = plan_sweep(s, {0: "Failed", 1: "Profiling"}, 4)
    assert p.create == () and not p.finished and "no new runs" in p.message
    p = plan_sweep(s, {0: "Failed", 1: "Succeeded"}, 4)
    assert p.finished and p.reason == "Aborted" and "2 not run" in p.message
    assert p.counts["pending"] == 2


def test_plan_max_failures() -> None:
    s = spec(maxFailures=1)
    assert plan_sweep(s, {0: "Failed"}, 4).create == (1,)
    p = plan_sweep(s, {0: "Failed", 1: "Failed"}, 4)
    assert p.finished and p.reason == "Aborted"
    assert should_stop(spec(), 100) is False
    assert should_stop(spec(failurePolicy="abort"), 0) is False


def test_plan_does_not_recreate_a_run_deleted_by_hand() -> None:
    p = plan_sweep(spec(), {1: "Succeeded"}, 4)
    assert p.create == (2,) and p.counts["failed"] == 1
    p = plan_sweep(spec(), {1: "Succeeded", 2: "Succeeded", 3: "Succeeded"}, 4)
    assert p.finished and p.reason == "SomeFailed" and "deleted by hand: 0" in p.message


def test_plan_never_recreates_a_deleted_point_of_the_high_water_set() -> None:
    # maxParallel 1: point 1 is running (the highest index) and is deleted by hand.
    p = plan_sweep(spec(), {0: "Succeeded"}, 4, created={0, 1})
    assert p.create == (2,) and p.counts["failed"] == 1 and p.counts["succeeded"] == 1
    assert p.counts == {"total": 4, "pending": 2, "running": 0, "succeeded": 1, "failed": 1}
    p = plan_sweep(spec(), {0: "Succeeded", 2: "Succeeded", 3: "Succeeded"}, 4, created={1})
    assert p.finished and p.reason == "SomeFailed" and "deleted by hand: 1" in p.message


def test_plan_fills_gaps_left_by_an_extended_sweep_in_index_order() -> None:
    # [c:[1,2], p:[128,256]] -> p:[128,256,512]: old points are now 0, 1, 3, 4.
    phases = {0: "Succeeded", 1: "Succeeded", 3: "Succeeded", 4: "Succeeded"}
    p = plan_sweep(spec(maxParallel=3), phases, 6, created=set(phases))
    assert p.create == (2, 5) and p.counts["failed"] == 0 and p.counts["pending"] == 2
    p = plan_sweep(spec(), {**phases, 2: "Succeeded", 5: "Succeeded"}, 6, created={0, 1, 3, 4})
    assert p.finished and p.reason == "AllSucceeded"


def test_point_keys_and_child_names() -> None:
    a, b = point_key({"c": 1, "p": 128}), point_key({"p": 128, "c": 1})
    assert a == b and len(a) == 12 and a != point_key({"c": 1, "p": 256})
    assert point_key({"c": 1}) != point_key({"c": "1"})
    assert pick_child_name("s", 2, {"c": 1}, {}) == "s-2"
    assert pick_child_name("s", 2, {"c": 1}, {"s-2": point_key({"c": 1})}) == "s-2"
    other = pick_child_name("s", 2, {"c": 1}, {"s-2": point_key({"c": 2})})
    assert other == f"s-2-{point_key({'c': 1})}"
    assert len(pick_child_name("x" * 80, 2, {"c": 1}, {child_name("x" * 80, 2): "k"})) <= 63
    exp = {"metadata": {"annotations": {CREATED_ANNOTATION: format_created({"b", "a"})}}}
    assert exp["metadata"]["annotations"][CREATED_ANNOTATION] == "a,b"
    assert parse_created(exp) == {"a", "b"} and parse_created({"metadata": {}}) == set()
