"""Every kopf decorator of the operator (BenchmarkRuns and Experiments), and nothing else.

Each handler validates the body into the pydantic model where there is one and calls a plain
async function in :mod:`benchop.operator.handlers.runs`; handlers return None, so kopf writes
nothing into ``.status`` (the StatusWriter is its only writer). kopf is configured once, in
:func:`startup`, from ``memo.settings`` (an :class:`OperatorSettings`, set by ``benchop
operator`` or a test); the shared services live in ``memo.services``.

    memo = kopf.Memo(settings=OperatorSettings(...), connection=kopf.ConnectionInfo(server=url))
    await kopf.operator(memo=memo, namespaces=["default"])   # with this module imported
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from benchop.api.models import BenchmarkRun, format_validation_error
from benchop.operator import builders, transitions
from benchop.operator.gatebridge import GateBridge
from benchop.operator.gpustats import shutdown_prom_executor
from benchop.operator.handlers import experiments, runs
from benchop.operator.k8s import ApiError, KubeApi
from benchop.operator.settings import OperatorSettings
from benchop.operator.snapshots import SnapshotCollector

GROUP, VERSION, PLURAL = "benchop.io", "v1alpha1", "benchmarkruns"
EXPERIMENTS = "experiments"
FINALIZER = "benchop.io/finalizer"
LOADGEN_LABELS: dict[str, Any] = {
    builders.RUN_LABEL: kopf.PRESENT,
    builders.COMPONENT_LABEL: builders.LOADGEN,
}
CHILD_LABELS: dict[str, Any] = {experiments.EXPERIMENT_LABEL: kopf.PRESENT}


def _services(memo: Any) -> runs.Services:
    services: runs.Services = memo.services
    return services


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
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.watching.connect_timeout = ours.connect_timeout
    settings.networking.request_timeout = ours.request_timeout
    settings.networking.connect_timeout = ours.connect_timeout
    settings.peering.standalone = ours.peering is None
    if ours.peering is not None:
        settings.peering.name = ours.peering
        settings.peering.mandatory = True
    api = await KubeApi.connect(memo.get("connection"), timeout_s=ours.request_timeout)
    # Snapshots are kept only for the runs in progress here (services.runs: a run enters it
    # before its Job exists and leaves it when released or deleted): memory stays bounded.
    in_progress: dict[str, runs.RunContext] = {}
    try:
        snapshots = await SnapshotCollector.open(
            ours.bind_host,
            ours.snapshot_port,
            accept=in_progress.__contains__,
            max_message_bytes=ours.snapshot_max_message_bytes,
        )
    except BaseException:
        await api.close()
        raise
    services = runs.Services(
        settings=ours,
        api=api,
        snapshots=snapshots,
        gates=None,  # type: ignore[arg-type]
        runs=in_progress,
    )

    async def on_gate(key: str, boundary: str, record: Mapping[str, Any]) -> bool:
        return await runs.record_gate(services, key, boundary, record)

    gates = GateBridge(ours, api, on_gate=on_gate)
    services.gates = gates
    try:
        try:  # before the ROUTER serves: no worker of a run in progress is denied
            await runs.preload_runs(services)
        except (kopf.TemporaryError, ApiError) as e:  # then the resume handlers register them
            logging.getLogger(__name__).warning("could not preload runs in progress: %s", e)
        snapshots.start()  # after the preload: what queued meanwhile is read, not rejected
        await gates.start()
        memo.experiments = experiments.start_experiments(api, ours)
    except BaseException:  # leave nothing bound or open: kopf retries the startup handler
        await _close_services(services, gates)
        raise
    memo.services = services


async def _close_services(services: runs.Services, gates: GateBridge | None = None) -> None:
    """Close the gate ROUTER, the snapshot SUB, the API client and the Prometheus pool; each
    is closed even if closing another one raised (that error is raised afterwards)."""
    try:
        if gates is not None:
            await gates.close()
    finally:
        try:
            services.snapshots.close()
        finally:
            try:
                await services.api.close()
            finally:
                shutdown_prom_executor()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the Experiment services, then close the ZMQ sockets and the API client (even if
    stopping the experiments failed)."""
    services: runs.Services | None = memo.get("services")
    try:
        if memo.get("experiments") is not None:
            await experiments.stop_experiments(memo.experiments)  # flushes pending rollups
    finally:
        if services is not None:
            await _close_services(services, services.gates)  # type: ignore[arg-type]


@kopf.on.probe(id="runs")
def probe_runs(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: the number of runs in progress."""
    services: runs.Services | None = memo.get("services")
    return 0 if services is None else len(services.runs)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
async def benchmarkrun_create(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Validate, accept, create the children, register with the gates."""
    services = _services(memo)
    try:
        run = BenchmarkRun.model_validate(
            {"metadata": dict(body.metadata), "spec": dict(body.spec)}
        )
        runs.check_operator_rules(run)
    except ValidationError as e:
        message = format_validation_error(e)
        await runs.reject_run(services, body, message)
        raise kopf.PermanentError(f"invalid spec: {message}") from None
    except runs.InvalidRun as e:
        await runs.reject_run(services, body, str(e))
        raise kopf.PermanentError(f"invalid spec: {e}") from None
    await runs.reconcile_run(services, body, run)


def _not_terminal(status: Mapping[str, Any], **_: Any) -> bool:
    return not transitions.is_terminal(status)


@kopf.daemon(GROUP, VERSION, PLURAL, id="run-loop", when=_not_terminal, cancellation_timeout=2.0)
async def benchmarkrun_loop(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any
) -> None:
    """Drive one run to a terminal phase (workers, failures, live status, results, watchdog)."""
    await runs.run_loop(_services(memo), body, stopped)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def benchmarkrun_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Forget the run's in-memory gate and snapshot state (children go by owner GC)."""
    await runs.forget_run(_services(memo), body.metadata["namespace"], body.metadata["name"])


@kopf.on.event("", "v1", "pods", labels=LOADGEN_LABELS)
async def worker_pod_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A worker pod changed (running, stuck, terminated with its message)."""
    await runs.observe_pod(_services(memo), body, type)


@kopf.on.event("batch", "v1", "jobs", labels=LOADGEN_LABELS)
async def loadgen_job_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The loadgen Job changed (Complete / Failed)."""
    await runs.observe_job(_services(memo), body)


# --------------------------------------------------------------------------- Experiments


@kopf.on.resume(GROUP, VERSION, EXPERIMENTS)
@kopf.on.create(GROUP, VERSION, EXPERIMENTS)
@kopf.on.update(GROUP, VERSION, EXPERIMENTS, field="spec")
async def experiment_reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Validate, start the next runs of the sweep, write counts and conditions."""
    try:
        await experiments.reconcile_experiment(
            memo.experiments, body.metadata["namespace"], body.metadata["name"]
        )
    except experiments.InvalidExperiment as e:
        raise kopf.PermanentError(f"invalid spec: {e}") from None


@kopf.timer(
    GROUP,
    VERSION,
    EXPERIMENTS,
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


@kopf.on.event(GROUP, VERSION, EXPERIMENTS)
async def experiment_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A deleted or deleting experiment is forgotten (no child is created for it)."""
    experiments.observe_experiment(memo.experiments, body, type)


@kopf.on.event(GROUP, VERSION, PLURAL, labels=CHILD_LABELS)
async def experiment_child_event(
    body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A child run changed: its experiment's rollup is dirty; if it ended, start more."""
    await experiments.child_event(memo.experiments, body, type)
