"""benchop.core.results: snapshots of two workers merged and turned into Results, vs numpy;
the choice of each worker's final snapshot, the termination summary, the verdict, the bound."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import pytest

from benchagent.wire import MetricsSnapshot
from benchop.api.models import GpuResults, Results, SloSpec, to_wire
from benchop.api.workload import ReportSpec, TokenizerSpec
from benchop.core.results import (
    Source,
    bound_results,
    build_final_results,
    build_results,
    final_snapshots,
    merge_snapshots,
    parse_termination_message,
    verdict,
)
from benchop.metrics import Registry, names
from benchop.metrics.buckets import REL_ERROR

LATENCIES = (names.TTFT, names.ITL, names.TPOT, names.E2E)
SLO = SloSpec(ttft_ms=200.0, itl_ms=30.0)


def worker_registry(seed: int, n: int) -> tuple[Registry, dict[str, list[int]]]:
    """A registry as a worker would fill it, and the raw values it recorded."""
    rng = np.random.default_rng(seed)
    reg = Registry()
    recorded: dict[str, list[int]] = {name: [] for name in LATENCIES}
    for i in range(n):
        if i % 10 == 9:  # one request in ten fails
            reason = names.FAILURE_REASONS[(i // 10) % len(names.FAILURE_REASONS)]
            reg.counter(names.REQUESTS).inc()
            reg.counter(names.REQUESTS_FAILED).inc()
            reg.counter(names.failed(reason)).inc()
            continue
        ttft = int(rng.integers(50_000_000, 400_000_000))
        itls = rng.integers(5_000_000, 40_000_000, size=8).tolist()
        e2e = ttft + sum(itls)
        tpot = (e2e - ttft) // len(itls)
        for name, v in ((names.TTFT, ttft), (names.TPOT, tpot), (names.E2E, e2e)):
            reg.series(name).record(v)
            recorded[name].append(v)
        reg.series(names.ITL).record_many(itls)
        recorded[names.ITL].extend(itls)
        reg.counter(names.REQUESTS).inc()
        reg.counter(names.REQUESTS_OK).inc()
        reg.counter(names.OUTPUT_TOKENS_TOTAL).inc(len(itls) + 1)
        reg.counter(names.INPUT_TOKENS_TOTAL).inc(512)
        if ttft <= 200_000_000 and max(itls) <= 30_000_000:
            reg.counter(names.GOOD).inc()
        if i % 50 == 0:
            reg.fold()
    return reg, recorded


def snapshot(
    reg: Registry,
    worker: int,
    *,
    elapsed_s: float,
    state: str = "COMPLETE",
    include_values: bool = True,
    interrupted: bool = False,
    cpu: float = 20.0,
    lag_ms: float = 0.5,
) -> MetricsSnapshot:
    reg.gauge(names.CLIENT_CPU).set(cpu)
    reg.gauge(names.RECV_LAG_P99).set(lag_ms)
    counters, gauges, series = reg.snapshot(include_values=include_values)
    return MetricsSnapshot(
        run="r1",
        worker=worker,
        seq=7,
        state=state,  # type: ignore[arg-type]
        phase="done",
        time_ns=1,
        elapsed_s=elapsed_s,
        n_pending=0,
        counters=counters,
        gauges=gauges,
        series=series,
        interrupted=interrupted,
    )


Workers = tuple[Registry, Registry, dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def two_workers() -> Workers:
    a, ra = worker_registry(1, 400)
    b, rb = worker_registry(2, 300)
    union = {name: np.array(ra[name] + rb[name], dtype=np.int64) for name in LATENCIES}
    return a, b, union


def test_results_equal_numpy_over_the_union(two_workers: Workers) -> None:
    a, b, union = two_workers
    snaps = [snapshot(a, 0, elapsed_s=10.0, cpu=35.0), snapshot(b, 1, elapsed_s=12.5, cpu=20.0)]
    merged = merge_snapshots(snaps)
    assert merged.complete and not merged.interrupted
    assert merged.workers == 2
    assert merged.elapsed_s == 12.5
    assert merged.gauges[names.CLIENT_CPU] == 35.0  # gauges: max over workers

    extra = [99.9, 25.0, 100.0]
    res = build_results(merged, slo=SLO, source="pubsub", report=ReportSpec(percentiles=extra))
    ca, cb = a.snapshot()[0], b.snapshot()[0]

    def both(name: str) -> int:
        return ca.get(name, 0) + cb.get(name, 0)

    assert res.complete and res.source == "pubsub" and res.workers == 2
    assert res.duration_s == 12.5
    assert res.requests.total == 700
    assert res.requests.ok == both(names.REQUESTS_OK) == 630
    assert res.requests.failed == 70
    assert sum(res.requests.by_reason.values()) == 70
    assert res.requests.by_reason["timeout"] == both(names.failed("timeout")) > 0
    assert set(res.requests.by_reason) <= set(names.FAILURE_REASONS)
    assert res.throughput.rps == 630 / 12.5
    assert res.throughput.output_tok_per_s == both(names.OUTPUT_TOKENS_TOTAL) / 12.5
    assert res.throughput.input_tok_per_s == 630 * 512 / 12.5

    for name, stats in (
        (names.TTFT, res.ttft_ms),
        (names.ITL, res.itl_ms),
        (names.TPOT, res.tpot_ms),
        (names.E2E, res.e2e_ms),
    ):
        v = union[name]
        assert stats is not None
        assert stats.count == v.size
        want = np.percentile(v, (50, 90, 95, 99)) / 1e6
        assert (stats.p50, stats.p90, stats.p95, stats.p99) == tuple(want)
        assert stats.percentiles == dict(
            zip(("p99.9", "p25", "p100"), np.percentile(v, extra) / 1e6, strict=True)
        )
        assert (stats.min, stats.max) == (v.min() / 1e6, v.max() / 1e6)
        assert stats.mean == pytest.approx(v.mean() / 1e6, rel=1e-14)
        assert stats.std == pytest.approx(v.std() / 1e6, rel=1e-12)

    good = both(names.GOOD)
    assert 0 < good < 630
    assert res.goodput is not None
    assert res.goodput.ratio == good / 700  # share of ALL requests, failed ones included
    assert res.goodput.rps == good / 12.5
    assert res.goodput.slo == SLO
    assert res.client is not None
    assert (res.client.cpu_pct, res.client.saturated, res.client.reason) == (35.0, False, None)


def test_results_serialise_as_camel_case_status(two_workers: Workers) -> None:
    a, b, _ = two_workers
    merged = merge_snapshots([snapshot(a, 0, elapsed_s=1.0), snapshot(b, 1, elapsed_s=1.0)])
    gpu = GpuResults(energy_j=10.0, gpus=1)
    doc = to_wire(build_results(merged, slo=None, source="local", gpu=gpu))
    assert {"ttftMs", "itlMs", "durationS", "requests", "throughput"} <= set(doc)
    assert "goodput" not in doc  # no SLO, no goodput
    assert doc["gpu"]["energyJ"] == 10.0
    assert Results.model_validate(doc).ttft_ms is not None


def test_live_snapshots_give_estimates_and_incomplete_results(two_workers: Workers) -> None:
    a, b, union = two_workers
    snaps = [
        snapshot(a, 0, elapsed_s=10.0, state="LIVE", include_values=False),
        snapshot(b, 1, elapsed_s=10.0),
    ]
    merged = merge_snapshots(snaps)
    assert not merged.complete
    res = build_results(merged, slo=SLO, source="live")
    assert not res.complete
    assert res.ttft_ms is not None
    exact = np.percentile(union[names.TTFT], (50, 90, 99)) / 1e6
    for est, x in zip((res.ttft_ms.p50, res.ttft_ms.p90, res.ttft_ms.p99), exact, strict=True):
        assert abs(est - x) <= REL_ERROR * x
    assert res.ttft_ms.mean == pytest.approx(union[names.TTFT].mean() / 1e6, rel=1e-14)


def test_interrupted_worker_makes_results_incomplete(two_workers: Workers) -> None:
    a, b, _ = two_workers
    merged = merge_snapshots(
        [snapshot(a, 0, elapsed_s=3.0), snapshot(b, 1, elapsed_s=3.0, interrupted=True)]
    )
    assert merged.interrupted and not merged.complete


@pytest.mark.parametrize(
    ("cpu", "lag_ms", "saturated", "reason"),
    [
        (80.0, 0.5, False, None),
        (93.0, 0.5, True, "client CPU"),
        (10.0, 1e6, True, "receive lag"),
    ],
)
def test_client_saturation(cpu: float, lag_ms: float, saturated: bool, reason: str | None) -> None:
    reg, _ = worker_registry(3, 50)
    res = build_results(
        merge_snapshots([snapshot(reg, 0, elapsed_s=1.0, cpu=cpu, lag_ms=lag_ms)]),
        slo=None,
        source="local",
    )
    assert res.client is not None
    assert res.client.saturated is saturated
    if reason is None:
        assert res.client.reason is None
    else:
        assert res.client.reason is not None and reason in res.client.reason


def test_receive_lag_threshold_is_ten_percent_of_ttft_p50() -> None:
    reg = Registry()
    reg.series(names.TTFT).record_many([100_000_000] * 5)  # TTFT p50 = 100 ms
    below = build_results(
        merge_snapshots([snapshot(reg, 0, elapsed_s=1.0, lag_ms=10.0)]), slo=None, source="local"
    )
    above = build_results(
        merge_snapshots([snapshot(reg, 0, elapsed_s=1.0, lag_ms=10.01)]), slo=None, source="local"
    )
    assert below.client is not None and not below.client.saturated
    assert above.client is not None and above.client.saturated


def test_send_lag_over_ten_percent_of_ttft_p50_marks_the_client_saturated() -> None:
    """The open loop's send lag (actual minus scheduled send) is the client's own delay."""
    results = []
    for send_lag_ns in (10_000_000, 10_010_000):  # TTFT p50 = 100 ms: 10 % is 10 ms
        reg = Registry()
        reg.series(names.TTFT).record_many([100_000_000] * 5)
        reg.series(names.SEND_LAG).record_many([0] * 99 + [send_lag_ns] * 2)
        results.append(
            build_results(
                merge_snapshots([snapshot(reg, 0, elapsed_s=1.0, lag_ms=0.01)]),
                slo=None,
                source="local",
            )
        )
    below, above = (r.client for r in results)
    assert below is not None and not below.saturated and below.send_lag_p99_ms == 10.0
    assert above is not None and above.saturated
    assert above.reason is not None and "send lag p99 10 ms" in above.reason
    assert "receive lag" not in above.reason


def test_empty_run_has_zero_rates_and_no_latencies() -> None:
    reg = Registry()
    res = build_results(
        merge_snapshots([snapshot(reg, 0, elapsed_s=0.0)]), slo=SLO, source="terminationMessage"
    )
    assert (res.requests.total, res.throughput.rps, res.ttft_ms) == (0, 0.0, None)
    assert res.goodput is not None and res.goodput.ratio == 0.0


def test_merge_rejects_bad_input() -> None:
    reg = Registry()
    with pytest.raises(ValueError, match="no snapshots"):
        merge_snapshots([])
    s = snapshot(reg, 0, elapsed_s=1.0)
    with pytest.raises(ValueError, match="per worker"):
        merge_snapshots([s, s])
    other = snapshot(reg, 1, elapsed_s=1.0)
    other.run = "r2"
    with pytest.raises(ValueError, match="different runs"):
        merge_snapshots([s, other])


# --------------------------------------------------------------------------- final snapshots


def operator_sources(
    complete: Mapping[int, MetricsSnapshot],
    termination: Mapping[int, MetricsSnapshot],
    latest: Mapping[int, MetricsSnapshot],
) -> list[tuple[Source, Mapping[int, MetricsSnapshot]]]:
    """The operator's sources, strongest first."""
    return [("pubsub", complete), ("terminationMessage", termination), ("live", latest)]


def snap(
    worker: int, state: str = "COMPLETE", ok: int = 10, ttft: list[int] | None = None
) -> MetricsSnapshot:
    """A worker's snapshot of ``ok`` requests with these TTFTs (default 1, 2, ... ms)."""
    reg = Registry()
    reg.series(names.TTFT).record_many(ttft or [1_000_000 * (i + 1) for i in range(ok)])
    reg.counter(names.REQUESTS).inc(ok)
    reg.counter(names.REQUESTS_OK).inc(ok)
    reg.counter(names.OUTPUT_TOKENS_TOTAL).inc(8 * ok)
    return snapshot(reg, worker, elapsed_s=2.0, state=state)


def test_final_sources_prefer_pubsub_then_termination_then_live() -> None:
    c0, t1, l1 = snap(0), snap(1), snap(1, state="LIVE")
    f = final_snapshots(2, [("pubsub", {0: c0, 1: t1})])
    assert f is not None and f.source == "pubsub" and not f.missing
    f = final_snapshots(2, operator_sources({0: c0}, {1: t1}, {1: l1}))
    assert f is not None and f.source == "terminationMessage" and f.snapshots[1] is t1
    f = final_snapshots(2, operator_sources({0: c0}, {}, {1: l1}))
    assert f is not None and f.source == "live"
    f = final_snapshots(3, operator_sources({0: c0}, {}, {1: l1}))
    assert f is not None and f.missing == [2] and f.source == "live"
    assert final_snapshots(2, operator_sources({}, {}, {})) is None
    # local mode's sources: a worker's results file ranks between pub/sub and live
    local: list[tuple[Source, Mapping[int, MetricsSnapshot]]] = [
        ("pubsub", {0: c0}),
        ("local", {1: t1}),
        ("live", {1: l1}),
    ]
    f = final_snapshots(2, local)
    assert f is not None and f.source == "local" and f.snapshots[1] is t1


def test_results_are_exact_across_workers_and_incomplete_from_live() -> None:
    a, b = snap(0, ttft=[1_000_000, 3_000_000]), snap(1, ttft=[2_000_000, 4_000_000, 5_000_000])
    f = final_snapshots(2, operator_sources({0: a, 1: b}, {}, {}))
    assert f is not None
    res = build_final_results(f, slo=None, gpu=None)
    assert res["complete"] is True and res["source"] == "pubsub"
    assert res["ttftMs"]["p50"] == 3.0  # numpy over the union [1,2,3,4,5] ms
    live = final_snapshots(2, operator_sources({0: a}, {}, {1: snap(1, state="LIVE")}))
    assert live is not None
    assert build_final_results(live, slo=None, gpu=None)["complete"] is False


def test_termination_message_roundtrip() -> None:
    text = json.dumps(
        {
            "run": "ns.r",
            "worker": 1,
            "state": "COMPLETE",
            "interrupted": False,
            "phase": "done",
            "elapsed_s": 2.5,
            "n_pending": 0,
            "counters": {"requests_total": 7, "requests_ok": 7},
            "gauges": {"client_cpu_pct": 3.0},
            "series": {"ttft_ns": {"n": 7, "p50": 1.0, "p99": 2.0}},
        }
    )
    s = parse_termination_message(text, "ns.r")
    assert s is not None and s.worker == 1 and s.counters["requests_ok"] == 7
    assert s.elapsed_s == 2.5 and s.state == "COMPLETE"
    assert parse_termination_message(text, "other.run") is None
    assert parse_termination_message("not json", "ns.r") is None
    assert parse_termination_message("", "ns.r") is None


def test_verdict_reasons() -> None:
    def res(total: int, ok: int, by: dict[str, int]) -> dict[str, object]:
        return {"requests": {"total": total, "ok": ok, "failed": total - ok, "byReason": by}}

    assert verdict(res(3, 1, {"http_5xx": 2}))[0] is True
    assert verdict(res(3, 0, {"connection": 3}))[1] == "TargetUnreachable"
    assert verdict(res(4, 0, {"http_5xx": 3, "timeout": 1}))[1] == "AllRequestsFailed"
    assert verdict(res(0, 0, {}))[1] == "NoRequests"


def test_bound_results_trims() -> None:
    doc = {
        "requests": {"byReason": {f"r{i}": i for i in range(2000)}},
        "gpu": {"agents": ["a"] * 10},
    }
    out = bound_results(doc, limit=2000)
    assert len(out["requests"]["byReason"]) == 8 and "agents" not in out["gpu"]


def test_bound_results_drops_prometheus_per_gpu_values_before_its_summary() -> None:
    gpus = {
        f"n/{i}": {"uuid": f"GPU-{i}", "metrics": {"power": {"current": "1" * 90}}}
        for i in range(40)
    }
    prom = {
        "summary": {"gpus": 40, "energyWindowJ": 10.0},
        "crossCheck": {"energyJ": {}},
        "gpus": gpus,
    }
    doc = {"requests": {"total": 1}, "gpu": {"energyJ": 9.0, "prometheus": prom}}
    out = bound_results(doc, limit=2000)
    kept = out["gpu"]["prometheus"]
    assert kept["gpus"] == {} and "40 GPUs" in kept["truncated"]
    assert kept["summary"]["energyWindowJ"] == 10.0 and "crossCheck" in kept
    assert len(json.dumps(out)) <= 2000


# --------------------------------------------------------------------------- tokens, percentiles


def _with_usage(worker: int, ok: int, from_usage: int) -> MetricsSnapshot:
    s = snap(worker, ok=ok)
    s.counters[names.BENCHOP_COUNTED] = ok - from_usage  # counted: the uncommon case
    return s


@pytest.mark.parametrize(
    ("usage", "tokenizer", "source"),
    [
        ((10, 10), None, "usage"),
        ((0, 0), None, "estimate"),
        ((0, 0), "tok.json", "tokenizer"),
        ((10, 3), "tok.json", "mixed"),
        ((10, 0), None, "mixed"),
    ],
)
def test_results_say_how_tokens_were_counted(
    usage: tuple[int, int], tokenizer: str | None, source: str
) -> None:
    f = final_snapshots(
        2, [("pubsub", {0: _with_usage(0, 10, usage[0]), 1: _with_usage(1, 10, usage[1])})]
    )
    assert f is not None
    tok = None if tokenizer is None else TokenizerSpec(file=f"/models/{tokenizer}")
    res = build_final_results(f, slo=None, gpu=None, tokenizer=tok)
    assert res["tokens"] == {
        "source": source,
        "fromUsage": sum(usage),
        **({} if tokenizer is None else {"tokenizer": tokenizer}),
    }


@pytest.mark.parametrize(
    ("benchop_counted", "not_streamed", "per_chunk"),
    [
        (0, 0, 2.5),  # streamed, every count from usage: 50 tokens in 20 chunks
        (1, 0, None),  # a request counted by benchop: its tokens are chunks, no ratio
        (0, 1, None),  # a non-streamed answer has no chunks to compare with
    ],
)
def test_tokens_per_chunk_only_when_every_streamed_count_is_the_servers(
    benchop_counted: int, not_streamed: int, per_chunk: float | None
) -> None:
    s = snap(0, ok=10)
    s.counters.update(
        {
            names.OUTPUT_TOKENS_TOTAL: 50,
            names.CONTENT_CHUNKS: 20,
            names.BENCHOP_COUNTED: benchop_counted,
            names.NOT_STREAMED: not_streamed,
        }
    )
    f = final_snapshots(1, [("pubsub", {0: s})])
    assert f is not None
    tokens = build_final_results(f, slo=None, gpu=None)["tokens"]
    assert tokens.get("tokensPerChunk") == per_chunk
    assert tokens["source"] == ("usage" if benchop_counted == 0 else "mixed")


def test_results_without_an_ok_request_say_nothing_about_tokens() -> None:
    f = final_snapshots(1, [("pubsub", {0: snap(0, ok=0, ttft=[1])})])
    assert f is not None and "tokens" not in build_final_results(f, slo=None, gpu=None)


def test_extra_percentiles_are_the_first_thing_the_size_bound_drops() -> None:
    f = final_snapshots(1, [("pubsub", {0: snap(0, ok=200)})])
    assert f is not None
    many = ReportSpec(percentiles=[1.0 * q for q in range(80, 96)])
    res = build_final_results(f, slo=None, gpu=None, report=many)
    assert len(res["ttftMs"]["percentiles"]) == 14  # p90 and p95 are two of the four
    assert res["ttftMs"]["percentiles"]["p80"] == pytest.approx(
        float(np.percentile(np.arange(1, 201), 80))
    )
    size = len(json.dumps(res, separators=(",", ":")))
    assert bound_results(json.loads(json.dumps(res)), limit=size) == res  # fits: kept
    small = bound_results(json.loads(json.dumps(res)), limit=size - 10)
    assert "percentiles" not in small["ttftMs"]
    assert small["ttftMs"]["p95"] == res["ttftMs"]["p95"]
