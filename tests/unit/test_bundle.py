"""The results bundle: timeline rows, results.json, timeseries.csv, the ConfigMap bound, the
records merge and the results-directory check."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
from test_results import snapshot

from benchop import bundle as files
from benchop.core import bundle
from benchop.core.results import merge_snapshots
from benchop.loadgen import checkpoint as ckpt
from benchop.loadgen.records import RequestRecord, registry_from, timeline_from
from benchop.metrics import buckets
from benchop.metrics.timeline import coarsen, merge_rows, percentiles_ms

T0 = 1_800_000_000 * 10**9  # a whole second, ns


def rec(
    i: int, *, worker: int = 0, end_s: float, ok: bool = True, attempt: int = 1
) -> RequestRecord:
    rng = np.random.default_rng(i)
    ttft = int(rng.integers(10_000_000, 90_000_000))
    itl = [int(x) for x in rng.integers(1_000_000, 9_000_000, size=7)]
    e2e = ttft + sum(itl)
    return RequestRecord(
        id=f"w{worker}-a{attempt}-{i}",
        worker=worker,
        attempt=attempt,
        index=i,
        sent_ns=T0 + int(end_s * 1e9) - e2e,
        outcome="ok" if ok else "timeout",
        ttft_ns=ttft if ok else None,
        itl_ns=itl if ok else [],
        e2e_ns=e2e,
        input_tokens=16,
        output_tokens=8 if ok else 0,
        good=ok,
    )


def records(n: int, worker: int = 0) -> list[RequestRecord]:
    return [rec(i, worker=worker, end_s=i * 0.37, ok=i % 7 != 3) for i in range(n)]


def test_timeline_rows_count_each_request_in_the_second_it_ended() -> None:
    recs = records(50)
    rows = timeline_from(recs)
    ends = [(r.sent_ns + r.e2e_ns) // 10**9 for r in recs]
    assert [r.t_s for r in rows] == list(range(min(ends), max(ends) + 1))
    for row in rows:
        mine = [r for r, e in zip(recs, ends, strict=True) if e == row.t_s]
        assert row.requests == len(mine)
        assert row.ok == sum(r.outcome == "ok" for r in mine)
        assert row.output_tokens == sum(r.output_tokens for r in mine)
        assert sum(row.itl.values()) == sum(len(r.itl_ns) for r in mine)
        ttft = [r.ttft_ns for r in mine if r.ttft_ns is not None]
        if ttft:  # the estimate is within the bucket error of numpy's percentile
            (p50,) = percentiles_ms(row.ttft, [50])
            assert p50 == pytest.approx(np.percentile(ttft, 50) / 1e6, rel=2 * buckets.REL_ERROR)


def test_rows_of_workers_merge_into_the_rows_of_the_union_and_coarsen_exactly() -> None:
    a, b = records(40, worker=0), records(30, worker=1)
    merged = merge_rows([timeline_from(a), timeline_from(b)])
    assert merged == timeline_from(a + b)
    coarse = coarsen(merged, 5)
    assert [r.t_s for r in coarse] == [merged[0].t_s + 5 * i for i in range(len(coarse))]
    assert sum(r.requests for r in coarse) == 70
    assert sum(sum(r.e2e.values()) for r in coarse) == sum(sum(r.e2e.values()) for r in merged)


def test_results_document_has_every_percentile_exact_and_the_histograms() -> None:
    recs = records(200)
    s = snapshot(registry_from(recs), 0, elapsed_s=2.0)
    merged = merge_snapshots([s])
    doc = bundle.results_document(
        merged,
        results={"complete": True},
        run={"name": "r"},
        spec={"x": 1},
        percentiles=[99.9, 50, 95],
    )
    assert doc["percentiles"] == ["p50", "p95", "p99.9"]
    ttft = [r.ttft_ns for r in recs if r.ttft_ns is not None]
    m = doc["metrics"]["ttft_ms"]
    assert m["exact"] is True and m["count"] == len(ttft) and m["unit"] == "ms"
    assert m["percentiles"]["p99.9"] == pytest.approx(np.percentile(ttft, 99.9) / 1e6, rel=1e-12)
    assert m["mean"] == pytest.approx(np.mean(ttft) / 1e6, rel=1e-12)
    hist = doc["histograms"]["itl_ms"]["buckets"]
    assert sum(n for _, _, n in hist) == sum(len(r.itl_ns) for r in recs)
    assert all(lo <= hi for lo, hi, _ in hist) and [h[0] for h in hist] == sorted(
        h[0] for h in hist
    )
    assert doc["metrics"]["output_tokens"]["unit"] == "tokens"
    json.dumps(doc, allow_nan=False)  # NaN-free


def test_results_document_estimates_percentiles_without_raw_values() -> None:
    s = snapshot(registry_from(records(100)), 0, elapsed_s=2.0)
    s.series = {k: msgspec.structs.replace(v, values=None) for k, v in s.series.items()}
    m = bundle.results_document(merge_snapshots([s]), results={}, run={}, spec={})["metrics"]
    assert m["ttft_ms"]["exact"] is False and m["ttft_ms"]["percentiles"]["p50"] > 0


def test_timeseries_csv_columns_rates_and_gpu_averages() -> None:
    rows = timeline_from(records(30))
    gpu = [
        bundle.GpuPoint(rows[1].t_s + 0.2, 300.0, 50.0),
        bundle.GpuPoint(rows[1].t_s + 0.7, 500.0, 70.0),
    ]
    text = bundle.timeseries_csv(rows, start_s=rows[0].t_s - 0.5, gpu=gpu)
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == len(rows)
    assert table[0]["t_s"] == "0.5" and table[1]["gpu_power_w"] == "400.0"
    assert table[1]["gpu_util_pct"] == "60.0" and table[0]["gpu_power_w"] == ""
    for t, r in zip(table, rows, strict=True):
        assert int(t["failed"]) == r.requests - r.ok and float(t["rps"]) == r.ok
        assert (t["ttft_p99_ms"] == "") == (not r.ttft)
    two = list(csv.DictReader(io.StringIO(bundle.timeseries_csv(rows, interval_s=2))))
    assert float(two[0]["rps"]) == (rows[0].ok + rows[1].ok) / 2


def test_configmap_files_fit_the_limit_by_coarser_rows() -> None:
    rows = timeline_from([rec(i, end_s=i * 1.0) for i in range(3000)])  # 50 minutes
    doc = {"kind": "BenchmarkRunResults", "metrics": {}, "histograms": {}}
    fine, interval = bundle.configmap_files(doc, rows)
    assert (
        interval == 1
        and json.loads(fine["results.json"])["files"]["timeseries.csv"]["rows"] == 3000
    )
    small, interval = bundle.configmap_files(doc, rows, limit=60_000)
    assert interval > 1 and sum(len(v) for v in small.values()) <= 60_000
    ts = json.loads(small["results.json"])["files"]["timeseries.csv"]
    assert (
        ts["intervalS"] == interval and ts["rows"] == len(small["timeseries.csv"].splitlines()) - 1
    )
    tiny, interval = bundle.configmap_files(doc, rows, limit=300)
    assert interval == 0 and "timeseries.csv" not in tiny


# --------------------------------------------------------------------------- on disk


def write_worker(
    d: Path, recs: list[RequestRecord], *, attempt: int = 1, tail: bytes = b""
) -> None:
    d.mkdir(parents=True)
    enc = msgspec.json.Encoder()
    (d / ckpt.RECORDS).write_bytes(b"".join(enc.encode(r) + b"\n" for r in recs) + tail)
    state = ckpt.CheckpointState(
        run="r", worker=0, workers=1, spec_hash="x", attempt=attempt, attempt_started_ns=T0
    )
    ckpt.save_state(d, state)


def test_merge_records_orders_by_end_and_keeps_the_checkpoint_rules(tmp_path: Path) -> None:
    a = [rec(i, worker=0, end_s=i * 0.5) for i in range(10)]
    cancelled = msgspec.structs.replace(rec(99, worker=1, end_s=0.1), outcome="cancelled")
    b = [rec(i, worker=1, end_s=i * 0.3, attempt=2) for i in range(10)]
    write_worker(tmp_path / "w0", a + a[:2], tail=b'{"id": "torn')  # duplicates, torn line
    write_worker(tmp_path / "w1", [cancelled, *b], attempt=2)  # attempt 1's cancelled one
    out = tmp_path / "records.jsonl"
    n = files.merge_records([tmp_path / "w0", tmp_path / "w1", tmp_path / "missing"], out)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert n == len(lines) == 20
    assert sorted(x["id"] for x in lines) == sorted(r.id for r in a + b)
    ends = [x["sent_ns"] + x["e2e_ns"] for x in lines]
    assert ends == sorted(ends)
    assert not list(tmp_path.glob("*.tmp"))


def test_merge_records_puts_slightly_late_records_in_order(tmp_path: Path) -> None:
    """A worker appends in completion order; send time + e2e may run microseconds behind."""
    recs = [rec(i, end_s=i * 0.001) for i in range(50)]
    shuffled = [recs[i ^ 1] for i in range(50)]  # each pair swapped: 1 ms out of order
    write_worker(tmp_path / "w0", shuffled)
    out = tmp_path / "records.jsonl"
    assert files.merge_records([tmp_path / "w0"], out) == 50
    ends = [json.loads(x)["sent_ns"] + json.loads(x)["e2e_ns"] for x in out.read_text().split()]
    assert ends == sorted(ends)


def test_results_dir_check(tmp_path: Path) -> None:
    files.check_results_dir(tmp_path / "new" / "deep")  # created
    assert (tmp_path / "new" / "deep").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        files.check_results_dir(tmp_path / "file")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no benchop results"):
        files.check_results_dir(other)
    old = tmp_path / "old"
    (old / "child").mkdir(parents=True)
    (old / "results.json").write_text("{}")
    (old / "child" / "results.json").write_text("{}")
    (old / "keep.txt").write_text("x")
    files.check_results_dir(old)  # an earlier bundle: replaced
    files.clear_bundle(old)
    assert sorted(p.name for p in old.iterdir()) == ["keep.txt"]


def test_results_json_has_the_percentiles_the_spec_asks_for() -> None:
    from benchop.api.workload import ReportSpec

    qs = bundle.percentiles_for(ReportSpec(percentiles=[50, 99.99, 75]))
    assert qs == [50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99]
    assert bundle.percentiles_for(None) == list(bundle.DEFAULT_PERCENTILES)
    recs = records(300)
    merged = merge_snapshots([snapshot(registry_from(recs), 0, elapsed_s=2.0)])
    doc = bundle.results_document(merged, results={}, run={}, spec={}, percentiles=qs)
    e2e = [r.e2e_ns for r in recs if r.outcome == "ok"]
    got = doc["metrics"]["e2e_ms"]["percentiles"]
    assert list(got) == ["p50", "p75", "p90", "p95", "p99", "p99.9", "p99.99"]
    assert got["p99.99"] == pytest.approx(np.percentile(e2e, 99.99) / 1e6, rel=1e-12)
