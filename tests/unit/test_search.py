"""SLO search, pure (benchop.core.search): the knee against servers of known capacity, the
probe bound, non-monotone goodput, and the summary and status plan built from child runs."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from benchop.api.models import SearchSpec
from benchop.core.children import build_child_run, child_name, point_key
from benchop.core.search import (
    Load,
    SearchStep,
    probes_of,
    search_plan,
    search_step,
    search_summary,
)


def concurrency(
    lo: int = 1, hi: int = 256, resolution: int = 1, growth: float = 2.0, max_probes: int = 50
) -> SearchSpec:
    return SearchSpec.model_validate(
        {
            "concurrency": {"min": lo, "max": hi, "resolution": resolution},
            "minGoodput": 0.9,
            "growth": growth,
            "maxProbes": max_probes,
        }
    )


def run_search(search: SearchSpec, passes: Callable[[Load], bool]) -> tuple[SearchStep, list[Load]]:
    """Drive the search to its end against ``passes``; the final step and the loads probed."""
    results: dict[Load, bool | None] = {}
    order: list[Load] = []
    for _ in range(100):
        step = search_step(search, results)
        if step.finished:
            return step, order
        assert step.next is not None and step.next not in results  # never probes twice
        results[step.next] = None  # running: the search waits for it
        waiting = search_step(search, results)
        assert waiting.outcome == "Searching" and waiting.next is None
        results[step.next] = passes(step.next)
        order.append(step.next)
    raise AssertionError("the search did not end")


def bound(lo: float, hi: float, resolution: float, growth: float) -> int:
    """The documented worst case: bracketing then bisection of the bracket it left."""
    bracketing = math.ceil(math.log(hi / lo, growth) - 1e-9) + 1
    gap = hi - hi / growth
    return bracketing + max(0, math.ceil(math.log2(gap / resolution) - 1e-9))


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 8, 13, 16, 17, 31, 64, 100, 200, 255])
def test_knee_of_a_known_capacity_is_found_exactly(capacity: int) -> None:
    search = concurrency(1, 256)
    step, order = run_search(search, lambda c: c <= capacity)
    assert (step.outcome, step.knee, step.limit) == ("KneeFound", capacity, capacity + 1)
    assert step.monotone and step.next is None
    assert len(order) == step.probes <= bound(1, 256, 1, 2) == 16
    assert order[0] == 1  # min first


@pytest.mark.parametrize(("resolution", "capacity"), [(4, 37), (10, 99), (3, 2)])
def test_a_coarser_resolution_brackets_the_knee_within_it(resolution: int, capacity: int) -> None:
    step, _ = run_search(concurrency(1, 256, resolution), lambda c: c <= capacity)
    assert step.outcome == "KneeFound" and step.knee is not None and step.limit is not None
    assert step.knee <= capacity < step.limit and step.limit - step.knee <= resolution


@pytest.mark.parametrize(
    ("lo", "hi", "growth"), [(1, 1024, 2.0), (1, 256, 3.0), (4, 100, 1.5), (1, 2, 2.0)]
)
def test_probe_count_stays_within_the_documented_bound(lo: int, hi: int, growth: float) -> None:
    worst = 0
    for capacity in range(lo - 1, hi + 1):
        step, order = run_search(concurrency(lo, hi, growth=growth), lambda c, k=capacity: c <= k)
        expected = "BelowMin" if capacity < lo else "AtMax" if capacity >= hi else "KneeFound"
        assert step.outcome == expected
        if expected == "KneeFound":
            assert step.knee == capacity
        worst = max(worst, len(order))
    assert worst <= bound(lo, hi, 1, growth)


def test_rate_search_brackets_a_float_capacity() -> None:
    search = SearchSpec.model_validate(
        {
            "rate": {"min": 0.5, "max": 200.0, "resolution": 0.25},
            "minGoodput": 0.95,
            "maxProbes": 50,
        }
    )
    step, order = run_search(search, lambda r: r <= 37.3)
    assert step.outcome == "KneeFound" and step.knee is not None and step.limit is not None
    assert step.knee <= 37.3 < step.limit and step.limit - step.knee <= 0.25
    assert order[:3] == [0.5, 1.0, 2.0] and all(isinstance(v, float) for v in order)
    assert len(order) <= bound(0.5, 200.0, 0.25, 2.0)


def test_ends_at_max_and_below_min() -> None:
    step, order = run_search(concurrency(2, 40), lambda c: True)
    assert (step.outcome, step.knee, step.limit) == ("AtMax", 40, None)
    assert order == [2, 4, 8, 16, 32, 40]  # growth capped at max
    step, order = run_search(concurrency(2, 40), lambda c: False)
    assert (step.outcome, step.knee, step.limit, order) == ("BelowMin", None, 2, [2])
    assert "missed goodput >= 0.9" in step.message


def test_the_probe_bound_ends_the_search_with_the_bracket_it_has() -> None:
    step, order = run_search(concurrency(1, 256, max_probes=5), lambda c: c <= 100)
    assert len(order) == 5 == step.probes
    assert order == [1, 2, 4, 8, 16]
    assert (step.outcome, step.knee, step.limit) == ("ProbeLimit", 16, None)
    step, order = run_search(concurrency(1, 256, max_probes=10), lambda c: c <= 100)
    assert (step.outcome, step.knee, step.limit, len(order)) == ("ProbeLimit", 96, 112, 10)
    assert "maxProbes (10) used: knee load.concurrency=96" in step.message


def test_non_monotone_goodput_never_raises_the_knee_above_the_first_failure() -> None:
    # noise: 16 misses the target although 24 and 32 would meet it
    step, _ = run_search(concurrency(1, 64), lambda c: c <= 40 and c != 16)
    assert (step.outcome, step.knee, step.limit) == ("KneeFound", 15, 16)
    assert step.monotone  # nothing above 16 was probed
    results: dict[Load, bool | None] = {1: True, 2: True, 4: True, 8: False, 16: True}
    step = search_step(concurrency(1, 64), results)
    assert (step.knee, step.limit, step.next, step.monotone) == (4, 8, 6, False)
    assert "goodput not monotone: a load above 8 met the target" in step.message


def test_a_probe_deleted_by_hand_counts_as_failed_and_is_not_probed_again() -> None:
    search = concurrency(1, 64)
    step = search_step(search, {1: True, 2: True}, gone=lambda v: v == 4)
    assert (step.next, step.limit, step.knee) == (3, 4, 2)  # 4 is gone: bisect below it
    assert step.probes == 3


def test_probes_outside_an_edited_range_are_ignored_but_counted() -> None:
    step = search_step(concurrency(8, 64, max_probes=3), {1: False, 2: True})
    assert step.next == 8 and step.knee is None and step.probes == 2


def test_spec_rules() -> None:
    with pytest.raises(ValueError, match="set exactly one of concurrency or rate"):
        SearchSpec.model_validate({"minGoodput": 0.9})
    with pytest.raises(ValueError, match="min must be <= max"):
        SearchSpec.model_validate({"concurrency": {"min": 9, "max": 8}, "minGoodput": 0.9})
    spec = concurrency(1, 8)
    assert spec.path == "load.concurrency" and spec.range.max == 8


# --------------------------------------------------------------------------- from child runs

EXP = {"metadata": {"name": "knee", "namespace": "ns", "uid": "u1"}}
TEMPLATE_SPEC: dict[str, Any] = {
    "target": {"model": "m"},
    "load": {"concurrency": 1},
    "phases": {"profiling": {"requests": 10}},
}


def probe(index: int, value: int, phase: str | None, goodput: float | None = None) -> dict:
    from benchop.api.models import BenchmarkRunSpec

    spec = BenchmarkRunSpec.model_validate({**TEMPLATE_SPEC, "load": {"concurrency": value}})
    run = build_child_run(EXP, index=index, params={"load.concurrency": value}, spec=spec)
    status: dict[str, Any] = {}
    if phase is not None:
        status["phase"] = phase
    if goodput is not None:
        status["results"] = {"goodput": {"ratio": goodput}, "throughput": {"rps": value * 1.0}}
    run["status"] = status
    return run


def test_summary_names_the_knee_and_every_probe_in_the_order_run() -> None:
    runs = [
        probe(2, 4, "Failed"),  # every request failed: the run failed, a miss
        probe(0, 1, "Succeeded", 1.0),
        probe(3, 3, "Succeeded", 0.85),  # below minGoodput 0.9
        probe(1, 2, "Succeeded", 0.95),
    ]
    search = concurrency(1, 8)
    assert probes_of(runs, search) == {4: False, 1: True, 3: False, 2: True}
    summary = search_summary(runs, search)
    assert (summary.outcome, summary.knee, summary.limit) == ("KneeFound", 2, 3)
    assert (summary.knee_run, summary.limit_run) == ("knee-1", "knee-3")
    assert [(p.run, p.value, p.passed) for p in summary.probes] == [
        ("knee-0", 1, True),
        ("knee-1", 2, True),
        ("knee-2", 4, False),
        ("knee-3", 3, False),
    ]
    assert summary.probes[2].goodput is None and summary.probes[3].goodput == 0.85
    assert summary.path == "load.concurrency" and summary.min_goodput == 0.9


def test_summary_of_a_running_probe_and_a_deleted_one() -> None:
    search = concurrency(1, 8)
    summary = search_summary([probe(0, 1, "Succeeded", 1.0), probe(1, 2, "Profiling")], search)
    assert summary.outcome == "Searching" and summary.knee == 1
    assert summary.probes[1].passed is None
    gone = {point_key({"load.concurrency": 2})}
    summary = search_summary(
        [probe(0, 1, "Succeeded", 1.0)],
        search,
        gone=lambda v: point_key({"load.concurrency": v}) in gone,
    )
    assert (summary.outcome, summary.knee, summary.limit) == ("KneeFound", 1, 2)


def test_plan_creates_the_next_probe_and_ends_the_experiment() -> None:
    search = concurrency(1, 8)
    runs = [probe(0, 1, "Succeeded", 1.0)]
    step = search_step(search, probes_of(runs, search))
    plan = search_plan(step, ["Succeeded"])
    assert plan.create == (1,) and not plan.finished and plan.reason == "Running"
    assert plan.counts == {"total": 2, "pending": 1, "running": 0, "succeeded": 1, "failed": 0}
    assert child_name("knee", plan.create[0]) == "knee-1"
    done = search_step(search, {1: True, 2: True, 4: False, 3: False})
    plan = search_plan(done, ["Succeeded", "Succeeded", "Failed", "Succeeded"])
    assert plan.finished and plan.succeeded and plan.reason == "KneeFound" and plan.create == ()
    assert plan.counts["failed"] == 1 and plan.counts["total"] == 4
    below = search_plan(search_step(search, {1: False}), ["Succeeded"])
    assert below.finished and not below.succeeded and below.reason == "BelowMin"
    at_max = search_plan(
        search_step(search, {1: True, 2: True, 4: True, 8: True}), ["Succeeded"] * 4
    )
    assert at_max.succeeded and at_max.reason == "AtMax"
