"""BenchmarkRun reconciliation as plain async functions (``main`` wires them to kopf).

Flow (docs/operator.md has the picture):

1. :func:`observe_run` (every BenchmarkRun event) queues a run not known here; its first pass
   (:func:`admit_run`) validates it, then :func:`reconcile_run`: Accepted=True,
   Succeeded=Unknown, phase Initializing; the spec ConfigMap and the loadgen Job created
   idempotently; the run registered with the gate coordinator (seeded from ``status.gates``
   after a restart). :func:`reject_run` handles an invalid spec (Accepted=False InvalidSpec,
   phase Failed). An API error there is retried by the scheduler with backoff.
2. :func:`observe_pod` / :func:`observe_job` (watch events) record what the kubelet and the Job
   controller report into the run's :class:`RunContext` and wake it.
3. :func:`run_pass` (the :class:`~benchop.operator.scheduler.Scheduler`'s step: one loop over
   every run in progress, a pass per run when due or woken) is the only place that ends a run:
   WorkersReady, stuck pods, Job failure, a worker's abort (its preflight failed, a Secret is
   missing or too many requests failed: the run fails at once with that reason), the watchdog
   deadline, ``status.live`` at most once per ``--live-interval``, and final results once every
   worker is COMPLETE or the Job completed.
4. Gate outcomes come from :mod:`benchop.operator.gatebridge` (:func:`record_gate`).
5. With ``spec.prometheus.url`` set, :mod:`benchop.operator.gpustats` adds ``status.live.gpu``
   to the live patches and ``results.gpu.prometheus`` (the window between the gates) to the
   final results; a Prometheus error is ``TelemetryDegraded=True PrometheusUnavailable``.
6. :func:`forget_run` (deleted) drops the in-memory gate, snapshot and Prometheus state.

All status writes go through the run's :class:`~benchop.operator.status.StatusWriter`; what
they write comes from the pure transitions in :mod:`benchop.core.lifecycle`, and the final
results from :mod:`benchop.core.results` (the same functions local mode calls).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import kopf
from pydantic import ValidationError

from benchagent.wire import MetricsSnapshot, ResumeReply, ResumeRequest
from benchop.api import conditions as c
from benchop.api.conditions import now_rfc3339
from benchop.api.models import (
    BenchmarkRun,
    BenchmarkRunSpec,
    GpuResults,
    format_validation_error,
    to_wire,
)
from benchop.core import lifecycle, resume
from benchop.core.gaterecords import profiling_window
from benchop.core.gpuwindow import gpu_from_status
from benchop.core.names import (
    RUN_NAME_ANNOTATION,
    loadgen_job_name,
    owner_reference,
    spec_configmap_name,
)
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
    parse_termination_message,
    verdict,
)
from benchop.core.selectors import LOADGEN_SELECTOR
from benchop.core.workloadfiles import cluster_problem, configmap_problem, configmap_sources
from benchop.operator import builders
from benchop.operator.curvekeys import KeyFiles
from benchop.operator.events import warn_run
from benchop.operator.gatebridge import GateBridge
from benchop.operator.gpustats import RunGpuStats, with_prometheus
from benchop.operator.k8s import (
    BENCHMARKRUN,
    CONFIGMAP,
    JOB,
    POD,
    ApiError,
    KubeApi,
    controller_uid,
    object_meta,
)
from benchop.operator.output import write_output
from benchop.operator.pods import GRACEFUL, JobView, PodView, job_view, pod_view
from benchop.operator.scheduler import Scheduler
from benchop.operator.settings import OperatorSettings
from benchop.operator.snapshots import SnapshotCollector, live_status
from benchop.operator.status import StatusWriter

log = logging.getLogger(__name__)

RESYNC_S = 60.0
"""Every load-generator pod and Job is compared this often (:func:`resync_all`)."""
RESYNC_PAGE_PAUSE_S = 0.2
"""The resync's pause between two pages of its LISTs."""
TICK_S = 1.0
"""The run loop wakes at least this often (and at once on a pod/Job event)."""
SOURCE_CHECK_S = 5.0
"""Until the workers are ready, a dataset or tokenizer ConfigMap is read this often."""


def run_key(namespace: str, name: str, uid: str) -> str:
    """The run id workers, gates and snapshots use: ``<namespace>.<name>.<uid[:8]>``.

    The uid part tells two incarnations of a name apart: the workers of a deleted run (still
    draining before GC) publish and ask for gates under their own key, which the re-created
    run does not use. The only place this key is computed (the Job gets it as BENCHOP_RUN).
    """
    return f"{namespace}.{name}.{uid[:8]}"


def object_key(namespace: str, name: str) -> str:
    """``<namespace>/<name>``: the run object, whatever its incarnation (status writers)."""
    return f"{namespace}/{name}"


class InvalidRun(ValueError):
    """The spec is valid for the schema but not for the operator; the message names the field."""


NO_TARGET = (
    "required in a cluster, or urls (local mode has a built-in mock server; in a cluster, an "
    "operator installed with mockServer.enabled sends such runs to the chart's mock server)"
)
DEFAULT_SETTINGS = OperatorSettings()


def with_default_target(run: BenchmarkRun, default_url: str | None) -> BenchmarkRun:
    """The run with ``spec.target.url`` set to the operator's ``--default-target-url`` when it
    has neither url nor urls (in memory: the workers read the spec ConfigMap built from this)."""
    if run.spec.target.endpoints or default_url is None:
        return run
    target = run.spec.target.model_copy(update={"url": default_url})
    return run.model_copy(update={"spec": run.spec.model_copy(update={"target": target})})


def check_operator_rules(run: BenchmarkRun, settings: OperatorSettings = DEFAULT_SETTINGS) -> None:
    """Rules of the in-cluster operator beyond the model's (local mode may differ), and the
    operator's allowlists (:mod:`benchop.operator.policy`; the operator's own
    ``--default-target-url`` is not checked against them)."""
    spec = run.spec
    if not spec.target.endpoints:
        raise InvalidRun(f"spec.target.url: {NO_TARGET}")
    problem = cluster_problem(spec.workload)
    if problem is not None:
        raise InvalidRun(problem)
    refused = settings.policy().problems(
        image=spec.pod.image if spec.pod else None,
        target_url=None if spec.target.url == settings.default_target_url else spec.target.url,
        prometheus_url=spec.prometheus.url if spec.prometheus else None,
        target_urls=spec.target.urls or (),
    )
    if refused:
        raise InvalidRun("; ".join(refused))


@dataclass(slots=True)
class RunContext:
    """In-memory state of one non-terminal run (lost on restart; rebuilt from the cluster)."""

    key: str
    namespace: str
    name: str
    uid: str
    generation: int
    spec: BenchmarkRunSpec
    writer: StatusWriter
    accepted: bool = False  # its children exist (or were adopted): its passes drive it
    pods: dict[str, PodView] = field(default_factory=dict)
    stuck_since: dict[str, float] = field(default_factory=dict)
    job: JobView = field(default_factory=lambda: JobView(None, "", ""))
    job_complete_at: float | None = None
    started_at: float = field(default_factory=time.time)  # wall clock, from status.startTime
    last_live_at: float = float("-inf")
    last_live_seqs: dict[int, int] = field(default_factory=dict)
    messages: dict[int, str] = field(default_factory=dict)  # termination messages of pods gone
    parsed: dict[int, tuple[str, MetricsSnapshot | None]] = field(default_factory=dict)
    refused_since: float | None = None  # monotonic; the Job's pod creation is being refused
    snapshot_seen: bool = False  # a worker's snapshot arrived (the loop then ticks)
    refused_message: str = ""  # the latest FailedCreate event's message
    missing_since: float | None = None  # monotonic; a workload ConfigMap (or key) is missing
    next_source_check: float = 0.0  # monotonic; when to read the workload ConfigMaps again
    done: bool = False
    preloaded_at: float | None = None  # monotonic; taken over from an earlier operator process
    gpu: RunGpuStats | None = field(init=False)  # Prometheus GPU stats (spec.prometheus.url)
    scheduler: Scheduler | None = None  # set by Services.add: :meth:`wake` asks it for a pass

    def __post_init__(self) -> None:
        self.gpu = RunGpuStats.for_spec(self.namespace, self.spec)

    @property
    def workers(self) -> int:
        return self.spec.load.workers

    def wake(self) -> None:
        """A pass of this run now (an event changed what it knows)."""
        if self.scheduler is not None:
            self.scheduler.wake(self.key)

    def termination(self) -> dict[int, str]:
        """Termination message per worker index (a deleted pod's stays: the fallback source)."""
        out = dict(self.messages)
        for view in self.pods.values():
            if view.index is not None and view.termination_message:
                out[view.index] = view.termination_message
        return out


@dataclass
class Services:
    """Shared services of one operator process; lives in kopf's ``memo.services``."""

    settings: OperatorSettings
    api: KubeApi
    snapshots: SnapshotCollector
    gates: GateBridge[RunContext]
    runs: dict[str, RunContext] = field(default_factory=dict)  # by run_key
    pending: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # to admit, by run_key
    ended: dict[str, None] = field(default_factory=dict)  # released run_keys, oldest first
    writers: dict[str, StatusWriter] = field(default_factory=dict)  # by object_key
    keys: dict[str, str] = field(default_factory=dict)  # object_key -> run_key in ``runs``
    curve: KeyFiles | None = None  # CurveZMQ (--curve-secret): the workers get its public key
    scheduler: Scheduler = field(init=False)  # every run's passes (:func:`run_pass`)
    resync: asyncio.Task[None] | None = None  # :func:`resync_loop`, started with the scheduler

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(functools.partial(run_pass, self))

    def writer(self, namespace: str, name: str) -> StatusWriter:
        key = object_key(namespace, name)
        if key not in self.writers:
            self.writers[key] = StatusWriter(self.api, BENCHMARKRUN, namespace, name)
        return self.writers[key]

    def by_name(self, namespace: str, name: str) -> RunContext | None:
        """The in-memory context of the run object ``namespace/name`` (its latest incarnation)."""
        key = self.keys.get(object_key(namespace, name))
        return self.runs.get(key) if key is not None else None

    def add(self, ctx: RunContext) -> None:
        """Track ``ctx``; a context of an older incarnation of the same name is released."""
        old = self.by_name(ctx.namespace, ctx.name)
        if old is not None and old is not ctx:
            release(self, old)
        self.runs[ctx.key] = ctx
        self.keys[object_key(ctx.namespace, ctx.name)] = ctx.key
        ctx.scheduler = self.scheduler


def parse_time(text: str | None) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp (``2024-05-01T12:00:00Z``), None if unreadable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --------------------------------------------------------------------------- create / resume


async def reject_run(services: Services, body: Mapping[str, Any], message: str) -> None:
    """Invalid spec: Accepted=False InvalidSpec + Succeeded=False + phase Failed."""
    namespace, name, _, generation = object_meta(body)
    writer = services.writer(namespace, name)
    writer.seed(body)
    now = now_rfc3339()
    try:
        await writer.update(
            lambda st: lifecycle.rejected(st, generation=generation, message=message, now=now)
        )
    finally:
        services.writers.pop(object_key(namespace, name), None)  # terminal: nothing more to write


async def observe_run(services: Services, body: Mapping[str, Any], event_type: str | None) -> None:
    """Every BenchmarkRun event: a run not known here is admitted (by its next pass, at once),
    a deleted one forgotten. Runs in progress, ended and terminal ones are left alone, so the
    events of the operator's own status patches cost a lookup."""
    namespace, name, uid, _ = object_meta(body)
    if event_type == "DELETED" or body["metadata"].get("deletionTimestamp"):
        forget_run(services, namespace, name, uid)
        return
    key = run_key(namespace, name, uid)
    if key in services.runs or key in services.pending or key in services.ended:
        return
    if lifecycle.is_terminal(body.get("status")):
        return
    services.pending[key] = body
    services.scheduler.wake(key)


async def admit_run(services: Services, body: Mapping[str, Any]) -> None:
    """Validate the run; accept it (:func:`reconcile_run`) or reject it (:func:`reject_run`).
    An API error propagates: the scheduler retries the pass with backoff."""
    try:
        run = with_default_target(
            BenchmarkRun.model_validate(
                {"metadata": dict(body["metadata"]), "spec": dict(body.get("spec") or {})}
            ),
            services.settings.default_target_url,
        )
        check_operator_rules(run, services.settings)
    except (ValidationError, InvalidRun) as e:
        message = format_validation_error(e) if isinstance(e, ValidationError) else str(e)
        await reject_run(services, body, message)
        namespace, name, uid, _ = object_meta(body)
        _ended(services, run_key(namespace, name, uid))
        log.warning("run %s/%s: invalid spec: %s", namespace, name, message)
        await warn_run(services.api, namespace, name, uid, "InvalidSpec", message)
        return
    await reconcile_run(services, body, run)


async def reconcile_run(services: Services, body: Mapping[str, Any], run: BenchmarkRun) -> None:
    """Accept a valid run, create its children idempotently, register it with the gates."""
    if lifecycle.is_terminal(body.get("status")):
        return  # finished before (e.g. resumed after a restart): nothing in memory for it
    namespace, name, uid, generation = object_meta(body)
    writer = services.writer(namespace, name)
    writer.seed(body)
    key = run_key(namespace, name, uid)
    ctx = services.runs.get(key)
    if ctx is None:  # new, resumed, or a deleted and re-created run (the old one is released)
        ctx = RunContext(key, namespace, name, uid, generation, run.spec, writer)
        services.add(ctx)
    now = now_rfc3339()
    status = await writer.update(lambda st: lifecycle.accepted(st, generation=generation, now=now))
    if status is None or lifecycle.is_terminal(status):
        release(services, ctx)
        return
    ctx.started_at = parse_time(status.get("startTime")) or ctx.started_at
    owner = owner_reference(body)
    settings = services.settings
    cm = builders.build_spec_configmap(
        run, name=spec_configmap_name(name), namespace=namespace, owner=owner
    )
    job = builders.build_loadgen_job(
        run,
        name=loadgen_job_name(name),
        namespace=namespace,
        owner=owner,
        image=settings.image,
        gate_endpoint=settings.worker_gate_endpoint(services.gates.endpoint),
        snapshot_endpoint=settings.worker_snapshot_endpoint(services.snapshots.endpoint),
        run_key=key,
        curve_server_key=services.curve.operator_public_z85 if services.curve else None,
    )
    # Registered before the Job exists: no worker can ask for a gate of an unknown run.
    await services.gates.register(ctx, status.get("gates") or {})
    try:
        await services.api.create(CONFIGMAP, namespace, cm)
        await services.api.create(JOB, namespace, job)
    except ApiError as e:  # refused (422 bad nodeSelector, 403 RBAC): retrying will not help
        await _fail(services, ctx, "ChildCreateFailed", f"creating the run's children: {e}")
        release(services, ctx)
        return
    ctx.accepted = True


async def preload_runs(services: Services) -> int:
    """Register every accepted, non-terminal run with the gates (startup, before serving).

    After a restart, workers retry their gate requests as soon as the ROUTER is back; a run
    the coordinator does not know yet would be denied (the worker then goes on ungated), so the
    runs in progress are registered, with their closed gates restored from status, first.
    """
    namespaces: list[str | None] = list(services.settings.namespaces) or [None]
    count = 0
    for ns in namespaces:
        for body in await services.api.list(BENCHMARKRUN, ns):
            status = body.get("status") or {}
            accepted = c.get_condition(status.get("conditions"), c.ACCEPTED)
            if lifecycle.is_terminal(status) or not accepted or accepted["status"] != c.TRUE:
                continue
            try:
                run = with_default_target(
                    BenchmarkRun.model_validate(
                        {"metadata": body["metadata"], "spec": body.get("spec") or {}}
                    ),
                    services.settings.default_target_url,
                )
            except ValidationError:
                continue  # the create/resume handler reports it
            namespace, name, uid, generation = object_meta(body)
            key = run_key(namespace, name, uid)
            writer = services.writer(namespace, name)
            writer.seed(body)
            ctx = RunContext(key, namespace, name, uid, generation, run.spec, writer)
            ctx.preloaded_at = time.monotonic()
            services.add(ctx)
            await services.gates.register(ctx, status.get("gates") or {})
            services.pending[key] = body  # its first pass re-adopts (or re-creates) its children
            services.scheduler.wake(key)
            count += 1
    return count


# --------------------------------------------------------------------------- watch events


def _ctx_for(services: Services, obj: Mapping[str, Any]) -> RunContext | None:
    meta = obj.get("metadata") or {}
    run_name = (meta.get("annotations") or {}).get(RUN_NAME_ANNOTATION)
    if not run_name:
        return None
    return services.by_name(meta.get("namespace", ""), run_name)


def _note_pod(ctx: RunContext, pod: Mapping[str, Any], deleted: bool = False) -> None:
    view = pod_view(pod)
    if deleted:
        ctx.pods[view.name] = view  # its last state may carry the termination message
        _drop_pod(ctx, view.name)
        return
    ctx.pods[view.name] = view
    if view.stuck_reason is None:
        ctx.stuck_since.pop(view.name, None)
    else:
        ctx.stuck_since.setdefault(view.name, time.monotonic())


def _drop_pod(ctx: RunContext, name: str) -> None:
    """Forget a pod that is gone, keeping its termination message."""
    view = ctx.pods.pop(name, None)
    ctx.stuck_since.pop(name, None)
    if view is not None and view.index is not None and view.termination_message:
        ctx.messages[view.index] = view.termination_message


def _note_job(ctx: RunContext, job: Mapping[str, Any]) -> None:
    ctx.job = job_view(job)
    if ctx.job.state == "Complete" and ctx.job_complete_at is None:
        ctx.job_complete_at = time.monotonic()


async def observe_pod(services: Services, pod: Mapping[str, Any], event_type: str | None) -> None:
    """A worker pod changed: remember it and wake the run's loop."""
    ctx = _ctx_for(services, pod)
    if ctx is None:
        return
    _note_pod(ctx, pod, deleted=event_type == "DELETED")
    ctx.wake()


async def observe_job(services: Services, job: Mapping[str, Any]) -> None:
    """The loadgen Job changed: remember its terminal state and wake the run's loop."""
    ctx = _ctx_for(services, job)
    if ctx is None:
        return
    _note_job(ctx, job)
    ctx.wake()


def observe_failed_create(services: Services, event: Mapping[str, Any]) -> None:
    """A Job could not create a pod (ResourceQuota, LimitRange, Pod Security admission, a
    missing ServiceAccount): the Job controller says so only in a FailedCreate event on the
    Job. If it is a run's, the run fails after ``stuck_after_s`` unless its pods appear."""
    involved = event.get("involvedObject") or {}
    namespace, job = involved.get("namespace"), involved.get("name")
    ctx = next(
        (
            c
            for c in services.runs.values()
            if c.namespace == namespace and loadgen_job_name(c.name) == job
        ),
        None,
    )
    when = parse_time(event.get("lastTimestamp") or event.get("eventTime"))
    if ctx is None or when is None or when < ctx.started_at - 1:  # another run's, or older
        return
    ctx.refused_message = str(event.get("message") or "")
    if ctx.refused_since is None:
        ctx.refused_since = time.monotonic()
    ctx.wake()


async def resync_all(services: Services, pause_s: float = RESYNC_PAGE_PAUSE_S) -> None:
    """Compare every load-generator pod and Job the operator watches with what the runs know,
    and re-read those that differ: a missed watch event heals. A LIST of each per watched
    namespace (one with ``--namespace`` unset), whatever the number of runs, read in pages
    (each parsed and dropped: 10,000 Jobs at once were 300 MiB of the operator's memory), with
    ``pause_s`` between pages (10,000 runs are 60 pages: spread over seconds, not a burst that
    held back the runs being admitted meanwhile). What a page shows is only compared: a pod or
    Job whose resourceVersion differs from the one its view was read from, and a pod known
    before the LIST that it lacks, is read again (its current state: a page is older than the
    watch events that arrived while the LIST went on), and its run woken if that changed."""
    known = {key: set(ctx.pods) for key, ctx in services.runs.items()}
    listed: dict[str, set[str]] = {}
    pods: list[tuple[str, str]] = []  # (run key, pod name) to read again
    jobs: list[str] = []  # run keys
    namespaces: list[str | None] = list(services.settings.namespaces) or [None]
    for ns in namespaces:
        async for page in services.api.pages(POD, ns, labels=LOADGEN_SELECTOR):
            for pod in page:
                ctx = _ctx_for(services, pod)
                if ctx is None:
                    continue
                name, version = pod["metadata"]["name"], pod["metadata"].get("resourceVersion")
                listed.setdefault(ctx.key, set()).add(name)
                view = ctx.pods.get(name)
                if view is None or view.resource_version != version:
                    pods.append((ctx.key, name))
            await asyncio.sleep(pause_s)
        async for page in services.api.pages(JOB, ns, labels=LOADGEN_SELECTOR):
            for job in page:
                ctx = _ctx_for(services, job)
                if ctx is not None and ctx.job.resource_version != job["metadata"].get(
                    "resourceVersion"
                ):
                    jobs.append(ctx.key)
            await asyncio.sleep(pause_s)
    for key, names in known.items():
        pods.extend((key, name) for name in names - listed.get(key, set()))
    for key, name in pods:
        ctx = services.runs.get(key)
        if ctx is not None:
            await _reread_pod(services, ctx, name)
    for key in jobs:
        ctx = services.runs.get(key)
        if ctx is not None:
            now = await services.api.get(JOB, ctx.namespace, loadgen_job_name(ctx.name))
            if now is not None and job_view(now) != ctx.job:
                _note_job(ctx, now)
                ctx.wake()


async def _reread_pod(services: Services, ctx: RunContext, name: str) -> None:
    """Read one worker pod afresh (a LIST by name: the operator lists pods, it does not get
    them) and note it, or forget it when it is gone; wake the run if its view changed."""
    found = await services.api.list(POD, ctx.namespace, fields=f"metadata.name={name}")
    before = ctx.pods.get(name)
    if not found:
        if before is not None:
            _drop_pod(ctx, name)
            ctx.wake()
        return
    _note_pod(ctx, found[0])
    if ctx.pods.get(name) != before:
        ctx.wake()


async def resync_loop(services: Services, every_s: float = RESYNC_S) -> None:
    """:func:`resync_all` every ``every_s`` (an API error waits for the next round)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await resync_all(services)
        except (ApiError, kopf.TemporaryError) as e:
            log.warning("resync of the runs' pods and Jobs: %s", e)


# --------------------------------------------------------------------------- gates


async def record_gate(ctx: RunContext, boundary: str, record: Mapping[str, Any]) -> bool:
    """Persist a closed gate into status (before the workers are granted). False if gone."""
    gen = ctx.generation
    requested = ctx.spec.gates.baseline
    status = await ctx.writer.update(
        lambda st: lifecycle.gate_closed(
            st, generation=gen, boundary=boundary, record=record, requested=requested
        )
    )
    ctx.wake()
    return status is not None


# --------------------------------------------------------------------------- resume


def resume_reply(services: Services, req: ResumeRequest) -> ResumeReply:
    """A starting worker's base: the last COMPLETE snapshot of its index, once no earlier pod
    of the index still runs (:mod:`benchop.core.resume`). Answered from memory at once."""
    ctx = services.runs.get(req.run)
    if ctx is None:
        return ResumeReply(run=req.run, worker=req.worker, status="denied", reason="not running")
    now = time.monotonic()
    latest = services.snapshots.latest(req.run).get(req.worker)
    at = services.snapshots.received_at(req.run).get(req.worker)
    status, base = resume.decide(
        req.incarnation,
        latest=latest,
        latest_age_s=None if at is None else now - at,
        complete=services.snapshots.complete(req.run).get(req.worker),
        listening_s=None if ctx.preloaded_at is None else now - ctx.preloaded_at,
    )
    if status == "ready":
        log.info(
            "run %s worker %d (%s) resumes from %s",
            req.run,
            req.worker,
            req.incarnation,
            "nothing" if base is None else f"attempt {base.attempt}, phase {base.phase}",
        )
    return ResumeReply(run=req.run, worker=req.worker, status=status, base=base)


# --------------------------------------------------------------------------- the run loop


def deadline_s(settings: OperatorSettings, spec: BenchmarkRunSpec) -> float:
    """Seconds after acceptance when the watchdog fails a run that is still not terminal.

    ``spec.activeDeadlineSeconds`` plus a grace (the Job's own deadline normally fires
    first); else the operator's default, stretched to twice the phases' durations plus ten
    minutes for a run whose phases are longer than that.
    """
    if spec.active_deadline_seconds is not None:
        return spec.active_deadline_seconds + settings.deadline_grace_s
    phases = (spec.phases.warmup, spec.phases.profiling)
    planned = sum(p.duration.seconds for p in phases if p is not None and p.duration)
    return max(settings.default_deadline_s, 2 * planned + 600)


def _final(services: Services, ctx: RunContext) -> Final | None:
    """The snapshots the final results are built from (pub/sub, termination messages, live)."""
    return final_snapshots(
        ctx.workers,
        [
            ("pubsub", services.snapshots.complete(ctx.key)),
            ("terminationMessage", _terminations(ctx)),
            ("live", services.snapshots.latest(ctx.key)),
        ],
    )


async def _fail(services: Services, ctx: RunContext, reason: str, message: str) -> None:
    """End the run as failed, keeping whatever results the workers reported."""
    final = _final(services, ctx)
    results = None
    results_reason = ""
    prom_error = None
    output = None
    merged = None
    if final is not None:
        try:
            gpu, prom_error = await _gpu_results(services, ctx, final)
            results, merged = build_final(
                final,
                slo=ctx.spec.slo,
                gpu=gpu,
                request=RequestInfo.of(ctx.spec),
                report=ctx.spec.report,
                tokenizer=ctx.spec.workload.tokenizer,
            )
            results_reason = REASONS[final.source]
        except kopf.TemporaryError:
            raise
        except Exception:  # the failure is what matters; results that cannot be built are not
            log.exception("run %s: results of a failed run could not be built", ctx.key)
            results = None
    now = now_rfc3339()
    gen = ctx.generation
    log.info("run %s failed: %s: %s", ctx.key, reason, message)
    # Before the status: once it says Failed, kopf stops this daemon (its `when` filter no
    # longer matches) and cancels whatever request is still in flight.
    await _stop_job(services, ctx)
    if final is not None and results is not None and merged is not None:
        # after the suspend: a collect Job must not merge files workers still write
        output = await _output(services, ctx, final, merged, results, ("Failed", reason, message))
    await warn_run(services.api, ctx.namespace, ctx.name, ctx.uid, reason, message)
    await ctx.writer.update(
        lambda st: lifecycle.failed(
            st,
            generation=gen,
            reason=reason,
            message=message,
            now=now,
            results=results,
            results_reason=results_reason,
            prometheus_error=prom_error,
            output=output,
        )
    )
    ctx.done = True


async def _stop_job(services: Services, ctx: RunContext) -> None:
    """Suspend the failed run's Job: the Job controller deletes its pods, so the workers
    still running stop sending load; the Job and its status stay for inspection (GC removes
    it with the run). Best effort: the run is already marked failed."""
    name = loadgen_job_name(ctx.name)
    try:
        job = await services.api.get(JOB, ctx.namespace, name)
        if job is None or controller_uid(job) != ctx.uid or job_view(job).state:
            return  # none, another incarnation's Job, or already Complete/Failed (no pods)
        await services.api.patch(JOB, ctx.namespace, name, {"spec": {"suspend": True}}, None)
    except (ApiError, kopf.TemporaryError) as e:
        log.warning("run %s: could not suspend Job %s: %s", ctx.key, name, e)


def _terminations(ctx: RunContext) -> dict[int, MetricsSnapshot]:
    """The termination messages as snapshots (each text parsed once: read every tick)."""
    out = {}
    for index, text in ctx.termination().items():
        seen = ctx.parsed.get(index)
        if seen is None or seen[0] != text:
            seen = ctx.parsed[index] = (text, parse_termination_message(text, ctx.key))
        snap = seen[1]
        if snap is not None and snap.worker == index:
            out[index] = snap
    return out


async def _gpu_results(
    services: Services, ctx: RunContext, final: Final
) -> tuple[GpuResults | None, str | None]:
    """``results.gpu`` from the baseline acks in ``status.gates``, plus the Prometheus window
    between the gates when ``spec.prometheus.url`` is set; and the Prometheus error, if any."""
    gates = (ctx.writer.status or {}).get("gates") or {}
    gpu = gpu_from_status(gates, output_tokens=output_tokens(final))
    window = profiling_window(gates)
    if ctx.gpu is None or window is None:
        return gpu, None
    prom = await ctx.gpu.window(services.api, *window, gpu)
    return with_prometheus(gpu, prom), prom.get("error")


async def _finish(services: Services, ctx: RunContext) -> None:
    final = _final(services, ctx)
    if final is None:
        await _fail(services, ctx, "NoResults", "the Job completed but no worker reported")
        return
    gpu, prom_error = await _gpu_results(services, ctx, final)
    results, merged = build_final(
        final,
        slo=ctx.spec.slo,
        gpu=gpu,
        request=RequestInfo.of(ctx.spec),
        report=ctx.spec.report,
        tokenizer=ctx.spec.workload.tokenizer,
    )
    ok, reason, message = verdict(results, first_abort([{s.worker: s for s in final.snapshots}]))
    phase = "Succeeded" if ok else "Failed"
    output = await _output(services, ctx, final, merged, results, (phase, reason, message))
    now = now_rfc3339()
    gen = ctx.generation
    await ctx.writer.update(
        lambda st: lifecycle.finished(
            st,
            generation=gen,
            results=results,
            results_reason=REASONS[final.source],
            succeeded=ok,
            reason=reason,
            message=message,
            now=now,
            prometheus_error=prom_error,
            output=output,
        )
    )
    ctx.done = True


async def _output(
    services: Services,
    ctx: RunContext,
    final: Final,
    merged: MergedMetrics,
    results: Mapping[str, Any],
    verdict: tuple[str, str, str],
) -> dict[str, Any]:
    """``status.output``: the results ConfigMap written, the collect Job created (a PVC).
    ``verdict``: the terminal (phase, reason, message)."""
    body = {"metadata": {"name": ctx.name, "namespace": ctx.namespace, "uid": ctx.uid}}
    run = BenchmarkRun.model_validate({**body, "spec": to_wire(ctx.spec)})
    try:
        return await write_output(
            services.api,
            body,
            run,
            run_key=ctx.key,
            image=services.settings.image,
            final=final,
            merged=merged,
            results=results,
            gates=(ctx.writer.status or {}).get("gates") or {},
            verdict=verdict,
        )
    except kopf.TemporaryError:
        raise
    except Exception as e:  # a bug here must not cost the run its results
        log.exception("run %s: the results bundle failed", ctx.key)
        return {"error": f"results bundle: {type(e).__name__}: {e}"[:500]}


async def _step(services: Services, ctx: RunContext, now: float) -> None:
    """One pass of the run loop: end the run if it is time, else maybe write live status."""
    settings = services.settings
    gen = ctx.generation
    # 1. stuck pods
    for pod_name, since in ctx.stuck_since.items():
        view = ctx.pods.get(pod_name)
        if view is None or view.stuck_reason is None:
            continue
        grace = settings.stuck_after_s if view.stuck_reason in GRACEFUL else 0.0
        if now - since >= grace:
            await _fail(services, ctx, view.stuck_reason, view.stuck_message)
            return
    # 2. the Job failed
    if ctx.job.state == "Failed":
        msg = f"Job {loadgen_job_name(ctx.name)} failed: {ctx.job.message}".strip(": ")
        await _fail(services, ctx, ctx.job.reason, msg)
        return
    # 3. a worker ended the run early (its preflight failed, too many requests failed): its
    #    snapshot or termination message says why; the others are stopped with the Job
    abort = first_abort(
        [
            services.snapshots.complete(ctx.key),
            _terminations(ctx),
            services.snapshots.latest(ctx.key),
        ]
    )
    if abort is not None:
        await _fail(services, ctx, abort[1].reason, abort_message(*abort))
        return
    # 4. the Job cannot create its pods (quota, LimitRange, admission, no ServiceAccount)
    if ctx.refused_since is not None:
        if len(ctx.pods) >= ctx.workers:
            ctx.refused_since = None
        elif now - ctx.refused_since >= settings.stuck_after_s:
            job = loadgen_job_name(ctx.name)
            message = f"Job {job} cannot create its worker pods: {ctx.refused_message}"
            await _fail(services, ctx, "PodCreateFailed", message[:1000])
            return
    # 5. a dataset or tokenizer ConfigMap (or its key) is missing: the kubelet keeps the
    #    pods in ContainerCreating and says so only in FailedMount events
    if await _workload_configmap_missing(services, ctx, now):
        return
    # 6. watchdog (before finishing: a finish that keeps failing must not outlive it)
    if await _watchdog(services, ctx):
        return
    # 7. results: every worker COMPLETE, or the Job completed (then wait a little for COMPLETE).
    #    While the Job runs, an interrupted COMPLETE is not final: an evicted worker's pod is
    #    replaced and the new one resumes.
    indexes = set(range(ctx.workers))
    complete = services.snapshots.complete(ctx.key)
    final = {w for w, snap in complete.items() if not snap.interrupted}
    if indexes <= final or (
        ctx.job_complete_at is not None
        and (
            now - ctx.job_complete_at >= settings.complete_wait_s
            or indexes <= complete.keys()
            or indexes <= _terminations(ctx).keys()
        )
    ):
        try:
            await _finish(services, ctx)
        except kopf.TemporaryError:
            raise
        except Exception as e:  # a bug or bad data: fail once, not restart the daemon forever
            log.exception("run %s: final results failed", ctx.key)
            await _fail(services, ctx, "ResultsError", f"building the results: {e}"[:500])
        return
    # 8. WorkersReady
    running = {v.index for v in ctx.pods.values() if v.running and v.index is not None}
    finished_ok = {v.index for v in ctx.pods.values() if v.phase == "Succeeded"}
    warmup = ctx.spec.phases.warmup is not None
    ready_before = c.is_true((ctx.writer.status or {}).get("conditions"), c.WORKERS_READY)
    if not ready_before and len(running | finished_ok) >= ctx.workers:
        gates = (ctx.writer.status or {}).get("gates") or {}
        if not gates.get("START"):
            # the target's pods may have moved or started since acceptance: ask the agents
            # that serve them now, before the START gate (and query Prometheus for them).
            # Before WorkersReady is written: if this fails, the next pass tries again.
            await services.gates.register(ctx, gates, fresh=True)
            if ctx.gpu is not None:
                ctx.gpu.invalidate()
        await ctx.writer.update(
            lambda st: lifecycle.workers_ready(
                st, generation=gen, running=len(running), workers=ctx.workers, warmup=warmup
            )
        )
    # 9. live status, at most once per live interval and only when a snapshot is new; the
    #    Prometheus GPU view goes into the same patch
    latest = services.snapshots.latest(ctx.key)
    seqs = {w: s.seq for w, s in latest.items()}
    if latest and seqs != ctx.last_live_seqs and now - ctx.last_live_at >= settings.live_interval_s:
        ctx.last_live_at = now
        ctx.last_live_seqs = seqs
        gpu = await ctx.gpu.live(services.api) if ctx.gpu is not None else None
        phase = (ctx.writer.status or {}).get("phase")
        live = live_status(latest, phase=phase, workers_connected=len(latest), now=now_rfc3339())
        if gpu is not None:
            live["gpu"] = gpu
        await ctx.writer.update(lambda st: lifecycle.with_live(st, live))


async def _workload_configmap_missing(services: Services, ctx: RunContext, now: float) -> bool:
    """Until the workers are ready, read the workload's ConfigMaps every ``SOURCE_CHECK_S``;
    one missing (or without its key) for ``stuck_after_s`` fails the run
    (``WorkloadFileMissing``). True when it did."""
    refs = configmap_sources(ctx.spec.workload)
    conditions = (ctx.writer.status or {}).get("conditions")
    if not refs or now < ctx.next_source_check or c.is_true(conditions, c.WORKERS_READY):
        return False
    ctx.next_source_check = now + SOURCE_CHECK_S
    problems = []
    for role, name, key in refs:
        try:
            cm = await services.api.get(CONFIGMAP, ctx.namespace, name)
        except ApiError as e:  # cannot tell (RBAC, API trouble): the pods' own state decides
            log.warning("run %s: reading ConfigMap %s: %s", ctx.key, name, e)
            return False
        problem = configmap_problem(role, name, key, cm, namespace=ctx.namespace)
        if problem is not None:
            problems.append(problem)
    if not problems:
        ctx.missing_since = None
        return False
    if ctx.missing_since is None:
        ctx.missing_since = now
    if now - ctx.missing_since < services.settings.stuck_after_s:
        return False
    message = "; ".join(problems) + ": the worker pods cannot mount it"
    await _fail(services, ctx, "WorkloadFileMissing", message[:1000])
    return True


async def _watchdog(services: Services, ctx: RunContext) -> bool:
    """Fail the run if its deadline has passed; True when it did."""
    limit = deadline_s(services.settings, ctx.spec)
    if time.time() - ctx.started_at < limit:
        return False
    await _fail(
        services,
        ctx,
        "DeadlineExceeded",
        f"the run was not finished {limit:.0f}s after it was "
        "accepted (spec.activeDeadlineSeconds or the operator's default)",
    )
    return True


async def run_pass(services: Services, key: str, *, tick_s: float = TICK_S) -> float | None:
    """One pass of a run, the scheduler's step: admit it if it is pending, else drive it
    (:func:`_step`). Returns the seconds until its next pass, None once it is released."""
    ctx = services.runs.get(key)
    body = services.pending.get(key)
    if body is not None:
        if ctx is not None and await _watchdog(services, ctx):  # its admission kept failing
            services.pending.pop(key, None)
            release(services, ctx)
            return None
        await admit_run(services, body)  # raises on API trouble: retried with backoff
        services.pending.pop(key, None)
        ctx = services.runs.get(key)
    if ctx is None or not ctx.accepted:
        return None
    if not (ctx.done or ctx.writer.gone or lifecycle.is_terminal(ctx.writer.status)):
        await _step(services, ctx, time.monotonic())
    if ctx.done or ctx.writer.gone or lifecycle.is_terminal(ctx.writer.status):
        release(services, ctx)
        return None
    return _idle_s(services, ctx, time.monotonic(), tick_s)


def _idle_s(services: Services, ctx: RunContext, now: float, tick_s: float) -> float:
    """How long the loop sleeps unless an event wakes it (pod and Job events do).

    A tick once workers publish or the Job has completed (later snapshots wake nothing, the
    live status and COMPLETEs are read each pass); before that, until the next time-based
    check is due — a stuck pod's grace, refused pods, the workload ConfigMaps' next read,
    the watchdog — but at least a tick (the resync wakes only the runs it finds changed).
    Runs waiting for their pods then cost no wake-up until something is due, not one a second.
    """
    if ctx.snapshot_seen or ctx.job_complete_at is not None:
        return tick_s
    settings = services.settings
    due = [now + deadline_s(settings, ctx.spec) - (time.time() - ctx.started_at)]
    for pod_name, since in ctx.stuck_since.items():
        view = ctx.pods.get(pod_name)
        if view is not None and view.stuck_reason is not None:
            due.append(since + (settings.stuck_after_s if view.stuck_reason in GRACEFUL else 0.0))
    if ctx.refused_since is not None:
        due.append(ctx.refused_since + settings.stuck_after_s)
    if configmap_sources(ctx.spec.workload):  # checked until the workers are ready
        due.append(ctx.next_source_check)
    return max(tick_s, min(due) - now)


def admit_snapshot(in_progress: Mapping[str, RunContext], key: str) -> bool:
    """The snapshot collector's ``accept``: keep snapshots of runs in progress only, and wake
    a run at its first one (it may be asleep until its next time-based check)."""
    ctx = in_progress.get(key)
    if ctx is None:
        return False
    if not ctx.snapshot_seen:
        ctx.snapshot_seen = True
        ctx.wake()
    return True


ENDED_KEPT = 20_000
"""Released runs remembered (their keys only): a late event of one is not admitted again."""


def _ended(services: Services, key: str) -> None:
    services.ended[key] = None
    while len(services.ended) > ENDED_KEPT:
        del services.ended[next(iter(services.ended))]


def release(services: Services, ctx: RunContext) -> None:
    """A finished run: free its in-memory state (gates, snapshots, writer, context)."""
    obj = object_key(ctx.namespace, ctx.name)
    _ended(services, ctx.key)
    services.scheduler.forget(ctx.key)
    services.pending.pop(ctx.key, None)
    if services.runs.get(ctx.key) is ctx:
        del services.runs[ctx.key]
    if services.keys.get(obj) == ctx.key:
        del services.keys[obj]
    if services.writers.get(obj) is ctx.writer:
        del services.writers[obj]
    services.gates.forget(ctx.key)
    services.snapshots.forget(ctx.key)
    if ctx.gpu is not None:
        ctx.gpu.close()


# --------------------------------------------------------------------------- delete


def forget_run(services: Services, namespace: str, name: str, uid: str) -> None:
    """The run is being deleted: drop its gate, snapshot and status-writer state."""
    key = run_key(namespace, name, uid)
    ctx = services.runs.get(key)
    if ctx is not None:
        ctx.done = True
        release(services, ctx)
    elif key not in services.ended:
        _ended(services, key)
        services.pending.pop(key, None)
        services.scheduler.forget(key)
    if services.keys.get(object_key(namespace, name)) in (None, key):
        services.writers.pop(object_key(namespace, name), None)
