"""The load-generator worker in-process: real HTTP to the mock server, real ZMQ.

Each test checks the worker's numbers against an independent source: the mock
server's own counters, the records in records.jsonl, or what a fake gate
coordinator saw.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import zmq
import zmq.asyncio

from benchagent.codec import MsgpackCodec
from benchagent.transport import RequestServer
from benchagent.wire import (
    GateGranted,
    GateRequest,
    Message,
    MetricsSnapshot,
    ResumeReply,
    ResumeRequest,
)
from benchop.api.models import BenchmarkRunSpec
from benchop.loadgen import checkpoint
from benchop.loadgen.records import registry_from
from benchop.loadgen.snapshots import FINAL
from benchop.loadgen.worker import CheckpointMismatch, Worker, WorkerConfig, run_worker
from benchop.metrics import names
from benchop.mockserver import MockConfig, MockServer, Tally, start_mock_server, tally

pytestmark = pytest.mark.timeout(60)


def make_spec(
    url: str, load: dict[str, Any], phases: dict[str, Any], **extra: Any
) -> BenchmarkRunSpec:
    return BenchmarkRunSpec.model_validate(
        {
            "target": {"model": "benchop-mock", "url": url},
            "workload": {"promptTokens": 24, "outputTokens": 8, "seed": 5},
            "load": load,
            "phases": phases,
            # the tests count the mock's requests exactly: no preflight request among them
            # (tests/integration/test_preflight.py tests it)
            "preflight": {"enabled": False},
            **extra,
        }
    )


@pytest.fixture
async def mock() -> AsyncIterator[MockServer]:
    async with await start_mock_server(MockConfig(ttft=0.005, itl=0.001)) as server:
        yield server


async def until(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    """Wait for ``condition`` (a counter of the mock server) with a deadline."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached before the deadline")
        await asyncio.sleep(0.002)


def recompute(results_dir: Path) -> tuple[dict[str, int], dict[str, Any]]:
    reg = registry_from(checkpoint.load(results_dir).records)
    counters, _, series = reg.snapshot(include_values=True)
    return counters, series


def assert_matches_records(snap: MetricsSnapshot, results_dir: Path) -> None:
    """The snapshot's counters and series equal the recomputation from records.jsonl."""
    counters, series = recompute(results_dir)
    assert {k: v for k, v in snap.counters.items() if k in counters} == counters
    assert set(snap.series) == set(series)
    for name, s in series.items():
        got = snap.series[name]
        # exact: count, integer sum, min, max, histogram, raw values (so every percentile);
        # m2 is a float folded in different chunks, equal to rounding
        assert msgspec.structs.replace(got, m2=s.m2) == s, name
        assert got.m2 == pytest.approx(s.m2, rel=1e-9, abs=1e-6), name


async def test_fixed_concurrency_completes_n_requests_exactly(
    mock: MockServer, tmp_path: Path
) -> None:
    spec = make_spec(
        mock.url,
        {"mode": "concurrency", "concurrency": 4},
        {"warmup": {"requests": 6}, "profiling": {"requests": 60}},
        slo={"ttftMs": 1000},
    )
    out = await run_worker(
        WorkerConfig(spec=spec, run="r", results_dir=tmp_path, termination_log=tmp_path / "term")
    )
    snap = out.snapshot
    assert snap.state == "COMPLETE" and not snap.interrupted and snap.phase == "done"
    assert snap.counters[names.REQUESTS] == snap.counters[names.REQUESTS_OK] == 60
    assert snap.counters[names.GOOD] == 60
    assert snap.counters[names.OUTPUT_TOKENS_TOTAL] == 60 * 8
    assert snap.counters[names.INPUT_TOKENS_TOTAL] == 60 * 24  # usage echoes the word count
    assert snap.series[names.ITL].count == 60 * 7 and snap.n_pending == 0
    assert out.warmup_requests == 6 and mock.stats["requests"] == 66
    assert snap.series[names.TTFT].values is not None  # COMPLETE carries raw values
    assert_matches_records(snap, tmp_path)
    # the files: final snapshot, termination summary
    final = MsgpackCodec().decode((tmp_path / FINAL).read_bytes())
    assert final == snap
    summary = msgspec.json.decode((tmp_path / "term").read_bytes())
    assert summary["state"] == "COMPLETE" and summary["counters"][names.REQUESTS] == 60
    assert out.gates["START"].status == "ungated"


async def test_rate_mode_achieves_its_rate(mock: MockServer, tmp_path: Path) -> None:
    rate = 40.0
    spec = make_spec(
        mock.url,
        {"mode": "rate", "rate": rate, "arrival": "constant"},
        {"profiling": {"duration": "2s"}},
    )
    out = await run_worker(WorkerConfig(spec=spec, run="r", results_dir=tmp_path))
    records = sorted(checkpoint.load(tmp_path).records, key=lambda r: r.sent_ns)
    assert len(records) == pytest.approx(rate * 2, abs=2)
    sent = np.array([r.sent_ns for r in records], dtype=np.int64)
    achieved = (len(sent) - 1) / ((sent[-1] - sent[0]) / 1e9)
    assert achieved == pytest.approx(rate, rel=0.05)
    lags = np.array([r.send_lag_ns for r in records])
    assert np.median(np.abs(lags)) < 2_000_000  # sends on schedule (loose: shared CI cores)
    assert out.snapshot.series[names.SEND_LAG].count == len(records)
    assert_matches_records(out.snapshot, tmp_path)


async def test_poisson_rate_with_request_bound(mock: MockServer, tmp_path: Path) -> None:
    spec = make_spec(
        mock.url,
        {"mode": "rate", "rate": 100.0, "arrival": "poisson", "maxInFlight": 64},
        {"profiling": {"requests": 150}},
    )
    t0 = time.perf_counter()
    out = await run_worker(WorkerConfig(spec=spec, run="r", results_dir=tmp_path))
    wall = time.perf_counter() - t0
    assert out.snapshot.counters[names.REQUESTS] == 150 == mock.stats["requests"]
    assert 0.9 < wall < 4.0  # ~1.5 s of arrivals at 100/s
    assert_matches_records(out.snapshot, tmp_path)


async def test_injected_errors_are_counted_by_reason(tmp_path: Path) -> None:
    config = MockConfig(
        ttft=0.002,
        itl=0.0005,
        error_rate=0.1,
        rate_limit_rate=0.1,
        disconnect_rate=0.1,
        malformed_rate=0.1,
        seed=11,
    )
    async with await start_mock_server(config) as server:
        spec = make_spec(
            server.url,
            # ~35 % fail: a window of 50 may hold more than half; counted here, not ended
            {"mode": "concurrency", "concurrency": 8, "maxFailureRatio": 1},
            {"profiling": {"requests": 300}},
        )
        out = await run_worker(WorkerConfig(spec=spec, run="r", results_dir=tmp_path))
        stats = dict(server.stats)
    c = out.snapshot.counters
    assert c[names.REQUESTS] == 300 == stats["requests"]
    assert c["failed_http_5xx"] == stats["errors"] > 0
    assert c["failed_http_429"] == stats["rate_limited"] > 0
    assert c["failed_disconnected"] == stats["disconnects"] > 0
    assert c["failed_malformed_stream"] == stats["malformed"] > 0
    assert c[names.REQUESTS_FAILED] == 300 - c[names.REQUESTS_OK]
    # a malformed stream is abandoned: the server sees a client disconnect, unless it had
    # already written the whole response
    assert c[names.REQUESTS_OK] + c["failed_malformed_stream"] == (
        stats["ok"] + stats["client_disconnects"]
    )
    assert_matches_records(out.snapshot, tmp_path)


async def test_unreachable_server_is_counted_not_fatal(tmp_path: Path) -> None:
    spec = make_spec(
        "http://127.0.0.1:9/v1",  # discard port: connection refused
        {"mode": "concurrency", "concurrency": 2},
        {"profiling": {"requests": 5}},
    )
    out = await run_worker(WorkerConfig(spec=spec, run="r", results_dir=tmp_path))
    assert out.snapshot.counters["failed_connection"] == 5


async def test_gates_start_after_warmup_and_end_after_profiling(
    mock: MockServer, tmp_path: Path
) -> None:
    seen: list[tuple[GateRequest, int, int]] = []
    start_delay_ns = 100_000_000

    async def coordinator(msg: Message) -> Message | None:
        if isinstance(msg, ResumeRequest):
            return ResumeReply(run=msg.run, worker=msg.worker, status="ready")
        assert isinstance(msg, GateRequest)
        seen.append((msg, time.time_ns(), mock.stats["requests"]))
        return GateGranted(
            run=msg.run,
            phase_id=msg.phase_id,
            boundary=msg.boundary,
            worker=msg.worker,
            start_at_ns=time.time_ns() + start_delay_ns,
            baseline_captured=True,
        )

    server = RequestServer()
    serving = asyncio.create_task(server.serve(coordinator))
    try:
        spec = make_spec(
            mock.url,
            {"mode": "concurrency", "concurrency": 3},
            {"warmup": {"requests": 9}, "profiling": {"requests": 30}},
        )
        out = await run_worker(
            WorkerConfig(
                spec=spec, run="gated", results_dir=tmp_path, gate_endpoint=server.endpoint
            )
        )
    finally:
        server.close()
        serving.cancel()
    assert [(m.boundary, m.phase_id, m.run, m.worker, m.workers) for m, _, _ in seen] == [
        ("START", "profiling", "gated", 0, 1),
        ("END", "profiling", "gated", 0, 1),
    ]
    (_, start_t, at_start), (_, end_t, at_end) = seen
    assert at_start == 9  # every warmup request finished, no profiling request sent yet
    assert at_end == 39  # every profiling request finished before END
    records = checkpoint.load(tmp_path).records
    assert min(r.sent_ns for r in records) >= start_t + start_delay_ns  # waited for start_at
    assert max(r.sent_ns + r.e2e_ns for r in records) <= end_t
    assert out.gates["START"].status == "granted" and out.gates["START"].baseline_captured
    assert out.gates["END"].status == "granted"


async def test_snapshots_live_then_complete_last_over_zmq(mock: MockServer, tmp_path: Path) -> None:
    ctx = zmq.asyncio.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.subscribe(b"")
    sub.bind("tcp://127.0.0.1:*")
    endpoint = sub.getsockopt_string(zmq.LAST_ENDPOINT)
    codec = MsgpackCodec()
    got: list[MetricsSnapshot] = []

    async def read() -> None:
        while True:
            msg = codec.decode(await sub.recv())
            assert isinstance(msg, MetricsSnapshot)
            got.append(msg)
            if msg.state == "COMPLETE":
                return

    reader = asyncio.create_task(read())
    try:
        spec = make_spec(
            mock.url,
            {"mode": "concurrency", "concurrency": 2},
            {"profiling": {"duration": "1500ms"}},
        )
        out = await run_worker(
            WorkerConfig(
                spec=spec,
                run="r",
                snapshot_endpoint=endpoint,
                snapshot_interval_s=0.2,
                results_dir=tmp_path,
            )
        )
        await asyncio.wait_for(reader, 5)
    finally:
        reader.cancel()
        sub.close(linger=0)
    states = [s.state for s in got]
    assert states[-1] == "COMPLETE" and states.count("COMPLETE") == 1
    assert "LIVE" in states
    order = {"LIVE": 0, "DRAINING": 1, "COMPLETE": 2}
    assert [order[s] for s in states] == sorted(order[s] for s in states)
    assert [s.seq for s in got] == sorted(s.seq for s in got)
    live = [s for s in got if s.state == "LIVE" and s.phase == "profiling"]
    assert live and all(s.series[names.TTFT].values is None for s in live)
    assert got[-1] == out.snapshot
    assert 1.5 <= out.snapshot.elapsed_s < 2.5


async def test_stop_drains_and_reports_interrupted(tmp_path: Path) -> None:
    async with await start_mock_server(MockConfig(ttft=0.02, itl=0.01)) as server:
        spec = make_spec(
            server.url,
            {"mode": "concurrency", "concurrency": 4},
            {"profiling": {"requests": 10_000}},
        )
        worker = Worker(WorkerConfig(spec=spec, run="r", results_dir=tmp_path))
        task = asyncio.create_task(worker.run())
        await until(lambda: server.stats["ok"] >= 8)
        worker.stop()
        out = await asyncio.wait_for(task, 15)
    snap = out.snapshot
    assert out.interrupted and snap.interrupted and snap.state == "COMPLETE"
    assert snap.counters["failed_cancelled"] == 0  # drained within the timeout
    assert 8 <= snap.counters[names.REQUESTS] < 100 and snap.n_pending == 0
    assert_matches_records(snap, tmp_path)
    assert "END" not in out.gates


async def test_stop_after_drain_timeout_cancels_and_records(tmp_path: Path) -> None:
    async with await start_mock_server(MockConfig(ttft=5.0, itl=0.01)) as server:
        spec = make_spec(
            server.url,
            {"mode": "concurrency", "concurrency": 3},
            {"profiling": {"requests": 100}},
        )
        worker = Worker(WorkerConfig(spec=spec, run="r", results_dir=tmp_path, drain_timeout_s=0.2))
        task = asyncio.create_task(worker.run())
        await until(lambda: server.stats["requests"] >= 3)
        worker.stop()
        out = await asyncio.wait_for(task, 10)
    assert out.snapshot.counters["failed_cancelled"] == 3
    assert out.snapshot.counters[names.REQUESTS] == 3
    assert_matches_records(out.snapshot, tmp_path)


async def test_resume_in_process_counts_each_request_once(mock: MockServer, tmp_path: Path) -> None:
    spec = make_spec(
        mock.url,
        {"mode": "concurrency", "concurrency": 2},
        {"warmup": {"requests": 4}, "profiling": {"requests": 40}},
    )
    config = WorkerConfig(spec=spec, run="r", results_dir=tmp_path, drain_timeout_s=0.0)
    worker = Worker(config)
    task = asyncio.create_task(worker.run())
    await until(lambda: mock.stats["ok"] >= 20)
    worker.stop()
    first = await task
    done_first = first.snapshot.counters[names.REQUESTS]
    cancelled = first.snapshot.counters["failed_cancelled"]
    assert first.interrupted and 0 < done_first < 40
    second = await run_worker(config)
    snap = second.snapshot
    assert second.attempt == 2 and not second.interrupted
    assert second.resumed_records == done_first - cancelled
    assert snap.counters[names.REQUESTS] == 40 and snap.counters["failed_cancelled"] == 0
    assert second.warmup_requests == 0  # warmup happened in the first attempt
    assert mock.stats["requests"] == 4 + 40 + cancelled
    ids = [r.id for r in checkpoint.load(tmp_path).records]
    assert len(ids) == len(set(ids)) == 40
    assert_matches_records(snap, tmp_path)


async def test_a_request_sent_again_after_a_crash_has_its_index_and_request_id(
    tmp_path: Path,
) -> None:
    """SIGKILL right after the server completed two responses and before the worker wrote
    their records: the restarted worker sends those two again with their own indices (and
    ``x-benchop-request-id``), so the server sees each id of the run completed, two of them
    twice, and the results count every index once."""
    config_ = MockConfig(ttft=0.005, itl=0.001, request_ids=True)
    async with await start_mock_server(config_) as mock:
        spec = make_spec(
            mock.url,
            {"mode": "concurrency", "concurrency": 2},
            {"warmup": {"requests": 4}, "profiling": {"requests": 40}},
        )
        config = WorkerConfig(spec=spec, run="ns.r", results_dir=tmp_path)
        worker = Worker(config)
        task = asyncio.create_task(worker.run())
        await until(lambda: mock.stats["ok"] >= 20)
        worker.stop()  # drains: every request sent has its record
        first = await task
        path = tmp_path / checkpoint.RECORDS
        lines = path.read_bytes().splitlines(keepends=True)
        assert first.snapshot.counters["failed_cancelled"] == 0 and len(lines) > 2
        path.write_bytes(b"".join(lines[:-2]))  # the crash lost the last two records
        lost = {msgspec.json.decode(x)["index"] for x in lines[-2:]}
        second = await run_worker(config)
        assert second.snapshot.counters[names.REQUESTS] == 40
        records = checkpoint.load(tmp_path).records
        assert sorted(r.index for r in records) == list(range(40))
        assert {r.index for r in records if r.attempt == 2} >= lost
        stats = dict(mock.stats)
    assert (stats["ok"], stats["ok_ids"], stats["ok_repeats"]) == (4 + 40 + 2, 4 + 40, 2)
    assert tally(stats, 4 + 40) == Tally(served=44, counted=44, lost=0, double=0, resent=2)


async def test_checkpoint_of_another_spec_is_refused(mock: MockServer, tmp_path: Path) -> None:
    a = make_spec(
        mock.url, {"mode": "concurrency", "concurrency": 1}, {"profiling": {"requests": 2}}
    )
    b = make_spec(
        mock.url, {"mode": "concurrency", "concurrency": 2}, {"profiling": {"requests": 2}}
    )
    await run_worker(WorkerConfig(spec=a, run="r", results_dir=tmp_path))
    with pytest.raises(CheckpointMismatch, match="empty directory"):
        await run_worker(WorkerConfig(spec=b, run="r", results_dir=tmp_path))
    assert mock.stats["requests"] == 2


async def test_two_workers_pass_the_real_gate_coordinator_together(tmp_path: Path) -> None:
    from benchop.gates import GateCoordinator, GateOutcome

    outcomes: list[tuple[GateOutcome, int]] = []
    slow_cfg, fast_cfg = MockConfig(ttft=0.15, itl=0.001), MockConfig(ttft=0.002, itl=0.001)
    async with (
        await start_mock_server(slow_cfg) as slow,
        await start_mock_server(fast_cfg) as fast,
    ):

        async def on_gate(run: str, outcome: GateOutcome) -> None:
            outcomes.append((outcome, fast.stats["requests"]))

        coordinator = GateCoordinator(on_gate=on_gate)
        await coordinator.start()
        coordinator.register_run("ns/two", workers=2, agents=[], timeout_s=1.0, baseline=False)
        spec = make_spec(
            fast.url,
            {"mode": "concurrency", "concurrency": 2, "workers": 2},
            {"warmup": {"requests": 10}, "profiling": {"requests": 20}},
        )
        try:
            results = await asyncio.gather(
                *(
                    run_worker(
                        WorkerConfig(
                            spec=spec,
                            run="ns/two",
                            worker_index=i,
                            target_url=(slow if i == 0 else fast).url,
                            gate_endpoint=coordinator.endpoint,
                            results_dir=tmp_path / str(i),
                        )
                    )
                    for i in range(2)
                )
            )
        finally:
            await coordinator.close()
    (start, fast_at_start), (end, _) = outcomes
    assert (start.boundary, end.boundary) == ("START", "END")
    assert start.barrier_s > 0.3  # the fast worker waited for the slow one's warmup
    assert fast_at_start == 5  # ... without sending profiling requests meanwhile
    for i, out in enumerate(results):
        assert out.gates["START"].start_at_ns == start.start_at_ns
        assert out.gates["END"].start_at_ns == end.start_at_ns
        records = checkpoint.load(tmp_path / str(i)).records
        assert len(records) == 10  # half of the run's 20
        assert min(r.sent_ns for r in records) >= start.start_at_ns
        assert max(r.sent_ns + r.e2e_ns for r in records) <= end.closed_at_ns


async def test_a_failed_first_state_write_disables_the_checkpoint_never_the_run(
    mock: MockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(
        mock.url, {"mode": "concurrency", "concurrency": 2}, {"profiling": {"requests": 10}}
    )

    def disk_full(results_dir: object, state: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save_state", disk_full)
        outcome = await run_worker(WorkerConfig(spec=spec, run="r", results_dir=tmp_path))
    assert outcome.snapshot.counters[names.REQUESTS_OK] == 10
    assert outcome.checkpoint_write_errors == 10  # every record counted as not written
    assert checkpoint.load(tmp_path).records == []  # no orphan records a restart would refuse
    # a restart with the same directory starts afresh instead of refusing it
    again = await run_worker(WorkerConfig(spec=spec, run="r", results_dir=tmp_path))
    assert again.attempt == 1 and again.snapshot.counters[names.REQUESTS_OK] == 10


class FakeCoordinator:
    """Grants every gate at once and answers ResumeRequests: ``waits`` times ``wait``, then
    ``ready`` with ``base``; records the requests."""

    def __init__(self, base: MetricsSnapshot | None = None, waits: int = 0) -> None:
        self.base = base
        self.waits = waits
        self.asked: list[ResumeRequest] = []
        self.gates: list[GateRequest] = []
        self.server = RequestServer()
        self._task = asyncio.create_task(self.server.serve(self.handle))

    def handle(self, msg: Message) -> Message | None:
        if isinstance(msg, ResumeRequest):
            self.asked.append(msg)
            if len(self.asked) <= self.waits:
                return ResumeReply(run=msg.run, worker=msg.worker, status="wait")
            return ResumeReply(run=msg.run, worker=msg.worker, status="ready", base=self.base)
        assert isinstance(msg, GateRequest)
        self.gates.append(msg)
        return GateGranted(
            run=msg.run,
            phase_id=msg.phase_id,
            boundary=msg.boundary,
            worker=msg.worker,
            start_at_ns=time.time_ns(),
            baseline_captured=False,
        )

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def close(self) -> None:
        self.server.close()
        self._task.cancel()


async def interrupted_first_pod(
    spec: BenchmarkRunSpec, results: Path, mock: MockServer, ok_at_least: int
) -> MetricsSnapshot:
    """Run a worker in its own results dir and stop it (a pod deleted) once the server
    completed ``ok_at_least`` responses; its interrupted COMPLETE."""
    first = Worker(WorkerConfig(spec=spec, run="r", results_dir=results, incarnation="pod-a"))
    task = asyncio.create_task(first.run())
    await until(lambda: mock.stats["ok"] >= ok_at_least)
    first.stop()
    out = await task
    assert out.interrupted and out.snapshot.phase == "profiling"
    return out.snapshot


async def test_a_new_pod_resumes_from_the_coordinators_base(
    mock: MockServer, tmp_path: Path
) -> None:
    spec = make_spec(
        mock.url,
        {"mode": "concurrency", "concurrency": 2},
        {"warmup": {"requests": 4}, "profiling": {"requests": 40}},
    )
    base = await interrupted_first_pod(spec, tmp_path / "a", mock, 16)
    done = base.counters[names.REQUESTS]
    assert 0 < done < 40 and base.counters["failed_cancelled"] == 0  # drained, none cut
    coordinator = FakeCoordinator(base, waits=2)  # the earlier pod "still drains" twice
    try:
        config = WorkerConfig(
            spec=spec,
            run="r",
            results_dir=tmp_path / "b",  # a new pod: an empty dir
            gate_endpoint=coordinator.endpoint,
            incarnation="pod-b",
        )
        out = await run_worker(config)
    finally:
        coordinator.close()
    snap = out.snapshot
    assert [a.incarnation for a in coordinator.asked] == ["pod-b"] * 3
    assert [g.boundary for g in coordinator.gates] == ["END"]  # START was passed by pod a
    assert out.warmup_requests == 0 and not out.interrupted
    assert (out.attempt, snap.attempt, snap.incarnation) == (2, 2, "pod-b")
    # exact against the server: every response once, only the remainder sent
    assert mock.stats["requests"] == mock.stats["ok"] == 4 + 40
    assert snap.counters[names.REQUESTS] == snap.counters[names.REQUESTS_OK] == 40
    assert snap.series[names.TTFT].count == 40
    assert sum(row.requests for row in snap.timeline or []) == 40
    records = checkpoint.load(tmp_path / "b").records
    assert len(records) == 40 - done and {r.attempt for r in records} == {2}
    assert [r.index for r in records if r.index < 0] == []
    assert (tmp_path / "b" / checkpoint.BASE).exists()


async def test_a_duration_bound_counts_the_earlier_pods_time(
    mock: MockServer, tmp_path: Path
) -> None:
    spec = make_spec(
        mock.url, {"mode": "concurrency", "concurrency": 2}, {"profiling": {"duration": "1500ms"}}
    )
    base = await interrupted_first_pod(spec, tmp_path / "a", mock, 10)
    assert 0 < base.elapsed_s < 1.5
    coordinator = FakeCoordinator(base)
    try:
        config = WorkerConfig(
            spec=spec,
            run="r",
            results_dir=tmp_path / "b",
            gate_endpoint=coordinator.endpoint,
            incarnation="pod-b",
        )
        out = await run_worker(config)
    finally:
        coordinator.close()
    snap = out.snapshot
    records = checkpoint.load(tmp_path / "b").records
    sent = [r.sent_ns for r in records]
    assert max(sent) - min(sent) <= (1.5 - base.elapsed_s) * 1e9  # only the time left
    assert snap.elapsed_s >= 1.5
    assert snap.counters[names.REQUESTS] == base.counters[names.REQUESTS] + len(records)
    assert mock.stats["ok"] == snap.counters[names.REQUESTS_OK]


async def test_a_container_restart_after_a_base_resumes_from_the_kept_base(
    mock: MockServer, tmp_path: Path
) -> None:
    """Pod b (resumed from pod a's base) restarts its container; the coordinator has
    nothing now (say it restarted): the base kept in b's results dir and b's records count."""
    spec = make_spec(
        mock.url,
        {"mode": "concurrency", "concurrency": 2},
        {"warmup": {"requests": 4}, "profiling": {"requests": 60}},
    )
    base = await interrupted_first_pod(spec, tmp_path / "a", mock, 14)
    coordinator = FakeCoordinator(base)
    b = tmp_path / "b"
    try:
        config = WorkerConfig(
            spec=spec,
            run="r",
            results_dir=b,
            gate_endpoint=coordinator.endpoint,
            incarnation="pod-b",
        )
        worker = Worker(config)
        task = asyncio.create_task(worker.run())
        await until(lambda: len(checkpoint.load(b).records) >= 6)
        worker.stop()
        second = await task
        coordinator.base = None  # forgotten
        third = await run_worker(config)
    finally:
        coordinator.close()
    assert second.interrupted and second.snapshot.counters[names.REQUESTS] < 60
    snap = third.snapshot
    assert third.attempt == 3 and third.warmup_requests == 0
    assert snap.counters[names.REQUESTS] == snap.counters[names.REQUESTS_OK] == 60
    assert mock.stats["ok"] == mock.stats["requests"] == 4 + 60
    ids = [r.id for r in checkpoint.load(b).records]
    assert len(ids) == len(set(ids)) == 60 - base.counters[names.REQUESTS]


async def test_a_worker_stopped_before_its_base_arrives_publishes_nothing(
    mock: MockServer, tmp_path: Path
) -> None:
    spec = make_spec(
        mock.url, {"mode": "concurrency", "concurrency": 2}, {"profiling": {"requests": 10}}
    )
    coordinator = FakeCoordinator(waits=10_000)  # an earlier pod "runs" for ever
    try:
        worker = Worker(
            WorkerConfig(
                spec=spec,
                run="r",
                results_dir=tmp_path,
                termination_log=tmp_path / "termination",
                gate_endpoint=coordinator.endpoint,
            )
        )
        task = asyncio.create_task(worker.run())
        await until(lambda: len(coordinator.asked) >= 2)
        worker.stop()
        out = await asyncio.wait_for(task, 10)
    finally:
        coordinator.close()
    assert out.interrupted and mock.stats["requests"] == 0
    assert not (tmp_path / FINAL).exists() and not (tmp_path / "termination").exists()


async def test_a_new_pod_on_a_claim_resumes_from_the_checkpoint_not_twice(
    mock: MockServer, tmp_path: Path
) -> None:
    """With ``spec.output.pvc`` the results dir outlives the pod: the replacement finds the
    old pod's checkpoint there and resumes from it; the coordinator's base (the same requests)
    is not added on top."""
    spec = make_spec(
        mock.url,
        {"mode": "concurrency", "concurrency": 2},
        {"warmup": {"requests": 4}, "profiling": {"requests": 40}},
    )
    claim = tmp_path / "worker-0"
    base = await interrupted_first_pod(spec, claim, mock, 16)
    coordinator = FakeCoordinator(base)
    try:
        config = WorkerConfig(
            spec=spec,
            run="r",
            results_dir=claim,
            gate_endpoint=coordinator.endpoint,
            incarnation="pod-b",
        )
        out = await run_worker(config)
    finally:
        coordinator.close()
    snap = out.snapshot
    assert out.attempt == 2 and out.warmup_requests == 0
    assert snap.counters[names.REQUESTS] == snap.counters[names.REQUESTS_OK] == 40
    assert mock.stats["ok"] == mock.stats["requests"] == 4 + 40
    assert not (claim / checkpoint.BASE).exists()
    assert_matches_records(snap, claim)
