"""The termination-message summary stays under Kubernetes' 4 KB."""

from __future__ import annotations

import json

import numpy as np

from benchagent.wire import MetricsSnapshot
from benchop.loadgen.records import new_registry
from benchop.loadgen.snapshots import TERMINATION_LIMIT, summary
from benchop.metrics import names


def snapshot(n_series: int = 0) -> MetricsSnapshot:
    reg = new_registry()
    reg.counter(names.REQUESTS).inc(10)
    for v in np.arange(1, 101):
        reg.series(names.TTFT).record(int(v) * 1000)
    for i in range(n_series):
        reg.series(f"extra_series_with_a_long_name_{i}").record(i + 1)
    reg.gauge(names.CLIENT_CPU).set(12.345678)
    counters, gauges, series = reg.snapshot(include_values=True)
    return MetricsSnapshot(
        run="r", worker=0, seq=1, state="COMPLETE", phase="done", time_ns=0, elapsed_s=1.0,
        n_pending=0, counters=counters, gauges=gauges, series=series,
    )  # fmt: skip


def test_summary_has_counts_and_percentiles() -> None:
    s = summary(snapshot())
    assert s["state"] == "COMPLETE" and s["counters"] == {names.REQUESTS: 10}
    assert s["series"][names.TTFT] == {"n": 100, "p50": 50500.0, "p99": 99010.0}
    assert s["gauges"][names.CLIENT_CPU] == 12.346


def test_summary_is_trimmed_to_the_limit() -> None:
    s = summary(snapshot(n_series=200))
    text = json.dumps(s, separators=(",", ":"))
    assert len(text) <= TERMINATION_LIMIT
    assert s["state"] == "COMPLETE" and "counters" in s and "series" not in s
