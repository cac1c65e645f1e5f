"""One BenchmarkRun on this machine: the same pieces the operator drives, as local processes.

    target   the spec's URL(s), or a mock model server child process (`benchop mock-server`)
             serving the spec's model name
    agent    one in-process node agent (simulated GPUs unless NVML loads; marked so)
    gates    a GateCoordinator on a loopback port, the agent as its only collector
    results  a Subscriber on a loopback port for the workers' snapshots
    workers  N `benchop loadgen` child processes, one results directory each

The status is built with the operator's own transitions (``benchop.core.lifecycle``) and
the results with the same rules (``benchop.core.results``, ``benchop.core.gpuwindow``): per
worker the COMPLETE snapshot over pub/sub, else its ``final.msgpack``, else its latest live
snapshot; a worker with none makes the results ``complete: false``, as in the operator.

A worker that ends the run early (its preflight failed, a Secret is missing, too many requests
failed: an *abort* in its snapshot) ends the run: the other workers are stopped (SIGTERM:
they drain and report) and the run fails with the abort's reason, as in the operator.

Secrets: the workers read ``DIR/<secret>/<key>`` files (``--secrets-dir``, default
``$BENCHOP_SECRETS_DIR``): the layout of a mounted Secret, e.g. made with
``kubectl get secret NAME -o json | jq -r '.data.KEY | @base64d' > DIR/NAME/KEY``.

With ``bundle_dir`` set, the results bundle goes there (``benchop.core.bundle``): results.json
and timeseries.csv from the same final snapshots, GPU columns from the local agent's samples
of the profiling window, and records.jsonl merged from the workers' files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from benchagent.agent import Agent, AgentConfig
from benchagent.codec import MsgpackCodec
from benchagent.gpu import Backend
from benchagent.transport import Subscriber
from benchagent.wire import MetricsSnapshot
from benchop import bundle as files
from benchop.api import conditions as c
from benchop.api.models import BenchmarkRun, BenchmarkRunSpec, Phase, Results, to_wire
from benchop.core import bundle, lifecycle
from benchop.core.gaterecords import GateOutcome, gate_record, profiling_window
from benchop.core.gpuwindow import gpu_from_status
from benchop.core.results import (
    REASONS,
    Final,
    MergedMetrics,
    RequestInfo,
    abort_message,
    build_final,
    final_snapshots,
    first_abort,
    output_tokens,
    verdict,
)
from benchop.gates import AgentEndpoint, GateCoordinator
from benchop.local.progress import progress_view
from benchop.metrics.timeline import merge_rows
from benchop.mockserver import MockConfig, spawn_mock_server_process

PHASE_ID = "profiling"
COMPLETE_WAIT_S = 5.0  # after the workers exited, how long COMPLETE snapshots may still arrive
ABORTED_WAIT_S = 0.5  # the same after a worker ended the run early


@dataclass
class LocalOptions:
    """How ``benchop run`` runs things; every default suits a laptop."""

    results_dir: Path
    gpu_backend: Backend = "auto"
    gpus: int = 1
    agent: bool = True
    live: bool = True
    mock: MockConfig = field(default_factory=MockConfig)
    console: Console = field(default_factory=lambda: Console(stderr=True))
    secrets_dir: Path | None = None
    mock_url: str | None = None
    """A mock server already running (:func:`shared_mock`): runs without a URL use it."""
    bundle_dir: Path | None = None  # where the results bundle goes (None: nowhere)
    run_meta: dict[str, Any] = field(default_factory=dict)  # extra results.json "run" fields


@dataclass
class LocalOutcome:
    name: str
    status: dict[str, Any]
    results: Results | None
    succeeded: bool
    bundle_dir: Path | None = None
    bundle_s: float = 0.0  # time spent writing the bundle


class _GpuRecorder:
    """The local agent's readings, one point per sampler tick: power summed over the GPUs,
    utilisation averaged (the GPU columns of timeseries.csv)."""

    def __init__(self, agent: Agent | None) -> None:
        self._agent = agent
        self._last = 0
        self.points: list[bundle.GpuPoint] = []

    def poll(self) -> None:
        tick = self._agent.sampler.latest if self._agent is not None else None
        if tick is None or tick.time_ns == self._last:
            return
        self._last = tick.time_ns
        ok = [s for s in tick.samples if s.error is None]
        if ok:
            self.points.append(
                bundle.GpuPoint(
                    t_s=tick.time_ns / 1e9,
                    power_w=sum(s.power_w for s in ok),
                    util_pct=sum(s.gpu_util_pct for s in ok) / len(ok),
                )
            )


class _Status:
    """The status the operator would have written, from the same lifecycle.

    ``apply`` takes a transition's result (None: nothing changes) and turns every condition
    that changed into a line for the live view.
    """

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.status: dict[str, Any] = {}
        self.events: list[str] = []

    def apply(self, new: dict[str, Any] | None) -> None:
        if new is None:
            return
        before = {x["type"]: (x["status"], x["reason"]) for x in self.status.get("conditions", [])}
        for cond in new.get("conditions", []):
            if before.get(cond["type"]) != (cond["status"], cond["reason"]):
                message = f": {cond['message']}" if cond.get("message") else ""
                self.events.append(f"{cond['type']}={cond['status']} {cond['reason']}{message}")
        self.status = new


@contextlib.asynccontextmanager
async def shared_mock(
    opts: LocalOptions,
    needed: bool = True,
    model: str | None = None,
    tokenizer: str | None = None,
) -> AsyncIterator[LocalOptions]:
    """``opts`` with one mock server for several runs (an Experiment's runs share it, as they
    would share one real server), serving ``model`` and counting prompts with ``tokenizer``
    (the runs' tokenizer.json); ``needed`` False (every run has a URL): ``opts`` as is."""
    if not needed or opts.mock_url is not None:
        yield opts
        return
    config = _mock_config(opts, model, tokenizer)
    proc, url = await asyncio.to_thread(spawn_mock_server_process, config)
    try:
        yield replace(opts, mock_url=url, mock=config)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait)


def _mock_config(opts: LocalOptions, model: str | None, tokenizer: str | None) -> MockConfig:
    """The mock server's config: ``opts.mock`` serving ``model`` and counting with
    ``tokenizer`` where given."""
    config = opts.mock if model is None else replace(opts.mock, model=model)
    return config if tokenizer is None else replace(config, tokenizer=tokenizer)


@contextlib.asynccontextmanager
async def _target(spec: BenchmarkRunSpec, opts: LocalOptions) -> AsyncIterator[str | None]:
    """None when the spec names its target; else a mock server's URL: the shared one, or one
    of its own serving the spec's model (the preflight checks the model list) and counting
    prompts with the spec's tokenizer, as the workers do."""
    if spec.target.endpoints:
        yield None
        return
    if opts.mock_url is not None:
        yield opts.mock_url
        return
    tok = spec.workload.tokenizer
    config = _mock_config(opts, spec.target.model, tok.file if tok else None)
    proc, mock_url = await asyncio.to_thread(spawn_mock_server_process, config)
    try:
        yield mock_url
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait)


@contextlib.asynccontextmanager
async def _agent(opts: LocalOptions) -> AsyncIterator[Agent | None]:
    if not opts.agent:
        yield None
        return
    agent = Agent(
        AgentConfig.local(
            gpu_backend=opts.gpu_backend,
            simulated_gpus=opts.gpus,
            node_name="localhost",
            agent_name="local-agent",
        )
    )
    await agent.start()
    try:
        async with asyncio.timeout(10):
            await agent.wait_ready()
        yield agent
    finally:
        await agent.stop()


def _results_files(results_dir: Path, workers: Iterable[int]) -> dict[int, MetricsSnapshot]:
    """The final snapshots the ``workers`` wrote to their results directories, where readable."""
    codec = MsgpackCodec()
    out = {}
    for w in workers:
        try:
            msg = codec.decode((results_dir / f"worker-{w}" / "final.msgpack").read_bytes())
        except OSError:
            continue
        if isinstance(msg, MetricsSnapshot):
            out[w] = msg
    return out


async def run_benchmark(run: BenchmarkRun, opts: LocalOptions) -> LocalOutcome:
    """Run ``run`` locally to the end; never raises for a failed benchmark (see ``succeeded``)."""
    spec = run.spec
    name = run.metadata.name or "local-run"
    workers = spec.load.workers
    st = _Status(run.metadata.generation or 1)
    st.apply(lifecycle.accepted(st.status, generation=st.generation, now=c.now_rfc3339()))
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    spec_file = opts.results_dir / "spec.json"
    spec_file.write_text(json.dumps(to_wire(run)))

    async with _target(spec, opts) as mock_url, _agent(opts) as agent:
        shown = (
            mock_url + " (built-in mock server)" if mock_url else ", ".join(spec.target.endpoints)
        )
        st.events.append(f"target {shown}")
        agents: list[AgentEndpoint] = []
        if agent is None:
            st.events.append("no agent: GPU numbers are not measured")
        else:
            agents.append(
                AgentEndpoint(
                    name=agent.config.agent,
                    node=agent.config.node,
                    endpoint=agent.baseline_endpoint,
                )
            )
        sub = Subscriber()
        sub.start()

        async def on_gate(run_name: str, outcome: GateOutcome) -> None:
            st.apply(
                lifecycle.gate_closed(
                    st.status,
                    generation=st.generation,
                    boundary=outcome.boundary,
                    record=gate_record(outcome),
                    requested=spec.gates.baseline,
                )
            )

        coordinator = GateCoordinator(on_gate=on_gate)
        await coordinator.start()
        coordinator.register_run(
            name,
            workers=workers,
            agents=agents,
            timeout_s=spec.gates.timeout.seconds,
            baseline=spec.gates.baseline,
        )
        try:
            gpu_rec = _GpuRecorder(agent)
            codes, aborted = await _run_workers(
                name,
                mock_url,
                spec_file,
                workers,
                coordinator.endpoint,
                sub,
                st,
                opts,
                warmup=spec.phases.warmup is not None,
                on_worker_died=lambda: coordinator.forget_run(name),
                on_tick=gpu_rec.poll,
            )
            # after an abort the stopped workers' files are as good: no long wait
            wait = ABORTED_WAIT_S if aborted else COMPLETE_WAIT_S
            complete = await sub.wait_for_complete(name, workers, wait)
            latest = sub.latest(name)
        finally:
            await coordinator.close()
            sub.close()

    files = _results_files(opts.results_dir, [w for w in range(workers) if w not in complete])
    final = final_snapshots(workers, [("pubsub", complete), ("local", files), ("live", latest)])
    abort = first_abort([complete, files, latest])
    results_doc = None
    results_reason = ""
    merged = None
    if final is not None:
        gates = st.status.get("gates") or {}
        gpu = gpu_from_status(gates, output_tokens=output_tokens(final))
        results_doc, merged = build_final(
            final,
            slo=spec.slo,
            gpu=gpu,
            request=RequestInfo.of(spec),
            report=spec.report,
            tokenizer=spec.workload.tokenizer,
        )
        results_reason = REASONS[final.source]
    now = c.now_rfc3339()
    failed = {w: code for w, code in enumerate(codes) if code != 0}
    if abort is not None:  # the cause: the other workers were stopped because of it
        st.apply(
            lifecycle.failed(
                st.status,
                generation=st.generation,
                reason=abort[1].reason,
                message=abort_message(*abort),
                now=now,
                results=results_doc,
                results_reason=results_reason,
            )
        )
    elif results_doc is None or failed:
        message = (
            ", ".join(f"worker {w} exited {code}" for w, code in failed.items())
            or "no worker produced a final snapshot"
        )
        st.apply(
            lifecycle.failed(
                st.status,
                generation=st.generation,
                reason="WorkerFailed" if failed else "NoResults",
                message=message,
                now=now,
                results=results_doc,
                results_reason=results_reason,
            )
        )
    else:
        ok, reason, message = verdict(results_doc)
        st.apply(
            lifecycle.finished(
                st.status,
                generation=st.generation,
                results=results_doc,
                results_reason=results_reason,
                succeeded=ok,
                reason=reason,
                message=message,
                now=now,
            )
        )
    ok = st.status.get("phase") == Phase.SUCCEEDED.value
    results = Results.model_validate(results_doc) if results_doc is not None else None
    outcome = LocalOutcome(name=name, status=st.status, results=results, succeeded=ok)
    if opts.bundle_dir is not None and final is not None and merged is not None:
        t0 = time.perf_counter()
        st.status["output"] = {"path": str(opts.bundle_dir)}
        try:
            write_bundle(opts.bundle_dir, run, st.status, final, merged, gpu_rec.points, opts)
            outcome.bundle_dir = opts.bundle_dir
        except OSError as exc:  # the results are in the status all the same
            st.status["output"] = {"error": f"writing the bundle to {opts.bundle_dir}: {exc}"}
            opts.console.print(f"[red]{name}: {st.status['output']['error']}[/red]")
        outcome.bundle_s = time.perf_counter() - t0
        if outcome.bundle_dir is not None:
            opts.console.print(
                f"{name}: results bundle in {outcome.bundle_dir}/ "
                f"(written in {outcome.bundle_s:.2f} s)",
                markup=False,
                highlight=False,
            )
    return outcome


def child_options(
    opts: LocalOptions, run: BenchmarkRun, index: int, experiment: str, params: dict[str, Any]
) -> LocalOptions:
    """The options of an Experiment's child run: its own workers' directory and, when the
    Experiment writes a bundle, the child's in a sub-directory named after the child."""
    child = run.metadata.name or f"run-{index}"
    return replace(
        opts,
        results_dir=opts.results_dir / f"run-{index}",
        bundle_dir=opts.bundle_dir / child if opts.bundle_dir is not None else None,
        run_meta={"experiment": experiment, "params": params, "index": index},
    )


def write_bundle(
    out: Path,
    run: BenchmarkRun,
    status: dict[str, Any],
    final: Final,
    merged: MergedMetrics,
    gpu_points: list[bundle.GpuPoint],
    opts: LocalOptions,
) -> None:
    """results.json, timeseries.csv and the merged records.jsonl of a finished run in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    succeeded: dict[str, Any] = next(
        (x for x in status["conditions"] if x["type"] == "Succeeded"), {}
    )
    meta = {"name": run.metadata.name or "local-run", "namespace": "local", **opts.run_meta}
    doc = bundle.results_document(
        merged,
        results=status.get("results") or {},
        run=meta,
        spec=to_wire(run.spec),
        percentiles=bundle.percentiles_for(run.spec.report),
        status={
            "phase": status.get("phase"),
            "reason": succeeded.get("reason"),
            "message": succeeded.get("message"),
            "startTime": status.get("startTime"),
            "completionTime": status.get("completionTime"),
        },
    )
    window = profiling_window(status.get("gates") or {})
    start = window[0] if window else None
    points = [p for p in gpu_points if window is None or window[0] <= p.t_s <= window[1] + 1]
    rows = merge_rows(s.timeline for s in final.snapshots)
    text = bundle.timeseries_csv(rows, start_s=start, gpu=points)
    files.write_text(out / bundle.TIMESERIES_FILE, text)
    worker_dirs = [opts.results_dir / f"worker-{w}" for w in range(run.spec.load.workers)]
    count = files.merge_records(worker_dirs, out / bundle.RECORDS_FILE)
    doc = bundle.with_files(
        doc,
        timeseries=bundle.timeseries_info(1, len(rows), "agent" if points else "none", start),
        records={"count": count},
    )
    files.write_text(out / bundle.RESULTS_FILE, bundle.dumps(doc))


async def _run_workers(
    name: str,
    url: str | None,
    spec_file: Path,
    workers: int,
    gate_endpoint: str,
    sub: Subscriber,
    st: _Status,
    opts: LocalOptions,
    *,
    warmup: bool,
    on_worker_died: Callable[[], None],
    on_tick: Callable[[], None] = lambda: None,
) -> tuple[list[int], bool]:
    """Run the workers to their end; their exit codes, and whether one ended the run early."""
    procs: list[asyncio.subprocess.Process] = []
    logs = []
    for w in range(workers):
        wdir = opts.results_dir / f"worker-{w}"
        wdir.mkdir(parents=True, exist_ok=True)
        log = (wdir / "worker.log").open("wb")
        logs.append(log)
        cmd = [
            sys.executable, "-m", "benchop", "loadgen",
            "--spec", str(spec_file), "--run", name,
            "--worker-index", str(w), "--workers", str(workers),
            "--gate-endpoint", gate_endpoint, "--snapshot-endpoint", sub.endpoint,
            "--results-dir", str(wdir), "--termination-log", str(wdir / "termination-log"),
        ]  # fmt: skip
        if url is not None:
            cmd += ["--target-url", url]
        if opts.secrets_dir is not None:
            cmd += ["--secrets-dir", str(opts.secrets_dir)]
        procs.append(
            await asyncio.create_subprocess_exec(*cmd, stdout=log, stderr=subprocess.STDOUT)
        )
    ready = False
    released = False
    aborted = False
    live = Live(console=opts.console, refresh_per_second=4, transient=False) if opts.live else None
    try:
        if live is not None:
            live.start()
        while any(p.returncode is None for p in procs):
            on_tick()
            latest = sub.latest(name)
            if not ready and len(latest) == workers:
                ready = True
                st.apply(
                    lifecycle.workers_ready(
                        st.status,
                        generation=st.generation,
                        running=workers,
                        workers=workers,
                        warmup=warmup,
                    )
                )
            if not aborted and (by := _abort_seen(latest, procs, opts.results_dir)) is not None:
                # a worker ended the run (preflight, failures): stop the others now rather
                # than let them wait at a gate for it or load a target the run gave up on
                aborted = True
                st.events.append(f"worker {by} ended the run early: stopping the others")
                for w, p in enumerate(procs):
                    if p.returncode is None and w != by:
                        p.terminate()
                on_worker_died()
            dead = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if dead and not released:
                # a worker died: release the others from the gate barrier instead of letting
                # them wait for it (they are denied, finish ungated and report)
                released = True
                on_worker_died()
            if live is not None:
                live.update(
                    progress_view(name, st.status.get("phase", "-"), latest, workers, st.events)
                )
            await asyncio.sleep(0.25)
        if live is not None:
            live.update(
                progress_view(
                    name, st.status.get("phase", "-"), sub.latest(name), workers, st.events
                )
            )
    except asyncio.CancelledError:
        for p in procs:  # Ctrl-C: the workers drain and still write their final snapshot
            if p.returncode is None:
                p.terminate()
        for p in procs:
            await p.wait()
        raise
    finally:
        if live is not None:
            live.stop()
        for log in logs:
            log.close()
    codes = [await p.wait() for p in procs]
    if aborted:  # stopped by us: their exit code says SIGTERM, not a failure of their own
        codes = [0 if code in (128 + signal.SIGTERM, -signal.SIGTERM) else code for code in codes]
    for w, code in enumerate(codes):
        if code != 0:
            tail = (opts.results_dir / f"worker-{w}" / "worker.log").read_text()[-2000:]
            opts.console.print(f"[red]worker {w} exited {code}[/red]; its log ends:\n{tail}")
    return codes, aborted


def _abort_seen(
    latest: dict[int, MetricsSnapshot],
    procs: list[asyncio.subprocess.Process],
    results_dir: Path,
) -> int | None:
    """The worker that reported an abort, if one did: in a live snapshot, or in the final
    file of one that exited (its COMPLETE may not have made it over pub/sub)."""
    exited = [w for w, p in enumerate(procs) if p.returncode is not None]
    found = first_abort([latest, _results_files(results_dir, exited)])
    return None if found is None else found[0]
