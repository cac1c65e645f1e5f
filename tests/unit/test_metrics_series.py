"""benchop.metrics.series and .buckets: cheap record, bulk fold, live histogram."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchagent.wire import SeriesSummary
from benchop.metrics import Series
from benchop.metrics.buckets import REL_ERROR, bounds, keys, midpoint
from benchop.metrics.series import Histogram
from benchop.metrics.stats import decode_values

FAST = settings(max_examples=60, deadline=None)
INT64 = st.integers(-(2**62), 2**62)


def test_record_and_record_many_keep_order_and_count() -> None:
    s = Series("itl_ns")
    s.record(3)
    s.record_many([1, 2])
    assert s.count == 3  # buffered values count before any fold
    assert s.values().tolist() == [3, 1, 2]
    s.record(7)  # record is still bound to the live buffer after a fold
    assert s.count == 4
    assert s.values().tolist() == [3, 1, 2, 7]
    assert s.values().dtype == np.int64


def test_values_are_read_only_and_empty_series_is_empty() -> None:
    s = Series()
    assert s.values().size == 0
    s.record_many([1, 2, 3])
    with pytest.raises(ValueError):
        s.values()[0] = 9


def test_fold_is_idempotent() -> None:
    s = Series()
    s.record_many([10, 200, 3_000_000])
    assert s.fold() == 3
    first = s.summary(include_values=True)
    assert s.fold() == 0
    assert s.fold() == 0
    assert s.summary(include_values=True) == first


@FAST
@given(st.lists(INT64, max_size=300), st.sets(st.integers(0, 300), max_size=10))
def test_fold_points_do_not_change_the_summary(values: list[int], folds: set[int]) -> None:
    once, often = Series(), Series()
    for i, v in enumerate(values):
        once.record(v)
        often.record(v)
        if i in folds:
            often.fold()
    a, b = once.summary(include_values=True), often.summary(include_values=True)
    assert (a.count, a.sum, a.min, a.max, a.buckets, a.values) == (
        b.count,
        b.sum,
        b.min,
        b.max,
        b.buckets,
        b.values,
    )
    assert a.m2 == pytest.approx(b.m2, rel=1e-9, abs=1e-6)
    assert a.sum == sum(values)


def test_non_int_values_raise_and_stay_buffered() -> None:
    s = Series("ttft_ns")
    s.record(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ttft_ns"):
        s.fold()
    assert s.count == 1
    t = Series()
    t.record(2**64)
    with pytest.raises(TypeError):
        t.fold()


def test_summary_round_trips_through_msgpack() -> None:
    s = Series()
    s.record_many([-5, 0, 1, 127, 128, 1_000_000_007])
    summary = s.summary(include_values=True)
    back = msgspec.msgpack.decode(msgspec.msgpack.encode(summary), type=SeriesSummary)
    assert back == summary
    assert decode_values(back).tolist() == [-5, 0, 1, 127, 128, 1_000_000_007]  # type: ignore[union-attr]
    assert s.summary(include_values=False).values is None


def test_histogram_counts_every_value_once() -> None:
    s = Series()
    values = [0, 1, 1, 127, 128, 129, 1000, 1007, -3, -3, -1000]
    s.record_many(values)
    b = s.buckets()
    assert sum(b.values()) == len(values)
    assert b[1] == 2 and b[-3] == 2
    assert b[int(keys(np.array([1000]))[0])] == 2  # 1000 and 1007 share a bucket
    assert list(b) == sorted(b)


def test_bucket_scheme_edges() -> None:
    assert [bounds(k) for k in (0, 127, 128, 191, 192)] == [
        (0, 0),
        (127, 127),
        (128, 129),
        (254, 255),
        (256, 259),
    ]
    assert bounds(-128) == (-129, -128)
    v = np.array([2**53 - 1, 2**53, 2**53 + 1, 2**62 - 1, 2**62, 2**63 - 1], dtype=np.int64)
    for x, k in zip(v.tolist(), keys(v).tolist(), strict=True):
        lo, hi = bounds(k)
        assert lo <= x <= hi


@FAST
@given(st.lists(st.integers(-(2**63) + 1, 2**63 - 1), min_size=1, max_size=200))
def test_every_value_lies_in_its_bucket_within_relative_error(values: list[int]) -> None:
    ks = keys(np.array(values, dtype=np.int64)).tolist()
    for x, k in zip(values, ks, strict=True):
        lo, hi = bounds(k)
        assert lo <= x <= hi
        assert abs(midpoint(k) - x) <= REL_ERROR * abs(x) * (1 + 1e-12)
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(np.array(ks)[order]) >= 0)  # keys are monotone in the value


# --- Histogram: counts without values ------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=300),
    st.lists(st.integers(0, 10**9), max_size=300),
    st.sampled_from([1.0, 50.0, 90.0, 99.0]),
)
def test_histogram_merge_equals_adding_the_union_and_estimates_within_the_bucket_error(
    a: list[int], b: list[int], q: float
) -> None:
    ha, hb, whole = Histogram(), Histogram(), Histogram()
    ha.add(np.array(a, dtype=np.int64))
    hb.add(np.array(b, dtype=np.int64))
    whole.add(np.array(a + b, dtype=np.int64))
    ha.merge(hb)
    assert ha.buckets() == whole.buckets()
    assert (ha.count, ha.min, ha.max) == (len(a) + len(b), min(a + b), max(a + b))
    # the same buckets as a Series of the same values, and the estimate of its summary
    s = Series()
    s.record_many(a + b)
    assert whole.buckets() == s.buckets()
    exact = float(np.percentile(np.array(a + b), q))
    est = whole.percentile(q)
    # each ranked value is off by at most REL_ERROR of itself; interpolation keeps that bound
    sorted_abs = max(abs(min(a + b)), abs(max(a + b)))
    assert abs(est - exact) <= REL_ERROR * sorted_abs + 1e-6


def test_empty_histogram() -> None:
    h = Histogram()
    h.add(np.zeros(0, dtype=np.int64))
    h.merge(Histogram())
    assert h.count == 0 and h.buckets() == {} and np.isnan(h.percentile(99))
