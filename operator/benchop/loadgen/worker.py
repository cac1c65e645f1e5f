"""One load-generator worker: preflight, warmup, the START gate, profiling, the END gate,
results.

:func:`run_worker` (or :class:`Worker` for a stoppable handle) runs the
whole worker in-process; ``benchop loadgen`` wraps it for a pod or a local
subprocess.

Preflight (:mod:`benchop.loadgen.preflight`, ``spec.preflight``): before anything else the
worker checks the target (connect, model list, one request); a failure, or a Secret of the
spec it cannot read, ends the worker at once with an *abort* (reason and message) in its
final snapshot and termination message, and exit code 0 (a restart would fail the same way).
The operator and local mode end the run on the first worker's abort.

Fail-fast: the outcomes of the worker's last ``load.failureWindow`` requests (warmup and
profiling) are kept (:class:`~benchop.loadgen.failures.FailureWindow`); when more than
``load.maxFailureRatio`` of them failed, the worker stops admitting requests, drains the ones
in flight and ends with the abort ``FailureRatioExceeded`` (not ``interrupted``: no restart).

Phases. Warmup (optional) then profiling, each bounded by a request count or
a duration, with the spec's load mode. The load of the run is split evenly
across the ``workers`` (:func:`plan_for`): concurrency, rate and request
counts are shares (the first ``total % workers`` workers take one more), a
duration bounds every worker alike. A phase admits no request past its bound
and ends when every admitted request finished (in-flight requests at a
duration's end complete and count). Between warmup and profiling the worker
waits for no warmup request to be in flight, then asks the coordinator for
START; after profiling it asks for END (:mod:`benchop.loadgen.gate`). Only
profiling requests reach the registry and ``records.jsonl``. A request is
*good* when it succeeded and met every SLO given.

Resume. First (before it publishes anything) the worker asks the coordinator for the
*base* of its index (:mod:`benchop.core.resume`): the last COMPLETE snapshot of the earlier
pods of its index, given once none of them still runs. With a results directory that
already holds a checkpoint of the same run, worker and spec (a container restart in the same
pod, or a claim), the worker loads the records (they count towards the profiling bound and
into the metrics exactly once) on top of the base it kept (``base.msgpack``); a new pod with
an empty directory starts from the coordinator's base alone. Either way the base and records
go into the registry, so every snapshot is cumulative over the index's pods; warmup (if it
was finished) and the START gate (if it was passed) are skipped, the request indices go on
(:func:`benchop.core.resume.indices`: first those the checkpoint lacks, so a request in flight
when the last attempt died is sent again with its index and request id, then the next ones),
and only what is left is profiled: the remaining requests, or the remaining duration (the
profiling time of the earlier attempts counts). Attempts number on
across pods. A checkpoint of another run or spec is an error, never silently mixed in.

Stopping. :meth:`Worker.stop` (SIGTERM/SIGINT in the command) admits no more
requests, lets those in flight finish for up to ``drain_timeout_s`` (then
cancels them: outcome ``cancelled``), skips the END gate and still produces
the final snapshot, with ``interrupted=True``. A second ``stop`` cancels at
once. Cancelled requests are recorded once (outcome ``cancelled``): a container restart
in the same pod drops its earlier attempts' cancelled records and sends those requests
again; a replacement pod takes them from the base, counted as failed ``cancelled``. A worker
stopped before it got its base publishes nothing (its COMPLETE would hide the base).

    outcome = await run_worker(WorkerConfig(spec=spec, run="r", results_dir=d))
    outcome.snapshot.counters["requests_total"]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from benchagent.transport import CurveEphemeral, Publisher
from benchagent.wire import MetricsSnapshot, WorkerAbort
from benchop.api.models import BenchmarkRunSpec, PhaseBound
from benchop.core import resume
from benchop.core.names import API_KEY_ENV
from benchop.core.results import FAILURE_RATIO_EXCEEDED, SECRET_ERROR
from benchop.core.workloadfiles import MOUNT_ROOT
from benchop.loadgen import checkpoint as ckpt
from benchop.loadgen.client import Ident, StreamClient, Target
from benchop.loadgen.failures import FailureWindow
from benchop.loadgen.gate import GateClient, GateResult
from benchop.loadgen.load import Budget, OpenLoop, arrival_offsets, run_closed
from benchop.loadgen.preflight import preflight
from benchop.loadgen.records import (
    OK,
    RequestRecord,
    Slo,
    is_good,
    new_registry,
    record_into,
    timeline_from,
)
from benchop.loadgen.request import RequestFormat, SecretMissing, resolve_headers, tls_context
from benchop.loadgen.snapshots import Snapshots
from benchop.loadgen.trigger import SendTrigger
from benchop.loadgen.workload import Prompt, Workload
from benchop.metrics import names
from benchop.metrics.series import Histogram
from benchop.metrics.stats import decode_values
from benchop.metrics.timeline import TimelineRow, merge_rows

T = TypeVar("T")

__all__ = [
    "CheckpointMismatch",
    "FinalOutcome",
    "PhasePlan",
    "Plan",
    "Worker",
    "WorkerConfig",
    "plan_for",
    "run_worker",
    "spec_hash",
]

log = logging.getLogger(__name__)

WARMUP_ATTEMPT = 0  # Ident.attempt of warmup requests (profiling attempts start at 1)
CHECKPOINT_WRITE_ERRORS = "checkpoint_write_errors"
"""Counter (only present when non-zero): profiling records that could not be checkpointed."""


class CheckpointMismatch(RuntimeError):
    """The results directory holds a checkpoint of another run, worker or spec."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything one worker needs; only ``spec`` and ``run`` are required.

    ``results_dir=None`` runs without checkpoint, resume and final files;
    ``gate_endpoint=None`` runs ungated; ``snapshot_endpoint=None`` publishes
    nothing (the final snapshot is still returned and written).
    """

    spec: BenchmarkRunSpec
    run: str
    worker_index: int = 0
    workers: int | None = None  # default: spec.load.workers
    target_url: str | None = None  # default: spec.target.url or urls
    api_key: str | None = field(default=None, repr=False)  # default: env BENCHOP_API_KEY
    secrets_dir: Path | None = None  # <dir>/<secret>/<key>: TLS files, else header values
    env: dict[str, str] | None = field(default=None, repr=False)  # default: os.environ
    gate_endpoint: str | None = None
    snapshot_endpoint: str | None = None
    # The operator's CurveZMQ public key (Z85): gates and snapshots are then encrypted and sent
    # only to the holder of its secret key; None: plain ZMQ (local mode).
    curve_server_key: str | None = None
    results_dir: Path | None = None
    termination_log: Path | None = None
    snapshot_interval_s: float = 1.0
    drain_timeout_s: float = 10.0
    gate_attempt_s: float = 5.0
    gate_wait_s: float = 900.0
    workload_root: str = MOUNT_ROOT  # where a pod mounts the dataset/tokenizer volumes
    # This pod's identity (its uid; the same across container restarts in the pod): tells the
    # coordinator which snapshots are an earlier pod's. None: a random one per process.
    incarnation: str | None = None


@dataclass(frozen=True, slots=True)
class PhasePlan:
    """This worker's bound of one phase: a request count or a duration."""

    requests: int | None = None
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """This worker's share of the run's load (see :func:`plan_for`)."""

    mode: Literal["concurrency", "rate"]
    concurrency: int  # closed loop: tasks of this worker
    rate: float  # open loop: requests/s of this worker
    arrival: Literal["constant", "poisson"]
    phase_s: float  # open loop: offset of this worker's first arrival
    max_in_flight: int | None
    warmup: PhasePlan | None
    profiling: PhasePlan
    seed: int
    request_timeout_s: float
    slo: Slo


def _share(total: int, worker: int, workers: int) -> int:
    return total // workers + (1 if worker < total % workers else 0)


def _phase(bound: PhaseBound | None, worker: int, workers: int) -> PhasePlan | None:
    if bound is None:
        return None
    if bound.requests is not None:
        return PhasePlan(requests=_share(bound.requests, worker, workers))
    assert bound.duration is not None
    return PhasePlan(duration_s=bound.duration.seconds)


def plan_for(spec: BenchmarkRunSpec, worker: int, workers: int) -> Plan:
    """Worker ``worker``'s share of the load of ``spec`` split over ``workers``.

    >>> plan_for(spec, 1, 3).concurrency   # concurrency 32 over 3 workers  # doctest: +SKIP
    11
    """
    if not 0 <= worker < workers:
        raise ValueError(f"worker index {worker} is not in 0..{workers - 1}")
    load = spec.load
    rate = (load.rate or 0.0) / workers
    slo = spec.slo
    cap = load.max_in_flight
    return Plan(
        mode=load.mode,
        concurrency=_share(load.concurrency or 0, worker, workers),
        rate=rate,
        arrival=load.arrival,
        # constant arrivals of the workers interleave instead of coinciding
        phase_s=worker / load.rate if load.rate else 0.0,
        max_in_flight=None if cap is None else max(_share(cap, worker, workers), 1),
        warmup=_phase(spec.phases.warmup, worker, workers),
        profiling=_phase(spec.phases.profiling, worker, workers) or PhasePlan(requests=0),
        seed=spec.workload.seed,
        request_timeout_s=load.request_timeout.seconds,
        slo=Slo(
            ttft_ms=slo.ttft_ms if slo else None,
            itl_ms=slo.itl_ms if slo else None,
            tpot_ms=slo.tpot_ms if slo else None,
            e2e_ms=slo.e2e_ms if slo else None,
        ),
    )


def spec_hash(spec: BenchmarkRunSpec) -> str:
    """sha256 of the spec's canonical JSON: a checkpoint belongs to one spec."""
    wire = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()


@dataclass(slots=True)
class FinalOutcome:
    """What a worker did: its final (COMPLETE) snapshot and how it got there."""

    snapshot: MetricsSnapshot
    interrupted: bool
    attempt: int  # 1 + resumes
    resumed_records: int  # profiling requests resumed from (the base and the checkpoint)
    gates: dict[str, GateResult]
    warmup_requests: int
    warmup_ok: int
    checkpoint_write_errors: int
    abort: WorkerAbort | None = None  # the worker ended the run early (preflight, failures)

    @property
    def exit_code(self) -> int:
        """0 when the worker finished its bound, 1 when it was interrupted."""
        return 1 if self.interrupted else 0


@dataclass(slots=True)
class _Request:
    ident: Ident
    body: bytes
    prompt: Prompt
    sink: Callable[[RequestRecord], None]

    def record(self, rec: RequestRecord) -> None:
        """The client's record, with what the workload sent, to the phase's sink."""
        p = self.prompt
        rec.prompt_tokens = p.prompt_tokens
        rec.max_tokens = p.max_tokens
        rec.row = p.row
        rec.turn = p.turn
        rec.prefix = p.prefix
        self.sink(rec)


@dataclass(frozen=True, slots=True)
class _Base:
    base: MetricsSnapshot | None


async def _base_of(gate: GateClient, incarnation: str) -> _Base:
    return _Base(await gate.resume(incarnation))


class Worker:
    """One worker run; ``await worker.run()`` once, ``worker.stop()`` from anywhere on its loop."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        spec = config.spec
        self.workers = config.workers or spec.load.workers
        self.index = config.worker_index
        self.plan = plan_for(spec, self.index, self.workers)
        bases = (config.target_url,) if config.target_url else tuple(spec.target.endpoints)
        if not bases:
            raise ValueError("no target URL: set spec.target.url (or urls) or --target-url")
        self.bases = bases
        self.request_format = RequestFormat.from_spec(spec)
        self.abort: WorkerAbort | None = None
        self._failures = FailureWindow(
            ratio=spec.load.max_failure_ratio, size=spec.load.failure_window
        )
        self.registry = new_registry()
        self.workload: Workload | None = None  # read in run(): it may read files
        self.phase = "starting"
        self.incarnation = config.incarnation or uuid.uuid4().hex
        self.attempt = 1
        self.resumed_records = 0
        self._resume = resume.NONE  # where the base (and the local checkpoint) left off
        self._base_timeline: list[TimelineRow] | None = None
        self._base_write_errors = 0
        self.gates: dict[str, GateResult] = {}
        self.warmup_requests = 0
        self.warmup_ok = 0
        self._stopping = 0  # stop() calls
        self._stop_event = asyncio.Event()
        self._load_task: asyncio.Task[None] | None = None
        self._elapsed_before_s = 0.0
        self._attempt_started_ns = 0
        self._profiling_t0: float | None = None  # perf_counter of this attempt's start
        self._profiling_elapsed: float | None = None  # frozen at the end of profiling
        self._client: StreamClient | None = None
        self._checkpoint: ckpt.Checkpoint | None = None
        self._state: ckpt.CheckpointState | None = None
        self._checkpoint_off = False  # the first state write failed: records are not written
        self._unwritten = 0  # profiling records not checkpointed because of that
        self._snaps: Snapshots | None = None
        self._recv_lags = Histogram()  # profiling receive lags (ns): bounded, one per read
        self._cpu_mark = (time.perf_counter(), time.process_time())
        self._profiling_cpu: tuple[float, float] | None = None  # (wall, cpu) at start
        self._final_cpu_pct: float | None = None
        self._done_below = 0  # profiling indices 0 .. _done_below - 1 are in the base
        self._done: set[int] = set()  # profiling indices of the checkpoint's records

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Drain and finish (interrupted); a second call cancels in-flight requests now."""
        self._stopping += 1
        self._stop_event.set()
        if self._stopping > 1 and self._load_task is not None:
            self._load_task.cancel()

    @property
    def interrupted(self) -> bool:
        return self._stopping > 0

    # ------------------------------------------------------------------ run

    async def run(self) -> FinalOutcome:
        """Run the worker to its final snapshot (never raises on request errors).

        Raises :class:`CheckpointMismatch` before sending anything when the
        results directory belongs to another run, worker or spec.
        """
        cfg = self.config
        curve = CurveEphemeral(cfg.curve_server_key.encode()) if cfg.curve_server_key else None
        gate = GateClient(
            cfg.gate_endpoint,
            run=cfg.run,
            worker=self.index,
            workers=self.workers,
            attempt_s=cfg.gate_attempt_s,
            wait_s=cfg.gate_wait_s,
            curve=curve,
        )
        try:
            # Before the checkpoint is read: an earlier pod may still be writing it (a claim).
            got = await self._until_stopped(_base_of(gate, self.incarnation))
            if got is None:
                gate.close()
                return self._stopped_before_base()
            self._load_checkpoint(got.base)
            self.workload = await asyncio.to_thread(
                Workload.for_worker,
                cfg.spec.workload,
                api=cfg.spec.target.api,
                worker=self.index,
                workers=self.workers,
                start=self.resumed_records,
                root=cfg.workload_root,
            )
        except BaseException:
            gate.close()
            raise
        publisher = Publisher(cfg.snapshot_endpoint, curve=curve) if cfg.snapshot_endpoint else None
        snaps = self._snaps = Snapshots(
            self.registry,
            run=cfg.run,
            worker=self.index,
            attempt=self.attempt,
            incarnation=self.incarnation,
            publisher=publisher,
            progress=self._progress,
            interval_s=cfg.snapshot_interval_s,
            before_snapshot=self._update_gauges,
        )
        # numpy loads percentile's internals on first use (~10 ms): now, not mid-profiling
        np.percentile(np.zeros(2, dtype=np.int64), 99)
        snaps.start()
        try:
            client = self._client = self._make_client()
            if client is not None:
                async with client:
                    if await self._preflight(client):
                        await self._phases(gate)
        finally:
            if self._checkpoint is not None:
                await self._checkpoint.close()
            await self._save_state()
            final = await snaps.finish(
                interrupted=self.interrupted,
                results_dir=cfg.results_dir,
                termination_log=cfg.termination_log,
                timeline=await self._timeline(),
            )
            gate.close()
            if publisher is not None:
                publisher.close()
        return FinalOutcome(
            snapshot=final,
            interrupted=self.interrupted,
            attempt=self.attempt,
            resumed_records=self.resumed_records,
            gates=self.gates,
            warmup_requests=self.warmup_requests,
            warmup_ok=self.warmup_ok,
            checkpoint_write_errors=self._checkpoint_errors(),
            abort=self.abort,
        )

    def _make_client(self) -> StreamClient | None:
        """The client with the spec's headers and TLS; None (and an abort) when a Secret of
        the spec cannot be read or used."""
        cfg = self.config
        spec = cfg.spec
        env = dict(os.environ if cfg.env is None else cfg.env)
        if cfg.api_key:
            env[API_KEY_ENV] = cfg.api_key
        try:
            headers = resolve_headers(spec, env=env, secrets_dir=cfg.secrets_dir)
            https = any(b.startswith("https://") for b in self.bases)
            ctx = tls_context(spec.target.tls, secrets_dir=cfg.secrets_dir) if https else None
        except (SecretMissing, ValueError) as exc:
            self._abort(SECRET_ERROR, str(exc))
            return None
        target = Target(
            self.bases[0],
            spec.target.model,
            spec.target.api,
            urls=self.bases if len(self.bases) > 1 else (),
            headers=headers,
            ssl_context=ctx,
        )
        assert self.workload is not None
        counter = self.workload.counter
        return StreamClient(
            target,
            request_timeout=self.plan.request_timeout_s,
            request=self.request_format,
            start=self.index,
            count_tokens=None if counter.name is None else counter.count,
            run=self.config.run,
        )

    async def _preflight(self, client: StreamClient) -> bool:
        """The target's checks (``spec.preflight``); False (and an abort) when one failed."""
        pf = self.config.spec.preflight
        if not pf.enabled:
            return True
        self.phase = "preflight"
        result = await self._until_stopped(
            preflight(
                client,
                model=self.config.spec.target.model,
                connect_s=pf.timeout.seconds,
                http_timeout_s=self.plan.request_timeout_s,
                worker=self.index,
            )
        )
        if result is None:  # stopped meanwhile
            return False
        assert self._snaps is not None
        for w in result.warnings:
            log.warning("preflight: %s", w)
        self._snaps.warnings = list(result.warnings)
        if not result.ok:
            self._abort(result.reason, result.message)
            return False
        log.info("preflight passed in %.2fs", result.seconds)
        return True

    def _abort(self, reason: str, message: str) -> None:
        """End the run early: admit no more requests, drain, skip the gates still to come."""
        if self.abort is not None:
            return
        log.error("ending the run: %s: %s", reason, message)
        self.abort = WorkerAbort(reason=reason, message=message)
        if self._snaps is not None:
            self._snaps.abort = self.abort
        self._stop_event.set()

    async def _phases(self, gate: GateClient) -> None:
        point = self._resume
        if not point.warmup_done and self.plan.warmup is not None:
            self.phase = "warmup"
            await self._run_phase(
                self.plan.warmup, self._warmup_sink, WARMUP_ATTEMPT, 0.0, itertools.count()
            )
        if self.interrupted or self.abort is not None:
            return
        if point.start_passed:
            log.info(
                "resuming: warmup and the START gate were passed by attempt %d", self.attempt - 1
            )
        else:
            self.phase = "gate"
            result = await self._until_stopped(gate.pass_gate("START"))
            if result is None:
                return
            self.gates["START"] = result
        self._start_profiling()
        await self._save_state()
        self.phase = "profiling"
        await self._run_phase(
            self.plan.profiling,
            self._profiling_sink,
            self.attempt,
            self._elapsed_before_s,
            resume.indices(self._done_below, self._done),
            already=self.resumed_records,
        )
        self._end_profiling()
        if self.interrupted or self.abort is not None:
            return
        await self._save_state()
        self.phase = "done"
        assert self._snaps is not None
        self._snaps.state = "DRAINING"
        end = await self._until_stopped(gate.pass_gate("END"))
        if end is not None:
            self.gates["END"] = end

    async def _until_stopped(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """``coro``'s result, or None when the worker is stopped (or aborts) first."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    async def _run_phase(
        self,
        bound: PhasePlan,
        sink: Callable[[RequestRecord], None],
        attempt: int,
        elapsed_before_s: float,
        indices: Iterator[int],
        already: int = 0,
    ) -> None:
        """Issue the phase's requests, numbered by ``indices``, until its bound or a stop; wait
        for them to finish."""
        if self.interrupted or self.abort is not None:
            return
        plan = self.plan
        snaps = self._snaps
        assert snaps is not None and self._client is not None
        snaps.state = "LIVE"

        def draining() -> None:
            if self.phase == "profiling":
                snaps.state = "DRAINING"

        deadline = None
        if bound.duration_s is not None:
            left = bound.duration_s - elapsed_before_s
            deadline = time.perf_counter_ns() + int(max(left, 0.0) * 1e9)
        requests = None if bound.requests is None else max(bound.requests - already, 0)
        budget = Budget(requests=requests, deadline_ns=deadline, on_close=draining)
        client = self._client
        workload = self.workload
        assert workload is not None
        workload.ready(attempt)
        multi_turn = workload.multi_turn

        def prepare() -> _Request:
            i = next(indices)
            p = workload.next(attempt, i)
            if p.messages is None:
                assert p.text is not None
                body = client.body(p.text, p.max_tokens)
            else:
                body = client.body_messages(p.messages, p.max_tokens)
            return _Request(Ident(self.index, attempt, i), body, p, sink)

        async def send(req: _Request, trigger: SendTrigger | None) -> None:
            answer = await client.send(
                req.body,
                ident=req.ident,
                input_words=req.prompt.prompt_tokens,
                sink=req.record,
                trigger=trigger,
                keep_text=multi_turn,
            )
            if multi_turn:
                workload.on_reply(req.prompt, answer)

        if plan.mode == "concurrency":
            load = run_closed(plan.concurrency, budget, prepare, send)
        elif plan.rate > 0:
            offsets = arrival_offsets(
                plan.rate, plan.arrival, plan.seed * 1_000_003 + self.index, plan.phase_s
            )
            ol = OpenLoop(offsets, budget, prepare, send, max_in_flight=plan.max_in_flight)
            client.before_read = ol.poll  # sends on time between the reads of a burst
            load = ol.run()
        else:
            return
        task = self._load_task = asyncio.ensure_future(load)
        stopper = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                budget.stop()
                log.info("stopping: draining %d requests in flight", client.in_flight)
                done, _ = await asyncio.wait({task}, timeout=self.config.drain_timeout_s)
                if not done:
                    log.warning("drain timeout: cancelling %d requests", client.in_flight)
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            stopper.cancel()
            self._load_task = None
            client.before_read = None

    # ------------------------------------------------------------------ sinks

    def _warmup_sink(self, rec: RequestRecord) -> None:
        self.warmup_requests += 1
        if rec.outcome == OK:
            self.warmup_ok += 1
        if self._failures.add(rec.outcome, rec.error):
            self._abort(FAILURE_RATIO_EXCEEDED, self._failures.describe())

    def _profiling_sink(self, rec: RequestRecord) -> None:
        rec.good = is_good(rec, self.plan.slo)
        record_into(self.registry, rec)
        if self._checkpoint_off:
            self._unwritten += 1
        elif self._checkpoint is not None:
            self._checkpoint.append(rec)
        if self._failures.add(rec.outcome, rec.error):
            self._abort(FAILURE_RATIO_EXCEEDED, self._failures.describe())

    # ------------------------------------------------------------------ checkpoint

    def _load_checkpoint(self, remote: MetricsSnapshot | None) -> None:
        """Resume from the local checkpoint (on top of the base kept with it) when there is
        one, else from ``remote`` (the coordinator's base, then kept as ``base.msgpack``) or
        a base kept earlier; open the checkpoint for this attempt."""
        d = self.config.results_dir
        if d is None:
            self._apply_base(remote)
            return
        d.mkdir(parents=True, exist_ok=True)
        loaded = ckpt.load(d, resume=True)
        st = loaded.state
        digest = spec_hash(self.config.spec)
        try:
            kept = ckpt.load_base(d)
        except ValueError as exc:
            raise CheckpointMismatch(f"{exc}; use an empty results directory") from None
        if st is None:
            if loaded.records:
                raise CheckpointMismatch(
                    f"{d / ckpt.RECORDS} has records but no {ckpt.STATE}: not a benchop "
                    "checkpoint; use an empty results directory"
                )
            base = remote if remote is not None else kept
            if base is not None and base is not kept and resume.point(base).warmup_done:
                ckpt.save_base(d, base)  # a container restart in this pod resumes from it
            self._apply_base(base)
            self._state = None
        else:
            mine = (self.config.run, self.index, self.workers, digest)
            theirs = (st.run, st.worker, st.workers, st.spec_hash)
            if mine != theirs:
                raise CheckpointMismatch(
                    f"{d} holds a checkpoint of run {st.run!r} worker {st.worker}/{st.workers} "
                    f"(spec {st.spec_hash[:12]}), not run {self.config.run!r} worker "
                    f"{self.index}/{self.workers} (spec {digest[:12]}); use an empty directory"
                )
            self._apply_base(kept)
            self.attempt = st.attempt + 1
            self._elapsed_before_s = loaded.elapsed_s
            self._resume = dataclasses.replace(self._resume, warmup_done=True, start_passed=True)
            for rec in loaded.records:
                record_into(self.registry, rec)
                self._done.add(rec.index)
            self.resumed_records += len(loaded.records)
            self._state = st
            log.info(
                "resuming attempt %d: %d records (%.1fs of profiling) loaded, %d cancelled "
                "dropped, %d torn bytes cut",
                self.attempt,
                len(loaded.records),
                self._elapsed_before_s,
                loaded.dropped_cancelled,
                loaded.torn_bytes,
            )
        self._checkpoint = ckpt.Checkpoint(d)

    def _apply_base(self, base: MetricsSnapshot | None) -> None:
        """Start from ``base``: its counters and raw values into the registry (once), its
        timeline kept for the final one; the attempt, elapsed time and request count after it."""
        point = self._resume = resume.point(base)
        if base is None or not point.warmup_done:
            return
        if base.run != self.config.run or base.worker != self.index:
            raise CheckpointMismatch(
                f"the base of run {base.run!r} worker {base.worker} is not run "
                f"{self.config.run!r} worker {self.index}"
            )
        self.attempt = point.attempt + 1
        if not point.start_passed:
            log.info("resuming after attempt %d: its warmup was finished", point.attempt)
            return
        reg = self.registry
        for name, n in base.counters.items():
            reg.counter(name).inc(n)
        self._base_write_errors = base.counters.get(CHECKPOINT_WRITE_ERRORS, 0)
        for name, summary in base.series.items():
            values = decode_values(summary)
            if values is None:
                raise CheckpointMismatch(f"the base's series {name!r} has no raw values")
            reg.series(name).record_many(values.tolist())
        self._base_timeline = base.timeline
        self._elapsed_before_s = point.elapsed_s
        self.resumed_records = self._done_below = point.requests
        log.info(
            "resuming after attempt %d of another pod: %d requests, %.1fs of profiling",
            point.attempt,
            point.requests,
            point.elapsed_s,
        )

    def _stopped_before_base(self) -> FinalOutcome:
        """Stopped while waiting for the base: nothing is published or written (a COMPLETE
        without the base would stand for the whole index and hide what it did)."""
        log.warning("stopped before the base of worker %d arrived: publishing nothing", self.index)
        snap = MetricsSnapshot(
            run=self.config.run,
            worker=self.index,
            seq=0,
            state="COMPLETE",
            phase=self.phase,
            time_ns=time.time_ns(),
            elapsed_s=0.0,
            n_pending=0,
            interrupted=True,
            incarnation=self.incarnation,
        )
        return FinalOutcome(
            snapshot=snap,
            interrupted=True,
            attempt=self.attempt,
            resumed_records=0,
            gates=self.gates,
            warmup_requests=0,
            warmup_ok=0,
            checkpoint_write_errors=0,
        )

    async def _save_state(self) -> None:
        d = self.config.results_dir
        if d is None or self._profiling_t0 is None:
            return
        st = ckpt.CheckpointState(
            run=self.config.run,
            worker=self.index,
            workers=self.workers,
            spec_hash=spec_hash(self.config.spec),
            attempt=self.attempt,
            attempt_started_ns=self._attempt_started_ns,
            elapsed_before_s=self._elapsed_before_s,
            elapsed_s=self._elapsed(),
            profiling_done=self._profiling_elapsed is not None and not self.interrupted,
        )
        try:
            await asyncio.to_thread(ckpt.save_state, d, st)
            self._state = st
        except OSError as exc:
            log.error("writing %s failed: %s", ckpt.STATE, exc)
            if self._state is None and not self._checkpoint_off:
                # Records without a state could never be resumed (a restart refuses them):
                # keep running without a checkpoint, count every unwritten record, say so.
                log.error("checkpointing disabled for this attempt: a restart starts afresh")
                self._checkpoint_off = True

    async def _timeline(self) -> list[TimelineRow] | None:
        """Per-second rows of every profiling record in the checkpoint (all attempts), read
        back from ``records.jsonl`` once profiling is over: nothing on the request path;
        merged with the base's rows."""
        d = self.config.results_dir
        base = self._base_timeline
        if d is None or self._state is None:
            return base
        try:
            rows = await asyncio.to_thread(lambda: timeline_from(ckpt.iter_records(d)))
        except (OSError, ValueError):
            log.exception("building the timeline from %s failed", d / ckpt.RECORDS)
            return None
        return rows if base is None else merge_rows([base, rows])

    def _checkpoint_errors(self) -> int:
        written = self._checkpoint.write_errors if self._checkpoint is not None else 0
        return written + self._unwritten

    # ------------------------------------------------------------------ progress

    def _start_profiling(self) -> None:
        self._attempt_started_ns = time.time_ns()
        self._profiling_t0 = time.perf_counter()
        self._profiling_cpu = (time.perf_counter(), time.process_time())
        assert self._client is not None
        self._client.take_recv_lags()

    def _end_profiling(self) -> None:
        self._profiling_elapsed = self._elapsed()
        self._update_gauges()  # collect the last receive lags
        if self._profiling_cpu is not None:
            wall0, cpu0 = self._profiling_cpu
            wall = time.perf_counter() - wall0
            if wall > 0:
                self._final_cpu_pct = 100.0 * (time.process_time() - cpu0) / wall
        self._update_gauges()

    def _elapsed(self) -> float:
        if self._profiling_elapsed is not None:
            return self._profiling_elapsed
        if self._profiling_t0 is None:
            return self._elapsed_before_s
        return self._elapsed_before_s + time.perf_counter() - self._profiling_t0

    def _progress(self) -> tuple[str, float, int]:
        in_flight = self._client.in_flight if self._client is not None else 0
        return self.phase, self._elapsed(), in_flight

    def _update_gauges(self) -> None:
        """Client CPU % and receive-lag p99 (ms): of the last tick while profiling runs, of
        the whole profiling phase once it ended; checkpoint write errors, if any."""
        reg = self.registry
        now = (time.perf_counter(), time.process_time())
        wall, cpu = now[0] - self._cpu_mark[0], now[1] - self._cpu_mark[1]
        self._cpu_mark = now
        tick = Histogram()
        client = self._client
        if client is not None:
            measured = self._profiling_t0 is not None and self._final_cpu_pct is None
            taken = client.take_recv_lags()
            if taken.size and measured:  # not in warmup, nor after profiling
                tick.add(taken)
                self._recv_lags.merge(tick)
        if self._final_cpu_pct is not None:
            reg.gauge(names.CLIENT_CPU).set(self._final_cpu_pct)
            if self._recv_lags.count:
                reg.gauge(names.RECV_LAG_P99).set(self._recv_lags.percentile(99) / 1e6)
        elif self.phase not in ("starting", "preflight"):  # a worker that never loaded has none
            if wall > 0:
                reg.gauge(names.CLIENT_CPU).set(100.0 * cpu / wall)
            if tick.count:
                reg.gauge(names.RECV_LAG_P99).set(tick.percentile(99) / 1e6)
        errors = self._checkpoint.write_errors if self._checkpoint is not None else 0
        errors += self._base_write_errors
        if errors:
            counter = reg.counter(CHECKPOINT_WRITE_ERRORS)
            counter.inc(errors - counter.value)
        if client is not None:  # the whole worker's connects, preflight included
            for name, value in (
                (names.CONNECT_ATTEMPTS, client.connect_attempts),
                (names.CONNECT_FAILURES, client.connect_failures),
            ):
                if value:
                    counter = reg.counter(name)
                    counter.inc(value - counter.value)


async def run_worker(config: WorkerConfig) -> FinalOutcome:
    """Run one worker to completion in-process (see :class:`Worker` to stop it)."""
    return await Worker(config).run()
