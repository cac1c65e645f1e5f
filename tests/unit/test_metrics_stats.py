"""benchop.metrics.stats: percentiles vs numpy, stable moments, exact merge, estimates."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchagent.wire import SeriesSummary
from benchop.metrics import Series, describe, merge, percentile, summarize
from benchop.metrics.buckets import REL_ERROR
from benchop.metrics.stats import (
    EMPTY,
    Stats,
    combine,
    decode_values,
    estimate_percentiles,
    moments,
)

QS = (50.0, 90.0, 95.0, 99.0)
EXTRA = (0.0, 25.0, 75.0, 99.9, 99.99, 100.0)
FAST = settings(max_examples=60, deadline=None)


def exact_std(values: list[int]) -> float:
    """Population std by exact rational arithmetic."""
    n = len(values)
    mean = Fraction(sum(values), n)
    return math.sqrt(sum((Fraction(v) - mean) ** 2 for v in values) / n)


def summary_of(
    values: list[int], include_values: bool = True, fold_every: int = 0
) -> SeriesSummary:
    s = Series("x")
    for i, v in enumerate(values):
        s.record(v)
        if fold_every and i % fold_every == 0:
            s.fold()
    return s.summary(include_values)


def test_percentile_is_numpy_linear() -> None:
    values = [7, 1, 3, 10, 2]
    for q in (0, 12.5, 25, 50, 90, 99, 100):
        assert percentile(values, q) == np.percentile(values, q, method="linear")
    # type 7 by hand: sorted 1 2 3 7 10, h = 4 * 0.9 = 3.6 -> 7 + 0.6 * 3
    assert percentile(values, 90) == pytest.approx(8.8)


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_describe_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    v = rng.integers(1_000, 5_000_000_000, size=10_001)
    s = describe(v)
    assert s.count == v.size
    assert (s.min, s.max) == (v.min(), v.max())
    assert (s.p50, s.p90, s.p95, s.p99) == tuple(np.percentile(v, QS))
    assert s.mean == pytest.approx(v.mean(), rel=1e-15)
    assert s.std == pytest.approx(v.std(), rel=1e-12)


def test_describe_extra_percentiles_match_numpy_in_the_order_asked() -> None:
    v = np.random.default_rng(4).integers(0, 10**9, size=2_001)
    s = describe(v, qs=[99.9, 50.0, 0.0, 99.9, 100.0])
    assert [q for q, _ in s.extra] == [99.9, 0.0, 100.0]  # the four fixed ones and repeats out
    assert [x for _, x in s.extra] == list(np.percentile(v, [99.9, 0.0, 100.0]))
    assert list(s.percentiles()) == ["p50", "p90", "p95", "p99", "p99.9", "p0", "p100"]
    with pytest.raises(ValueError):
        describe(v, qs=[101.0])


def test_describe_empty_is_zero_count() -> None:
    assert describe(np.zeros(0, dtype=np.int64)) == EMPTY
    assert summarize(SeriesSummary()) == EMPTY


def test_std_keeps_precision_of_large_nanosecond_values() -> None:
    # 1e15 ns + noise of a few hundred ns: float64 sum-of-squares would lose it all.
    rng = np.random.default_rng(5)
    values = (10**15 + rng.integers(0, 500, size=3_000)).tolist()
    ref = exact_std(values)
    got = describe(np.array(values, dtype=np.int64))
    assert got.std == pytest.approx(ref, rel=1e-12)
    assert got.mean == float(Fraction(sum(values), len(values)))
    # The naive formula is far off here, so the test can tell them apart.
    a = np.array(values, dtype=np.float64)
    naive = math.sqrt(max(float((a * a).sum()) / a.size - float(a.mean()) ** 2, 0.0))
    assert abs(naive - ref) > 1.0


def test_std_of_many_folds_of_1e12_values_matches_exact_reference() -> None:
    rng = np.random.default_rng(11)
    values = (10**12 + rng.integers(-1_000, 1_000, size=20_000)).tolist()
    s = Series("ttft_ns")
    for i, v in enumerate(values):
        s.record(v)
        if i % 997 == 0:
            s.fold()
    stats = summarize(s.summary(include_values=False))
    assert stats.std == pytest.approx(exact_std(values), rel=1e-12)
    ref128 = float(np.std(np.array(values, dtype=np.longdouble)))
    assert stats.std == pytest.approx(ref128, rel=1e-12)


@FAST
@given(
    st.lists(st.integers(-(10**12), 10**13), min_size=1, max_size=300),
    st.lists(st.integers(0, 300), max_size=6),
)
def test_combine_of_chunks_equals_moments_of_whole(values: list[int], cuts: list[int]) -> None:
    edges = sorted({0, len(values), *(min(c, len(values)) for c in cuts)})
    parts = [moments(np.array(values[a:b], dtype=np.int64)) for a, b in itertools.pairwise(edges)]
    m = combine(parts)
    assert (m.count, m.sum, m.min, m.max) == (len(values), sum(values), min(values), max(values))
    ref = exact_std(values) ** 2 * len(values)
    assert m.m2 == pytest.approx(ref, rel=1e-9, abs=1e-6)


@FAST
@given(
    st.lists(st.integers(0, 10**11), min_size=1, max_size=400),
    st.integers(1, 6),
    st.randoms(use_true_random=False),
)
def test_merge_of_random_split_equals_describe_of_union(
    values: list[int], k: int, rnd: random.Random
) -> None:
    parts: list[list[int]] = [[] for _ in range(k)]
    for v in values:
        parts[rnd.randrange(k)].append(v)
    summaries = [summary_of(p, fold_every=rnd.randint(0, 50)) for p in parts]
    merged = merge(summaries)
    union = np.array(values, dtype=np.int64)

    assert merged.count == len(values)
    assert merged.sum == sum(values)
    assert (merged.min, merged.max) == (min(values), max(values))
    assert sum(merged.buckets.values()) == len(values)
    got = summarize(merged, qs=EXTRA)
    assert (got.p50, got.p90, got.p95, got.p99) == tuple(np.percentile(union, QS))
    assert [v for _, v in got.extra] == list(np.percentile(union, EXTRA))
    assert got.mean == float(Fraction(sum(values), len(values)))
    assert got.std == pytest.approx(exact_std(values), rel=1e-9, abs=1e-6)
    assert sorted(decode_values(merged).tolist()) == sorted(values)  # type: ignore[union-attr]


def test_merge_without_values_in_one_part_estimates_from_buckets() -> None:
    rng = np.random.default_rng(2)
    a = rng.integers(1_000_000, 900_000_000, size=5_000).tolist()
    b = rng.integers(1_000_000, 900_000_000, size=5_000).tolist()
    merged = merge([summary_of(a), summary_of(b, include_values=False)])
    assert merged.values is None
    got = summarize(merged, qs=[99.9])
    exact = np.percentile(a + b, (*QS, 99.9))
    for est, ex in zip((got.p50, got.p90, got.p95, got.p99, got.extra[0][1]), exact, strict=True):
        assert abs(est - ex) <= REL_ERROR * ex
    assert got.mean == float(Fraction(sum(a + b), len(a + b)))


def test_merge_ignores_empty_parts_and_empty_list() -> None:
    values = [5, 9, 1000]
    merged = merge([SeriesSummary(), summary_of(values), SeriesSummary(values=None)])
    assert decode_values(merged).tolist() == values  # type: ignore[union-attr]
    assert (merged.min, merged.max, merged.count) == (5, 1000, 3)
    assert merge([]).count == 0
    assert summarize(merge([])) == EMPTY


def test_summarize_rejects_count_that_disagrees_with_values() -> None:
    s = summary_of([1, 2, 3])
    s.count = 4
    with pytest.raises(ValueError, match="count"):
        summarize(s)


@FAST
@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=500))
def test_histogram_estimate_within_relative_error_bound(values: list[int]) -> None:
    s = summary_of(values, include_values=False, fold_every=37)
    est = estimate_percentiles(s.buckets, s.min, s.max, (0.0, 10.0, *QS, 100.0))
    exact = np.percentile(np.array(values, dtype=np.int64), (0.0, 10.0, *QS, 100.0))
    for e, x in zip(est, exact, strict=True):
        assert abs(e - x) <= REL_ERROR * x + 1e-6 * max(x, 1.0)
    assert (est[0], est[-1]) == (min(values), max(values))


def test_estimate_of_empty_histogram_is_nan() -> None:
    assert all(math.isnan(x) for x in estimate_percentiles({}, 0, 0))


def test_scaled_converts_ns_to_ms() -> None:
    s = Stats(
        count=3, mean=2e6, std=1e6, min=1e6, max=3e6, p50=2e6, p90=2.8e6, p95=2.9e6, p99=2.98e6,
        extra=((99.9, 2.998e6),),
    )  # fmt: skip
    ms = s.scaled(1e-6)
    assert ms.count == 3
    assert (ms.mean, ms.std, ms.min, ms.max) == pytest.approx((2.0, 1.0, 1.0, 3.0))
    assert (ms.p50, ms.p90, ms.p95, ms.p99) == pytest.approx((2.0, 2.8, 2.9, 2.98))
    assert ms.percentiles() == pytest.approx(
        {"p50": 2.0, "p90": 2.8, "p95": 2.9, "p99": 2.98, "p99.9": 2.998}
    )
    assert s.scaled(-1.0).std == 1e6
