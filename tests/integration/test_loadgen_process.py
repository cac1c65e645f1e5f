"""``benchop loadgen`` as a real process: SIGKILL + restart resumes, SIGTERM drains.

The mock server runs in the test's event loop; its request counter is the
independent witness that completed requests are not sent again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from benchagent.codec import MsgpackCodec
from benchagent.wire import MetricsSnapshot
from benchop.loadgen import checkpoint
from benchop.loadgen.records import registry_from
from benchop.loadgen.snapshots import FINAL
from benchop.metrics import names
from benchop.mockserver import MockConfig, MockServer, start_mock_server

pytestmark = pytest.mark.timeout(90)

CONCURRENCY = 4
WARMUP = 8


@pytest.fixture
async def mock() -> AsyncIterator[MockServer]:
    async with await start_mock_server(MockConfig(ttft=0.01, itl=0.004)) as server:
        yield server


def write_spec(path: Path, url: str, profiling: dict[str, Any]) -> Path:
    manifest = {
        "apiVersion": "benchop.io/v1alpha1",
        "kind": "BenchmarkRun",
        "metadata": {"name": "proc"},
        "spec": {
            "target": {"model": "benchop-mock", "url": url},
            "workload": {"promptTokens": 16, "outputTokens": 8, "seed": 2},
            "load": {"mode": "concurrency", "concurrency": CONCURRENCY},
            "phases": {"warmup": {"requests": WARMUP}, "profiling": profiling},
            "preflight": {"enabled": False},  # the mock's requests are counted exactly
        },
    }
    path.write_text(json.dumps(manifest))
    return path


async def start(spec: Path, results: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchop", "loadgen", "--spec", str(spec),
        "--results-dir", str(results), "--termination-log", str(results / "term"),
        "--log-level", "WARNING",
    )  # fmt: skip


async def until(condition: Callable[[], bool], within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached before the deadline")
        await asyncio.sleep(0.005)


def lines(results: Path) -> int:
    try:
        return (results / checkpoint.RECORDS).read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def final(results: Path) -> MetricsSnapshot:
    snap = MsgpackCodec().decode((results / FINAL).read_bytes())
    assert isinstance(snap, MetricsSnapshot)
    return snap


def assert_matches_records(snap: MetricsSnapshot, results: Path) -> None:
    counters, _, series = registry_from(checkpoint.load(results).records).snapshot(True)
    assert {k: v for k, v in snap.counters.items() if k in counters} == counters
    for name, s in series.items():
        assert msgspec.structs.replace(snap.series[name], m2=s.m2) == s, name


async def test_sigkill_then_restart_loses_and_duplicates_nothing(
    mock: MockServer, tmp_path: Path
) -> None:
    total = 240
    spec = write_spec(tmp_path / "run.json", mock.url, {"requests": total})
    results = tmp_path / "results"
    first = await start(spec, results)
    await until(lambda: lines(results) >= 60)
    first.send_signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    sent_first = mock.stats["requests"]
    done_first = len(checkpoint.load(results).records)
    lost = sent_first - WARMUP - done_first  # in flight (or not yet flushed) at the kill
    assert 0 <= lost <= 2 * CONCURRENCY
    assert done_first < total

    second = await start(spec, results)
    assert await asyncio.wait_for(second.wait(), 60) == 0
    snap = final(results)
    assert snap.state == "COMPLETE" and not snap.interrupted
    assert snap.counters[names.REQUESTS] == snap.counters[names.REQUESTS_OK] == total
    loaded = checkpoint.load(results)
    assert loaded.state is not None and loaded.state.attempt == 2
    ids = [r.id for r in loaded.records]
    assert len(ids) == len(set(ids)) == total
    assert sum(r.attempt == 1 for r in loaded.records) == done_first
    # no warmup again, no completed request sent again: only the remainder was sent
    assert mock.stats["requests"] == sent_first + (total - done_first)
    assert_matches_records(snap, results)


async def test_sigkill_in_a_duration_bound_counts_the_earlier_time(
    mock: MockServer, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "run.json", mock.url, {"duration": "3s"})
    results = tmp_path / "results"
    first = await start(spec, results)
    await until(lambda: lines(results) >= 40)  # ~1 s of profiling
    first.send_signal(signal.SIGKILL)
    await first.wait()
    loaded = checkpoint.load(results)
    before = loaded.elapsed_s
    assert 0.3 < before < 2.8
    second = await start(spec, results)
    assert await asyncio.wait_for(second.wait(), 60) == 0
    snap = final(results)
    assert 3.0 <= snap.elapsed_s < 3.6  # earlier attempt + the rest, not 3 s more
    records = checkpoint.load(results).records
    second_part = [r for r in records if r.attempt == 2]
    span = (max(r.sent_ns for r in second_part) - min(r.sent_ns for r in second_part)) / 1e9
    assert span < 3.0 - before + 0.3
    assert snap.counters[names.REQUESTS] == len(records)
    assert_matches_records(snap, results)


async def test_sigterm_drains_and_writes_an_interrupted_final(
    mock: MockServer, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "run.json", mock.url, {"requests": 100_000})
    results = tmp_path / "results"
    proc = await start(spec, results)
    await until(lambda: lines(results) >= 30)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 128 + signal.SIGTERM
    snap = final(results)
    assert snap.state == "COMPLETE" and snap.interrupted and snap.n_pending == 0
    assert snap.counters["failed_cancelled"] == 0  # the in-flight requests finished
    assert snap.counters[names.REQUESTS] == mock.stats["requests"] - WARMUP
    summary = json.loads((results / "term").read_text())
    assert summary["interrupted"] is True and summary["state"] == "COMPLETE"
    assert len((results / "term").read_bytes()) <= 4096
    assert_matches_records(snap, results)


async def test_bad_spec_fails_with_the_field_named(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "kind: BenchmarkRun\napiVersion: benchop.io/v1alpha1\nmetadata: {name: x}\n"
        "spec:\n  target: {model: m}\n  load: {mode: concurrency, concurrency: -3}\n"
        "  phases: {profiling: {requests: 5}}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchop", "loadgen", "--spec", str(spec),
        "--results-dir", str(tmp_path / "r"), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"spec.load.concurrency" in err
