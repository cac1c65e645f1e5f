"""benchop.metrics.registry and .names: get-or-create, kinds, snapshots, contract names."""

from __future__ import annotations

import pytest

from benchop.metrics import Counter, Gauge, Registry, Series, names, summarize
from benchop.metrics.stats import decode_values


def test_get_or_create_returns_the_same_object() -> None:
    reg = Registry()
    assert reg.series(names.TTFT) is reg.series(names.TTFT)
    assert reg.counter(names.REQUESTS) is reg.counter(names.REQUESTS)
    assert reg.gauge(names.CLIENT_CPU) is reg.gauge(names.CLIENT_CPU)
    assert isinstance(reg.series("a"), Series)
    assert isinstance(reg.counter("b"), Counter)
    assert isinstance(reg.gauge("c"), Gauge)


def test_a_name_belongs_to_one_kind() -> None:
    reg = Registry()
    reg.series("x")
    with pytest.raises(ValueError, match="'x'"):
        reg.counter("x")
    with pytest.raises(ValueError):
        reg.gauge("x")


def test_counter_and_gauge() -> None:
    reg = Registry()
    c = reg.counter(names.REQUESTS_OK)
    c.inc()
    c.inc(4)
    assert c.value == 5
    with pytest.raises(ValueError):
        c.inc(-1)
    g = reg.gauge(names.RECV_LAG_P99)
    g.set(3)
    g.set(1.25)
    assert g.value == 1.25


def test_snapshot_folds_and_reports_everything() -> None:
    reg = Registry()
    reg.counter(names.REQUESTS).inc(3)
    reg.counter(names.failed("timeout")).inc()
    reg.gauge(names.CLIENT_CPU).set(42.0)
    s = reg.series(names.E2E)
    s.record_many([3_000_000, 1_000_000, 2_000_000])  # still buffered
    counters, gauges, series = reg.snapshot(include_values=False)
    assert counters == {"requests_total": 3, "failed_timeout": 1}
    assert gauges == {"client_cpu_pct": 42.0}
    assert series["e2e_ns"].count == 3
    assert series["e2e_ns"].values is None
    assert summarize(series["e2e_ns"]).mean == 2_000_000.0

    reg.series(names.E2E).record(4_000_000)
    reg.fold()
    _, _, final = reg.snapshot(include_values=True)
    assert decode_values(final["e2e_ns"]).tolist() == [  # type: ignore[union-attr]
        3_000_000,
        1_000_000,
        2_000_000,
        4_000_000,
    ]


def test_names_follow_the_contract() -> None:
    assert (names.TTFT, names.ITL, names.TPOT, names.E2E) == (
        "ttft_ns",
        "itl_ns",
        "tpot_ns",
        "e2e_ns",
    )
    assert (names.INPUT_TOKENS, names.OUTPUT_TOKENS, names.SEND_LAG) == (
        "input_tokens",
        "output_tokens",
        "send_lag_ns",
    )
    assert (names.REQUESTS, names.REQUESTS_OK, names.REQUESTS_FAILED, names.GOOD) == (
        "requests_total",
        "requests_ok",
        "requests_failed",
        "requests_good",
    )
    assert (names.OUTPUT_TOKENS_TOTAL, names.INPUT_TOKENS_TOTAL) == (
        "output_tokens_total",
        "input_tokens_total",
    )
    assert names.FAILURE_REASONS == (
        "http_4xx",
        "http_429",
        "http_5xx",
        "timeout",
        "connection",
        "malformed_stream",
        "truncated",
        "disconnected",
        "cancelled",
        "other",
    )
    assert names.failed("http_429") == names.FAILED_PREFIX + "http_429" == "failed_http_429"
    with pytest.raises(ValueError):
        names.failed("oops")
    assert (names.CLIENT_CPU, names.RECV_LAG_P99) == ("client_cpu_pct", "recv_lag_p99_ms")
