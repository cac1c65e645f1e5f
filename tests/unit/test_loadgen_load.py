"""Load-mode cores: arrival schedules, the admission budget, the per-worker plan."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from benchop.api.models import BenchmarkRunSpec
from benchop.loadgen.load import Budget, arrival_offsets
from benchop.loadgen.worker import plan_for, spec_hash


def test_constant_arrivals_are_exact_and_phased() -> None:
    got = list(itertools.islice(arrival_offsets(8.0, "constant", 0, phase_s=0.05), 4))
    assert got == [50_000_000, 175_000_000, 300_000_000, 425_000_000]


def test_poisson_arrivals_are_seeded_with_the_right_mean() -> None:
    a = np.array(list(itertools.islice(arrival_offsets(100.0, "poisson", 7), 5001)))
    b = list(itertools.islice(arrival_offsets(100.0, "poisson", 7), 5001))
    assert a.tolist() == b
    gaps = np.diff(a) / 1e9
    assert gaps.mean() == pytest.approx(0.01, rel=0.05)
    assert gaps.std() == pytest.approx(0.01, rel=0.1)  # exponential: std == mean
    assert list(itertools.islice(arrival_offsets(100.0, "poisson", 8), 3)) != b[:3]


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        next(arrival_offsets(0.0, "constant", 0))


def test_budget_by_requests_closes_once() -> None:
    closed: list[bool] = []
    b = Budget(requests=2, on_close=lambda: closed.append(True))
    assert b.take() and b.take()
    assert not b.take() and not b.take()
    assert b.admitted == 2 and closed == [True]


def test_budget_by_deadline_and_stop() -> None:
    now = time.perf_counter_ns()
    b = Budget(deadline_ns=now + 10**9)
    assert b.take(now) and not b.take(now + 10**9)
    s = Budget()
    woken: list[int] = []
    s.on_stop(lambda: woken.append(1))
    assert s.take()
    s.stop()
    assert not s.take() and woken == [1] and s.stopped


def spec(**load: object) -> BenchmarkRunSpec:
    return BenchmarkRunSpec.model_validate(
        {
            "target": {"model": "m", "url": "http://127.0.0.1:1/v1"},
            "load": load,
            "phases": {"warmup": {"requests": 10}, "profiling": {"requests": 101}},
            "slo": {"ttftMs": 100},
        }
    )


def test_plan_splits_concurrency_and_requests_exactly() -> None:
    s = spec(mode="concurrency", concurrency=10, workers=3)
    plans = [plan_for(s, i, 3) for i in range(3)]
    assert [p.concurrency for p in plans] == [4, 3, 3]
    assert sum(p.profiling.requests or 0 for p in plans) == 101
    assert sum(p.warmup.requests or 0 for p in plans if p.warmup) == 10
    assert plans[0].slo.ttft_ms == 100
    with pytest.raises(ValueError):
        plan_for(s, 3, 3)


def test_plan_splits_rate_and_staggers_workers() -> None:
    s = spec(mode="rate", rate=30.0, workers=3, maxInFlight=4, arrival="constant")
    plans = [plan_for(s, i, 3) for i in range(3)]
    assert [p.rate for p in plans] == [10.0, 10.0, 10.0]
    assert [p.phase_s for p in plans] == [0.0, 1 / 30, 2 / 30]
    assert [p.max_in_flight for p in plans] == [2, 1, 1]


def test_spec_hash_changes_with_the_spec() -> None:
    a = spec(mode="concurrency", concurrency=10)
    assert spec_hash(a) == spec_hash(spec(mode="concurrency", concurrency=10))
    assert spec_hash(a) != spec_hash(spec(mode="concurrency", concurrency=11))
