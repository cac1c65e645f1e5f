"""The operator's result sourcing, live view, verdict and GPU persistence (pure parts)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import msgspec
import numpy as np

from benchagent.transport import Publisher
from benchagent.wire import BaselineAck, GpuSample, MetricsSnapshot, SeriesSummary
from benchop.api.models import LabelSelector
from benchop.gpuresults import gpu_results
from benchop.metrics import names
from benchop.metrics.stats import encode_values
from benchop.operator.gatebridge import (
    gate_instant,
    gate_record,
    gate_timeout_s,
    gpu_from_status,
    profiling_window,
    selector_string,
)
from benchop.operator.settings import OperatorSettings
from benchop.operator.snapshots import (
    SnapshotCollector,
    bound_results,
    build_final_results,
    final_snapshots,
    live_status,
    parse_termination_message,
    verdict,
)


def snap(
    worker: int, state: str = "COMPLETE", ok: int = 10, ttft: list[int] | None = None
) -> MetricsSnapshot:
    values = np.array(ttft or [1_000_000 * (i + 1) for i in range(ok)], dtype=np.int64)
    series = {
        names.TTFT: SeriesSummary(
            count=len(values),
            sum=int(values.sum()),
            m2=float(((values - values.mean()) ** 2).sum()),
            min=int(values.min()),
            max=int(values.max()),
            values=encode_values(values),
        )
    }
    return MetricsSnapshot(
        run="ns.r",
        worker=worker,
        seq=5,
        state=state,  # type: ignore[arg-type]
        phase="done",
        time_ns=0,
        elapsed_s=2.0,
        n_pending=0,
        counters={
            names.REQUESTS: ok,
            names.REQUESTS_OK: ok,
            names.OUTPUT_TOKENS_TOTAL: 8 * ok,
        },
        series=series,
    )


def test_final_sources_prefer_pubsub_then_termination_then_live() -> None:
    c0, t1, l1 = snap(0), snap(1), snap(1, state="LIVE")
    f = final_snapshots(2, {0: c0, 1: t1}, {}, {})
    assert f is not None and f.source == "pubsub" and not f.missing
    f = final_snapshots(2, {0: c0}, {1: t1}, {1: l1})
    assert f is not None and f.source == "terminationMessage" and f.snapshots[1] is t1
    f = final_snapshots(2, {0: c0}, {}, {1: l1})
    assert f is not None and f.source == "live"
    f = final_snapshots(3, {0: c0}, {}, {1: l1})
    assert f is not None and f.missing == [2] and f.source == "live"
    assert final_snapshots(2, {}, {}, {}) is None


def test_results_are_exact_across_workers_and_incomplete_from_live() -> None:
    a, b = snap(0, ttft=[1_000_000, 3_000_000]), snap(1, ttft=[2_000_000, 4_000_000, 5_000_000])
    f = final_snapshots(2, {0: a, 1: b}, {}, {})
    assert f is not None
    res = build_final_results(f, slo=None, gpu=None)
    assert res["complete"] is True and res["source"] == "pubsub"
    assert res["ttftMs"]["p50"] == 3.0  # numpy over the union [1,2,3,4,5] ms
    live = final_snapshots(2, {0: a}, {}, {1: snap(1, state="LIVE")})
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


def test_live_status_is_bounded_and_camel_case() -> None:
    live = live_status(
        {0: snap(0, "LIVE"), 1: snap(1, "LIVE")}, phase="Profiling", workers_connected=2, now="t"
    )
    assert live["requests"] == 20 and live["rps"] == 10.0 and live["workersConnected"] == 2
    assert live["ttftP50Ms"] > 0 and live["phase"] == "Profiling"
    assert len(json.dumps(live)) < 1000


def test_bound_results_trims() -> None:
    doc = {
        "requests": {"byReason": {f"r{i}": i for i in range(2000)}},
        "gpu": {"agents": ["a"] * 10},
    }
    out = bound_results(doc, limit=2000)
    assert len(out["requests"]["byReason"]) == 8 and "agents" not in out["gpu"]


def _sample(
    uuid: str, t_s: float, energy_mj: int, util: float, integral: float | None = None
) -> GpuSample:
    return GpuSample(
        index=0,
        uuid=uuid,
        name="sim",
        timestamp_ns=int(t_s * 1e9),
        gpu_util_pct=util,
        mem_copy_util_pct=0,
        mem_used_bytes=100,
        mem_total_bytes=1000,
        power_w=100,
        power_limit_w=300,
        energy_mj=energy_mj,
        temperature_c=40,
        sm_clock_mhz=1,
        mem_clock_mhz=1,
        util_integral_pct_s=integral,
    )


def _ack(boundary: str, samples: list[GpuSample]) -> BaselineAck:
    return BaselineAck(
        request_id="x",
        run="ns.r",
        phase_id="profiling",
        boundary=boundary,  # type: ignore[arg-type]
        agent="agent-a",
        node="n",
        success=True,
        simulated=True,
        samples=samples,
    )


def test_gate_records_persist_what_gpu_results_need() -> None:
    start = [_ack("START", [_sample("g0", 10, 1_000_000, 50), _sample("g1", 10, 2_000_000, 70)])]
    end = [_ack("END", [_sample("g0", 20, 3_000_000, 90), _sample("g1", 20, 2_500_000, 10)])]
    gates = {
        "START": gate_record(
            phase_id="profiling",
            start_at_ns=1,
            baseline=True,
            agents=["agent-a"],
            missing=[],
            acks=start,
        ),
        "END": gate_record(
            phase_id="profiling",
            start_at_ns=2,
            baseline=True,
            agents=["agent-a"],
            missing=[],
            acks=end,
        ),
    }
    json.dumps(gates)  # JSON-ready
    from_status = gpu_from_status(gates, output_tokens=100)
    direct = gpu_results(start, end, output_tokens=100, expected_agents=["agent-a"])
    assert from_status == direct
    assert from_status is not None and from_status.energy_j == 2500.0  # (2000 + 500) J
    assert from_status.joules_per_output_token == 25.0 and from_status.simulated


def test_gate_records_keep_the_util_integral_for_the_window_mean() -> None:
    start = [_ack("START", [_sample("g0", 10, 0, 50, integral=1_000.0)])]
    end = [_ack("END", [_sample("g0", 20, 1_000, 50, integral=1_300.0)])]
    gates = {
        b: gate_record(
            phase_id="profiling",
            start_at_ns=1,
            baseline=True,
            agents=["agent-a"],
            missing=[],
            acks=acks,
        )
        for b, acks in (("START", start), ("END", end))
    }
    from_status = gpu_from_status(json.loads(json.dumps(gates)), output_tokens=10)
    assert from_status is not None
    assert from_status.util_mean == 30.0  # (1300 - 1000) pct*s over 10 s, not (50 + 50) / 2
    assert from_status == gpu_results(start, end, output_tokens=10, expected_agents=["agent-a"])


def test_selector_string() -> None:
    sel = LabelSelector.model_validate(
        {
            "matchLabels": {"app": "vllm"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "x", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector_string(sel) == "app=vllm,tier in (a,b),!x"


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


def test_profiling_window_is_between_the_gates_baseline_reads() -> None:
    acks = [_ack("START", [_sample("g0", 10.0, 1, 0), _sample("g1", 10.2, 1, 0)])]
    rec = {"START": gate_record(
        phase_id="p", start_at_ns=int(11e9), baseline=True, agents=["agent-a"], missing=[],
        acks=acks, closed_at_ns=int(10.5e9),
    )}  # fmt: skip
    assert rec["START"]["closedAtNs"] == int(10.5e9)
    assert gate_instant(rec["START"]) == 10.1  # the mean of the samples' stamps
    assert profiling_window(rec) is None  # END not closed yet
    # no agents: when the gate closed; an older record without closedAtNs: startAtNs
    rec["END"] = gate_record(
        phase_id="p", start_at_ns=int(25e9), baseline=False, agents=[], missing=[], acks=[],
        closed_at_ns=int(24e9),
    )  # fmt: skip
    assert profiling_window(rec) == (10.1, 24.0)
    del rec["END"]["closedAtNs"]
    assert profiling_window(rec) == (10.1, 25.0)
    assert profiling_window({"START": rec["END"], "END": rec["START"]}) is None  # not in order
    assert gate_instant({"acks": []}) is None


def test_gate_timeout_flag_is_an_upper_bound_on_the_spec() -> None:
    assert gate_timeout_s(30.0, 10.0) == 10.0  # --gate-timeout=10s caps a 30s spec
    assert gate_timeout_s(5.0, 10.0) == 5.0  # the spec's (or the CRD default's) shorter one
    assert gate_timeout_s(5.0, None) == 5.0  # no flag: the spec


async def _until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.005)


async def test_collector_keeps_only_accepted_runs_and_bounds_message_size() -> None:
    in_progress = {"ns.a"}
    collector = SnapshotCollector(
        "127.0.0.1", 0, accept=in_progress.__contains__, max_message_bytes=1 << 20
    )
    assert collector._sub._sock.maxmsgsize == 1 << 20
    collector.start()
    pub = Publisher(collector.endpoint)
    seq = 0

    def of(run: str, state: str = "LIVE") -> MetricsSnapshot:
        return msgspec.structs.replace(snap(0, state), run=run, seq=seq)

    def both_sent() -> bool:
        nonlocal seq
        seq += 1
        pub.publish(of("ns.stranger"))
        pub.publish(of("ns.a"))
        return bool(collector.latest("ns.a")) and collector.rejected > 0

    try:
        await _until(both_sent)
        assert collector.latest("ns.stranger") == {} and collector.complete("ns.stranger") == {}
        in_progress.discard("ns.a")  # the run was released: a late snapshot is not kept again
        collector.forget("ns.a")
        rejected = collector.rejected
        seq += 1
        assert pub.publish(of("ns.a", "COMPLETE"))
        await _until(lambda: collector.rejected > rejected)
        assert collector.latest("ns.a") == {} and collector.complete("ns.a") == {}
    finally:
        pub.close()
        collector.close()


def test_collector_default_max_message_size_is_the_settings_default() -> None:
    collector = SnapshotCollector("127.0.0.1", 0)
    try:
        assert collector._sub._sock.maxmsgsize == OperatorSettings().snapshot_max_message_bytes
        assert OperatorSettings().snapshot_max_message_bytes == 256 * 1024 * 1024
    finally:
        collector.close()
