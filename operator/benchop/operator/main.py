"""Every kopf decorator of the operator (BenchmarkRuns and Experiments), and nothing else.

Each handler validates the body into the pydantic model where there is one and calls a plain
async function in :mod:`benchop.operator.handlers`; handlers return None, so kopf writes
nothing into ``.status`` (the status writers are its only writers). kopf is configured once,
in :func:`startup`, from ``memo.settings`` (an :class:`OperatorSettings`, set by ``benchop
operator`` or a test); the shared services live in ``memo.services`` (BenchmarkRuns) and
``memo.experiments``. With ``settings.reconcile_runs`` False the BenchmarkRun handlers are
filtered out and their services not started (the Experiment tests play the run controller).

    memo = kopf.Memo(settings=OperatorSettings(...), connection=kopf.ConnectionInfo(server=url))
    await kopf.operator(memo=memo, namespaces=["default"], memories=Memories())
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import kopf
from kopf._core.reactor.inventory import ResourceMemories, ResourceMemory

from benchagent.transport import CurveServer
from benchop.core import backoff
from benchop.core.names import (
    BENCHMARKRUN_PLURAL,
    COMPONENT_LABEL,
    EXPERIMENT_KIND,
    EXPERIMENT_LABEL,
    EXPERIMENT_PLURAL,
    FINALIZER,
    GROUP,
    LOADGEN,
    RUN_LABEL,
    VERSION,
)
from benchop.core.selectors import LOADGEN_SELECTOR
from benchop.operator import curvekeys
from benchop.operator.gatebridge import GateBridge
from benchop.operator.gpustats import shutdown_prom_executor
from benchop.operator.handlers import experiments, runs
from benchop.operator.k8s import ApiError, KubeApi
from benchop.operator.settings import OperatorSettings
from benchop.operator.snapshots import SnapshotCollector

LOADGEN_LABELS: dict[str, Any] = {RUN_LABEL: kopf.PRESENT, COMPONENT_LABEL: LOADGEN}
CHILD_LABELS: dict[str, Any] = {EXPERIMENT_LABEL: kopf.PRESENT}
FAILED_CREATE = "involvedObject.kind=Job,reason=FailedCreate"
"""The only events the operator receives: a Job controller could not create a pod."""
API_ATTEMPTS = 8
"""Retries of one of kopf's API requests before it escalates (kopf's default count)."""
EVENT_LOG_ATTEMPTS = 5
"""Retries of an event kopf posts for a log record (kopf's default count)."""
REMEMBERED_KINDS = frozenset({EXPERIMENT_KIND})
"""The kinds whose kopf handlers need kopf's memory of an object between its events (an
Experiment's resume/create/update handlers and timer); every other kind here has event handlers
only."""


class Memories(ResourceMemories):
    """kopf's per-object memory, kept only for :data:`REMEMBERED_KINDS`. kopf otherwise keeps an
    entry (a copy of the memo, throttler, daemon and index records: ~1 KiB) for every object it
    watches until the object is deleted: 10,000 runs in progress are 40,000 objects (runs, their
    Jobs and worker pods), 40 MiB. kopf (1.45) has no setting for it; the memory of the other
    kinds is made ephemeral, as kopf's admission webhooks make theirs."""

    async def recall(
        self, raw_body: Any, *, ephemeral: bool = False, **kwargs: Any
    ) -> ResourceMemory:
        kept = raw_body.get("kind") in REMEMBERED_KINDS  # kopf sets `kind` on listed items too
        return await super().recall(raw_body, ephemeral=ephemeral or not kept, **kwargs)


def _services(memo: Any) -> runs.Services:
    services: runs.Services = memo.services
    return services


CONSISTENCY_TIMEOUT_S = 30.0
"""kopf's ``persistence.consistency_timeout`` (see :func:`startup`)."""


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Configure kopf once and start the shared services (gate ROUTER, snapshot SUB, client)."""
    ours: OperatorSettings = memo.get("settings") or OperatorSettings()
    memo.settings = ours
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = FINALIZER
    # After its own patch kopf skips an object's older events until the patched version
    # arrives, for at most this long; under a backlog (1,000 runs created at 40/s) the 5 s
    # default let half the runs' stale events through, and their create handler ran twice.
    settings.persistence.consistency_timeout = CONSISTENCY_TIMEOUT_S
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = ours.connect_timeout
    # Only load-generator pods and Jobs reach the operator, filtered by the apiserver: a
    # handler's `labels=` filters client-side, after every pod of the cluster was sent.
    settings.watching.label_selectors["", "v1", "pods"] = LOADGEN_SELECTOR
    settings.watching.label_selectors["batch", "v1", "jobs"] = LOADGEN_SELECTOR
    settings.watching.field_selectors["", "v1", "events"] = FAILED_CREATE
    # The LIST that starts each watch is one request, not pages: kopf reads a page, hands its
    # objects on, then asks for the next, and with 10,000 runs on a busy operator the pages
    # took longer than etcd keeps the list's revision (5 min): the next page was refused 410
    # ("continue parameter is too old"), which kopf does not retry, and the operator exited.
    settings.watching.chunk_size = None
    settings.networking.request_timeout = ours.request_timeout
    settings.networking.connect_timeout = ours.connect_timeout
    # kopf's own requests (watches, patches, event posts) retry 5xx/429/timeouts with the
    # operator's client's backoff (capped exponential, full jitter), never sooner than a 429's
    # Retry-After, instead of kopf's fixed (1, 1, 2, 3, 5, 8, 13, 21) s; then escalate.
    settings.networking.error_backoffs = backoff.Backoffs(API_ATTEMPTS)
    settings.networking.enforce_retry_after = False  # the longer of the two
    settings.posting.default_backoffs = backoff.Backoffs(API_ATTEMPTS)
    settings.posting.logging_backoffs = backoff.Backoffs(EVENT_LOG_ATTEMPTS)
    settings.peering.standalone = ours.peering is None
    if ours.peering is not None:
        settings.peering.name = ours.peering
        settings.peering.mandatory = True
    api = await KubeApi.connect(memo.get("connection"), timeout_s=ours.request_timeout)
    try:
        if ours.reconcile_runs:
            memo.services = await _start_run_services(ours, api)
        memo.experiments = experiments.start_experiments(api, ours)
    except BaseException:  # leave nothing bound or open: kopf retries the startup handler
        if memo.get("services") is not None:
            await _close_run_services(memo.services)
            memo.services = None
        await api.close()
        raise
    memo.api = api


async def _curve_keys(ours: OperatorSettings, api: KubeApi) -> curvekeys.KeyFiles | None:
    """The release's CurveZMQ keys (made on first start), written to a private temp dir."""
    if ours.curve_secret is None:
        return None
    namespace = ours.curve_namespace
    if not namespace:
        raise kopf.PermanentError("--curve-secret needs the operator's namespace ($POD_NAMESPACE)")
    owner = curvekeys.own_service_account()  # in a pod: uninstalling the release removes them
    data = await curvekeys.load_or_create(api, namespace, ours.curve_secret, owner)
    logging.getLogger(__name__).info(
        "CurveZMQ on the gate, snapshot and agent ports (keys: Secret %s/%s)",
        namespace,
        ours.curve_secret,
    )
    return curvekeys.write_files(data, Path(tempfile.mkdtemp(prefix="benchop-curve-")))


async def _start_run_services(ours: OperatorSettings, api: KubeApi) -> runs.Services:
    """Bind the snapshot SUB and the gate ROUTER, register the runs in progress, serve."""
    curve = await _curve_keys(ours, api)
    # Snapshots are kept only for the runs in progress here (services.runs: a run enters it
    # before its Job exists and leaves it when released or deleted): memory stays bounded.
    in_progress: dict[str, runs.RunContext] = {}
    snapshots = await SnapshotCollector.open(
        ours.bind_host,
        ours.snapshot_port,
        accept=functools.partial(runs.admit_snapshot, in_progress),
        max_message_bytes=ours.snapshot_max_message_bytes,
        curve=CurveServer(curve.operator_secret) if curve else None,
    )
    services = runs.Services(
        settings=ours,
        api=api,
        snapshots=snapshots,
        gates=GateBridge(ours, api, on_gate=runs.record_gate, curve=curve),
        runs=in_progress,
        curve=curve,
    )
    services.gates.coordinator.on_resume = functools.partial(runs.resume_reply, services)
    try:
        try:  # before the ROUTER serves: no worker of a run in progress is denied
            await runs.preload_runs(services)
        except (kopf.TemporaryError, ApiError) as e:  # then the resume handlers register them
            logging.getLogger(__name__).warning("could not preload runs in progress: %s", e)
        snapshots.start()  # after the preload: what queued meanwhile is read, not rejected
        await services.gates.start()
        services.scheduler.start()
        services.resync = asyncio.create_task(runs.resync_loop(services), name="benchop-resync")
    except BaseException:
        await _close_run_services(services)
        raise
    return services


async def _close_run_services(services: runs.Services) -> None:
    """Close the gate ROUTER, the snapshot SUB and the Prometheus pool; each is closed even if
    closing another one raised (that error is raised afterwards)."""
    try:
        if services.resync is not None:
            services.resync.cancel()
        await services.scheduler.close()
        await services.gates.close()
    finally:
        try:
            services.snapshots.close()
        finally:
            shutdown_prom_executor()
            if services.curve is not None:
                shutil.rmtree(services.curve.operator_secret.parent, ignore_errors=True)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the Experiment services (a last flush of pending rollups), then close the ZMQ
    sockets and the API client, each even if an earlier step failed."""
    try:
        if memo.get("experiments") is not None:
            await experiments.stop_experiments(memo.experiments)
    finally:
        try:
            if memo.get("services") is not None:
                await _close_run_services(memo.services)
        finally:
            if memo.get("api") is not None:
                await memo.api.close()


@kopf.on.probe(id="runs")
def probe_runs(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: the number of runs in progress."""
    services: runs.Services | None = memo.get("services")
    return 0 if services is None else len(services.runs)


# --------------------------------------------------------------------------- BenchmarkRuns


def _reconciling_runs(memo: kopf.Memo, **_: Any) -> bool:
    settings: OperatorSettings = memo.settings
    return settings.reconcile_runs


@kopf.on.event(GROUP, VERSION, BENCHMARKRUN_PLURAL, when=_reconciling_runs)
async def benchmarkrun_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Any BenchmarkRun event: a new run is admitted, a deleted one forgotten; the runs in
    progress are driven by one scheduler (:mod:`benchop.operator.scheduler`), not a daemon
    each, and no handler here needs a finalizer or kopf's per-object annotations."""
    await runs.observe_run(_services(memo), body, type)


@kopf.on.event("", "v1", "pods", labels=LOADGEN_LABELS, when=_reconciling_runs)
async def worker_pod_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A worker pod changed (running, stuck, terminated with its message)."""
    await runs.observe_pod(_services(memo), body, type)


@kopf.on.event("", "v1", "events", when=_reconciling_runs)
async def job_failed_create_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A Job could not create a pod (the only events that arrive: :data:`FAILED_CREATE`)."""
    runs.observe_failed_create(_services(memo), body)


@kopf.on.event("batch", "v1", "jobs", labels=LOADGEN_LABELS, when=_reconciling_runs)
async def loadgen_job_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The loadgen Job changed (Complete / Failed)."""
    await runs.observe_job(_services(memo), body)


# --------------------------------------------------------------------------- Experiments


@kopf.on.resume(GROUP, VERSION, EXPERIMENT_PLURAL)
@kopf.on.create(GROUP, VERSION, EXPERIMENT_PLURAL)
@kopf.on.update(GROUP, VERSION, EXPERIMENT_PLURAL, field="spec")
async def experiment_reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Validate, start the next runs of the sweep, write counts and conditions."""
    try:
        await experiments.reconcile_experiment(
            memo.experiments, body.metadata["namespace"], body.metadata["name"]
        )
    except experiments.InvalidExperiment as e:
        kopf.warn(body, reason="InvalidSpec", message=str(e))
        raise kopf.PermanentError(f"invalid spec: {e}") from None


@kopf.timer(
    GROUP,
    VERSION,
    EXPERIMENT_PLURAL,
    id="experiment-resync",
    interval=experiments.RESYNC_S,
    initial_delay=experiments.RESYNC_S,
    when=experiments.needs_resync,
)
async def experiment_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Safety net for a missed or failed child event: reconcile again."""
    await experiments.resync_experiment(
        memo.experiments, body.metadata["namespace"], body.metadata["name"]
    )


@kopf.on.event(GROUP, VERSION, EXPERIMENT_PLURAL)
async def experiment_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A deleted or deleting experiment is forgotten (no child is created for it)."""
    experiments.observe_experiment(memo.experiments, body, type)


@kopf.on.event(GROUP, VERSION, BENCHMARKRUN_PLURAL, labels=CHILD_LABELS)
async def experiment_child_event(
    body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A child run changed: its experiment's rollup is dirty; if it ended, start more."""
    await experiments.child_event(memo.experiments, body, type)
