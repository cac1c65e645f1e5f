#!/usr/bin/env python
"""Benchmark the metrics core: cost per recorded value, final percentiles, merge.

Usage: python hack/bench_metrics.py [--values 1000000] [--repeat 3]

Prints ns per recorded value for Series.record (amortised, a fold every 10,000
values) beside plain list.append and, when the ``hdrhistogram`` package is
importable, hdrh's HdrHistogram.record_value; then the time for final
statistics (p50/p90/p99, mean, std) over 1,000,000 values and for merging
8 workers x 125,000 values. Best of ``--repeat`` runs; every row includes the
same Python for-loop overhead, which is printed too.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from benchop.metrics import Series, describe, merge, summarize

FOLD_EVERY = 10_000


def best_ns(fn: Callable[[], object], repeat: int) -> int:
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        dt = time.perf_counter_ns() - t0
        best = dt if best is None else min(best, dt)
    assert best is not None
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--values", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    n, repeat = args.values, args.repeat
    rng = np.random.default_rng(0)
    # Latency-like ns values: lognormal around 50 ms.
    data = rng.lognormal(np.log(50e6), 0.6, size=n).astype(np.int64)
    values = data.tolist()
    chunks = [values[i : i + FOLD_EVERY] for i in range(0, n, FOLD_EVERY)]

    def loop_only() -> None:
        for chunk in chunks:
            for _v in chunk:
                pass

    def list_append() -> None:
        buf: list[int] = []
        rec = buf.append
        for chunk in chunks:
            for v in chunk:
                rec(v)

    def series_record() -> None:
        s = Series("bench")
        rec = s.record
        fold = s.fold
        for chunk in chunks:
            for v in chunk:
                rec(v)
            fold()

    rows: list[tuple[str, float]] = [
        ("for-loop overhead only", best_ns(loop_only, repeat) / n),
        ("list.append (reference)", best_ns(list_append, repeat) / n),
        (f"Series.record + fold/{FOLD_EVERY}", best_ns(series_record, repeat) / n),
    ]
    hdr_note = ""
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        hdr_note = "hdrh.HdrHistogram.record_value: skipped (pip install hdrhistogram to compare)"
    else:

        def hdr_record() -> None:
            h = HdrHistogram(1, 3_600_000_000_000, 2)
            rec = h.record_value
            for chunk in chunks:
                for v in chunk:
                    rec(v)

        rows.append(("hdrh record_value (reference)", best_ns(hdr_record, repeat) / n))

    series_ns = rows[2][1]
    print(f"Recording {n:,} values (best of {repeat}):")
    print(f"  {'method':<34} {'ns/value':>9} {'cost vs Series':>15}")
    for name, ns in rows:
        print(f"  {name:<34} {ns:9.1f} {ns / series_ns:14.2f}x")
    if hdr_note:
        print(f"  {hdr_note}")

    # Final statistics over every value (exact).
    s = Series("bench")
    s.record_many(values)
    s.fold()
    arr = s.values()
    t_describe = best_ns(lambda: describe(arr), repeat)
    t_numpy = best_ns(lambda: (np.percentile(arr, (50, 90, 99)), arr.mean(), arr.std()), repeat)
    final = s.summary(include_values=True)
    t_summarize = best_ns(lambda: summarize(final), repeat)
    live = s.summary(include_values=False)
    t_live = best_ns(lambda: summarize(live), repeat)
    t_summary = best_ns(lambda: s.summary(include_values=True), repeat)

    # Merge 8 workers x n/8 values (with raw values), then final statistics.
    workers = 8
    parts = []
    for w in range(workers):
        ws = Series("bench")
        ws.record_many(values[w::workers])
        parts.append(ws.summary(include_values=True))
    t_merge = best_ns(lambda: merge(parts), repeat)
    t_merge_stats = best_ns(lambda: summarize(merge(parts)), repeat)
    union_stats = summarize(merge(parts))
    assert (union_stats.p50, union_stats.p90, union_stats.p99) == tuple(
        np.percentile(data, (50, 90, 99))
    )

    print(f"\nFinal statistics over {n:,} values (best of {repeat}):")
    print(f"  {'step':<52} {'ms':>8}")
    for name, ns in (
        ("describe(values): p50/p90/p99 + mean/std (exact)", t_describe),
        ("numpy reference: np.percentile + mean + std", t_numpy),
        ("summarize(final summary) (exact, from wire bytes)", t_summarize),
        ("summarize(live summary) (histogram estimate)", t_live),
        ("Series.summary(include_values=True)", t_summary),
        (f"merge({workers} x {n // workers:,} values)", t_merge),
        (f"summarize(merge({workers} x {n // workers:,})) (exact)", t_merge_stats),
    ):
        print(f"  {name:<52} {ns / 1e6:8.2f}")
    print(f"  describe / numpy reference: {t_describe / t_numpy:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
