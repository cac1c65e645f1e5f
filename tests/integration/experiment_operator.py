"""The Experiment handlers wired to kopf for the integration tests.

The decorated functions below are the snippet documented in
:mod:`benchop.operator.handlers.experiments` (the lead moves it into ``main.py``). Two ways
to run them:

- ``EXPERIMENTS_ONLY``: a registry with just the Experiment handlers and kopf configured the way
  ``main.startup`` configures it. The test plays the BenchmarkRun operator (it patches the child
  runs' status), so nothing else writes the children.
- :func:`full_registry`: kopf's default registry with the real operator's ``main`` imported,
  which wires these same handlers itself (BenchmarkRun handling is real too).

Both take ``memo=experiment_memo(kube.url, refresh_interval_s=...)``.
"""

from __future__ import annotations

from typing import Any

import kopf

from benchop.operator.handlers import experiments
from benchop.operator.k8s import KubeApi
from benchop.operator.settings import OperatorSettings

GROUP, VERSION = "benchop.io", "v1alpha1"
EXPERIMENTS, BENCHMARKRUNS = "experiments", "benchmarkruns"
CHILD_LABELS = {experiments.EXPERIMENT_LABEL: kopf.PRESENT}


def experiment_memo(url: str, *, refresh_interval_s: float, **settings: Any) -> kopf.Memo:
    """The memo ``benchop operator`` would build: settings + how to reach the API server."""
    defaults: dict[str, Any] = {"gate_port": 0, "snapshot_port": 0, "bind_host": "127.0.0.1"}
    ours = OperatorSettings(refresh_interval_s=refresh_interval_s, **{**defaults, **settings})
    return kopf.Memo(settings=ours, connection=kopf.ConnectionInfo(server=url))


def services(memo: kopf.Memo) -> experiments.ExperimentServices:
    svc: experiments.ExperimentServices = memo.experiments
    return svc


# --------------------------------------------------------------------------- handlers


def configure_kopf(settings: kopf.OperatorSettings, **_: Any) -> None:
    """As ``main.startup`` does: kopf's bookkeeping in benchop.io annotations, our finalizer."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = "benchop.io/finalizer"


async def experiments_startup(memo: kopf.Memo, **_: Any) -> None:
    ours: OperatorSettings = memo.settings
    memo.experiment_api = await KubeApi.connect(memo.get("connection"))
    memo.experiments = experiments.start_experiments(memo.experiment_api, ours)


async def experiments_cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("experiments") is not None:
        await experiments.stop_experiments(memo.experiments)
    if memo.get("experiment_api") is not None:
        await memo.experiment_api.close()


async def experiment_reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Validate, start the next runs of the sweep, write counts and conditions."""
    try:
        await experiments.reconcile_experiment(
            services(memo), body.metadata["namespace"], body.metadata["name"]
        )
    except experiments.InvalidExperiment as e:
        raise kopf.PermanentError(f"invalid spec: {e}") from None


async def experiment_resync(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Safety net for a missed or failed child event: reconcile again."""
    await experiments.resync_experiment(
        services(memo), body.metadata["namespace"], body.metadata["name"]
    )


async def experiment_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A deleted or deleting experiment is forgotten (no child is created for it)."""
    experiments.observe_experiment(services(memo), body, type)


async def experiment_child_event(
    body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A child run changed: its experiment's rollup is dirty; if it ended, start more."""
    await experiments.child_event(services(memo), body, type)


def install(registry: kopf.OperatorRegistry, *, configure: bool) -> kopf.OperatorRegistry:
    """Register the Experiment handlers (and, if ``configure``, kopf's settings) in ``registry``."""
    if configure:
        kopf.on.startup(registry=registry)(configure_kopf)
    kopf.on.startup(registry=registry)(experiments_startup)
    kopf.on.cleanup(registry=registry)(experiments_cleanup)
    reconcile = kopf.on.resume(GROUP, VERSION, EXPERIMENTS, registry=registry)(experiment_reconcile)
    reconcile = kopf.on.create(GROUP, VERSION, EXPERIMENTS, registry=registry)(reconcile)
    kopf.on.update(GROUP, VERSION, EXPERIMENTS, field="spec", registry=registry)(reconcile)
    kopf.timer(
        GROUP,
        VERSION,
        EXPERIMENTS,
        id="experiment-resync",
        interval=experiments.RESYNC_S,
        initial_delay=experiments.RESYNC_S,
        when=experiments.needs_resync,
        registry=registry,
    )(experiment_resync)
    kopf.on.event(GROUP, VERSION, EXPERIMENTS, registry=registry)(experiment_event)
    kopf.on.event(GROUP, VERSION, BENCHMARKRUNS, labels=CHILD_LABELS, registry=registry)(
        experiment_child_event
    )
    return registry


EXPERIMENTS_ONLY = install(kopf.OperatorRegistry(), configure=True)


def full_registry() -> kopf.OperatorRegistry:
    """kopf's default registry with the real operator (``benchop.operator.main``) imported."""
    import benchop.operator.main  # noqa: F401 - registers every handler, Experiments included

    return kopf.get_default_registry()
