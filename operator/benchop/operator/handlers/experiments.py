"""Experiment reconciliation as plain async functions (``main`` wires them to kopf).

Flow:

1. :func:`reconcile_experiment` (create / resume / spec update / the resync timer / a child
   run that ended): under the experiment's lock, read it fresh (gone or deleting: stop — a
   deleted experiment is never re-populated), validate the spec (invalid: ``Accepted=False``
   naming the field, ``Succeeded=False``, phase Failed, :class:`InvalidExperiment` so kopf does
   not retry), list its children once, ask the pure :func:`~benchop.core.children.plan_sweep`
   what to start (in sweep order, at most ``maxParallel`` non-terminal, the failure policy),
   create those children idempotently and write counts, conditions and phase
   (:func:`~benchop.core.lifecycle.experiment_progressed`).
2. :func:`child_event` (every event of a run labelled ``benchop.io/experiment``): when the
   run's rollup row changed, mark the parent dirty for the refresher; when the run just ended
   or was deleted, reconcile the parent.
3. The :class:`~benchop.operator.refresher.Refresher` writes ``status.metrics``.

INVARIANT — one writer per status field: the refresher owns ``status.metrics``; this module
owns the rest of the Experiment's status and never writes ``metrics`` (its
:class:`~benchop.operator.status.StatusWriter` has ``foreign=("metrics",)``: the value read is
put back before diffing, so a patch from here cannot touch it). Both write with a
resourceVersion precondition, so a stale read costs a 409 and a retry, never a lost update.

Children are matched to sweep points by their params (``point_key``), never by index, so
more values on any axis apply. The point keys of every child ever created are kept in the
Experiment's ``benchop.io/created-points`` annotation (written here, after the creates): a
child deleted by hand is never re-created and counts as failed.

A spec edit that changes the spec of a point whose run already exists, or drops such a point,
is refused (``Accepted=False``, reason ``SpecChanged``): no new runs start; while started ones
run the phase stays Running with current counts, then Failed. Delete and re-create the
Experiment for a new sweep. Edits that leave existing points alone (more values on any axis,
``maxParallel``, the failure policy) apply.

The resync timer (``main.experiment_resync``) makes kopf put its finalizer on experiments, so
deletion is seen as a ``deletionTimestamp`` before the object goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from benchop.api import conditions as c
from benchop.api.models import (
    BenchmarkRunSpec,
    ExperimentRunRow,
    ExperimentSpec,
    format_validation_error,
    to_wire,
)
from benchop.api.sweep import set_path, sweep_points
from benchop.core.children import (
    Plan,
    build_child_run,
    child_counts,
    child_params,
    child_phase,
    format_created,
    owned_by,
    params_json,
    parse_created,
    pick_child_name,
    plan_sweep,
    point_key,
)
from benchop.core.lifecycle import experiment_progressed, experiment_rejected, is_terminal
from benchop.core.names import CREATED_ANNOTATION, EXPERIMENT_KIND, TERMINAL_PHASES
from benchop.core.rollup import run_row
from benchop.core.search import probe_value, probes_of, search_plan, search_step
from benchop.core.selectors import experiment_selector
from benchop.core.workloadfiles import cluster_problem
from benchop.operator.handlers.runs import NO_TARGET
from benchop.operator.k8s import BENCHMARKRUN, EXPERIMENT, Body, Conflict, KubeApi, object_meta
from benchop.operator.refresher import Refresher
from benchop.operator.settings import OperatorSettings
from benchop.operator.status import StatusWriter

__all__ = [
    "MAX_POINTS",
    "RESYNC_S",
    "ExperimentServices",
    "InvalidExperiment",
    "child_event",
    "needs_resync",
    "observe_experiment",
    "reconcile_experiment",
    "resync_experiment",
    "start_experiments",
    "stop_experiments",
    "validate_spec",
]

log = logging.getLogger(__name__)

Key = tuple[str, str]
Status = dict[str, Any]

RESYNC_S = 30.0
"""Interval of the resync timer (a missed child event heals within this)."""
MAX_POINTS = 1000
"""Largest sweep (cartesian product) an Experiment may have."""
MAX_ATTEMPTS = 8
"""Annotation patches retried on 409 before giving up with ``kopf.TemporaryError``."""
REASON_SPEC_CHANGED = "SpecChanged"


class InvalidExperiment(ValueError):
    """The spec was rejected (status already says so); the message names the field."""


@dataclass
class ExperimentServices:
    """What the experiment handlers share; lives in kopf's ``memo.experiments``."""

    api: KubeApi
    refresher: Refresher
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)  # uids of deleted or deleting experiments
    deleted: set[str] = field(default_factory=set)  # uids whose DELETED came during a reconcile
    rows: dict[Key, dict[str, ExperimentRunRow]] = field(default_factory=dict)
    """Per experiment: child uid -> last rollup row seen (pruned to the listed children)."""
    created: int = 0  # child runs this process created (for tests and probes)
    default_target_url: str | None = None  # the operator's --default-target-url

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())

    def prune_rows(self, namespace: str, name: str, uids: set[str]) -> None:
        """Keep only the rows of the children just listed (a deleted child's row goes)."""
        rows = self.rows.get((namespace, name))
        if rows is not None:
            for uid in set(rows) - uids:
                del rows[uid]


def start_experiments(api: KubeApi, settings: OperatorSettings) -> ExperimentServices:
    """The services, with the rollup refresher started (call in kopf's startup, in the loop)."""
    refresher = Refresher(api, interval_s=settings.refresh_interval_s)
    refresher.start()
    return ExperimentServices(
        api=api, refresher=refresher, default_target_url=settings.default_target_url
    )


async def stop_experiments(services: ExperimentServices) -> None:
    """Stop the refresher after one more flush (call in kopf's cleanup, before closing api)."""
    await services.refresher.stop()


# --------------------------------------------------------------------------- the spec


Point = tuple[dict[str, Any], BenchmarkRunSpec]


def validate_spec(
    spec: Mapping[str, Any], default_target_url: str | None = None
) -> tuple[ExperimentSpec, list[Point]] | str:
    """The validated spec and its points, or a message naming the offending field.

    Beyond the model: at most :data:`MAX_POINTS` points, every combination of values valid
    (each value alone was checked by the model), and a target URL in every run (or the
    operator's default target, which each run then takes when it starts).
    """
    try:
        exp = ExperimentSpec.model_validate(dict(spec))
    except ValidationError as e:
        lines = format_validation_error(e).splitlines()
        return "\n".join(
            "spec" + line.removeprefix("<root>") if line.startswith("<root>:") else f"spec.{line}"
            for line in lines
        )
    if exp.sweep is None:  # a search: its probes come one at a time, min and max were checked
        if not exp.template.target.endpoints and default_target_url is None:
            return f"spec.template.target.url: {NO_TARGET}"
        return exp, []
    size = math.prod(len(axis.values) for axis in exp.sweep)
    if size > MAX_POINTS:
        return f"spec.sweep: {size} runs in the cartesian product, at most {MAX_POINTS}"
    points: list[Point] = []
    for params in sweep_points([(axis.path, axis.values) for axis in exp.sweep]):
        doc = to_wire(exp.template)
        for path, value in params.items():
            doc = set_path(doc, path, value)
        try:
            points.append((params, BenchmarkRunSpec.model_validate(doc)))
        except ValidationError as e:
            return (
                f"spec.sweep: run {len(points)} ({json.dumps(params)}) makes the template "
                f"invalid: {format_validation_error(e)}"
            )
    for i, (_, run_spec) in enumerate(points):
        if not run_spec.target.endpoints and default_target_url is None:
            return f"spec.template.target.url: {NO_TARGET} (run {i} has none)"
        problem = cluster_problem(run_spec.workload, "spec.template.workload")
        if problem is not None:
            return problem
    return exp, points


def needs_resync(status: Mapping[str, Any], meta: Mapping[str, Any], **_: Any) -> bool:
    """kopf ``when=`` filter of the resync timer: not finished for the current generation."""
    return not is_terminal(status) or status.get("observedGeneration") != meta.get("generation")


def status_writer(api: KubeApi, body: Body) -> StatusWriter:
    """The writer of the experiment's status for one reconcile, from the body just read; it
    never writes ``metrics`` (the refresher's field)."""
    meta = object_meta(body)
    writer = StatusWriter(api, EXPERIMENT, meta.namespace, meta.name, foreign=("metrics",))
    writer.seed(body)
    return writer


# --------------------------------------------------------------------------- reconcile


def _deleting(services: ExperimentServices, body: Mapping[str, Any]) -> bool:
    meta = body.get("metadata") or {}
    return bool(meta.get("deletionTimestamp")) or str(meta.get("uid")) in services.gone


async def _reject(
    services: ExperimentServices,
    body: Body,
    reason: str,
    message: str,
    now: str,
    kids: list[Body] | None = None,
) -> None:
    """Write the rejection; with children still running the phase stays Running (counts kept
    current by later reconciles) and turns Failed once none is active."""
    namespace, name, uid, generation = object_meta(body)
    if kids is None:
        kids = await services.api.list(BENCHMARKRUN, namespace, labels=experiment_selector(name))
    counts = child_counts(child_phase(k) for k in kids if owned_by(k, uid))
    await status_writer(services.api, body).update(
        lambda st: experiment_rejected(
            st, generation=generation, reason=reason, message=message, now=now, counts=counts
        )
    )


async def reconcile_experiment(services: ExperimentServices, namespace: str, name: str) -> None:
    """One reconciliation of an experiment (see the module doc). Idempotent.

    Raises :class:`InvalidExperiment` after writing the rejection when the spec is invalid;
    ``kopf.TemporaryError`` on API trouble (kopf retries).
    """
    uid = ""
    try:
        async with services.lock(namespace, name):
            body = await services.api.get(EXPERIMENT, namespace, name)
            if body is None or _deleting(services, body):
                services.locks.pop((namespace, name), None)
                return
            uid = object_meta(body).uid
            await _reconcile(services, body)
    finally:
        if uid in services.deleted:  # its DELETED event came while we held the lock
            forget_experiment(services, namespace, name, uid)


async def _reconcile(services: ExperimentServices, body: Body) -> None:
    namespace, name, uid, generation = object_meta(body)
    status = body.get("status") or {}
    if is_terminal(status) and status.get("observedGeneration") == generation:
        return  # finished (or rejected) for this spec: a late event never reopens it
    now = c.now_rfc3339()
    kids = await services.api.list(BENCHMARKRUN, namespace, labels=experiment_selector(name))
    services.prune_rows(namespace, name, {str(k["metadata"].get("uid")) for k in kids})
    valid = validate_spec(body.get("spec") or {}, services.default_target_url)
    if isinstance(valid, str):
        await _reject(services, body, c.REASON_INVALID_SPEC, valid, now, kids)
        raise InvalidExperiment(valid)
    spec, points = valid
    if spec.search is not None:
        await _reconcile_search(services, body, spec, kids, now)
        return
    index_of = {point_key(params): i for i, (params, _) in enumerate(points)}
    phases: dict[int, str] = {}
    taken: dict[str, str] = {}  # child name -> point key, for naming new children
    ours = [kid for kid in kids if owned_by(kid, uid)]
    for kid in ours:
        key = point_key(child_params(kid))
        taken[kid["metadata"]["name"]] = key
        index = index_of.get(key)
        if index is None or not _same_spec(kid, points[index][1]):
            await _spec_changed(services, body, kid, now, kids)
        phases[index] = child_phase(kid)
    recorded = parse_created(body)
    created = {index_of[k] for k in recorded if k in index_of}
    plan = plan_sweep(spec, phases, len(points), created)
    keys = recorded | {point_key(points[i][0]) for i in phases}
    for index in plan.create:
        if _deleting(services, body):
            return
        params, run_spec = points[index]
        if await _create_child(services, body, index, params, run_spec, taken):
            keys.add(point_key(params))
    await _progressed(services, body, recorded, keys, plan, now)


async def _spec_changed(
    services: ExperimentServices, body: Body, kid: Body, now: str, kids: list[Body]
) -> NoReturn:
    """Refuse a spec whose points no longer match a child that exists (``SpecChanged``)."""
    message = (
        f"spec: run {kid['metadata']['name']} ({params_json(child_params(kid))}) already "
        "exists with another spec or params not in the sweep; an Experiment's points "
        "cannot change once their runs exist (delete and re-create the Experiment for a "
        "new sweep)"
    )
    await _reject(services, body, REASON_SPEC_CHANGED, message, now, kids)
    raise InvalidExperiment(message)


async def _create_child(
    services: ExperimentServices,
    body: Body,
    index: int,
    params: dict[str, Any],
    run_spec: BenchmarkRunSpec,
    taken: dict[str, str],
) -> bool:
    """Create the child of ``params`` (idempotent); False when an older namesake holds its name.
    ``taken`` (child name -> point key) gets the new child."""
    namespace, name, uid, _ = object_meta(body)
    child_name = pick_child_name(name, index, params, taken)
    child = build_child_run(body, index=index, params=params, spec=run_spec, name=child_name)
    made = await services.api.create(BENCHMARKRUN, namespace, child)
    if not owned_by(made, uid):  # an older namesake's run, not yet garbage-collected
        log.warning(
            "experiment %s/%s: run %s exists, owned by another; retried later",
            namespace,
            name,
            child_name,
        )
        return False
    taken[child_name] = point_key(params)
    services.created += 1
    log.info("experiment %s/%s: created run %s", namespace, name, child_name)
    return True


async def _progressed(
    services: ExperimentServices,
    body: Body,
    recorded: set[str],
    keys: set[str],
    plan: Plan,
    now: str,
) -> None:
    """Record the created points (if new ones), then write counts, conditions and phase."""
    generation = object_meta(body).generation
    if keys != recorded:
        patched = await record_created(services.api, body, keys)
        if patched is None:
            return
        body = patched
    await status_writer(services.api, body).update(
        lambda st: experiment_progressed(st, generation=generation, plan=plan, now=now)
    )


async def _reconcile_search(
    services: ExperimentServices, body: Body, spec: ExperimentSpec, kids: list[Body], now: str
) -> None:
    """One step of an SLO search: the pure :func:`~benchop.core.search.search_step` over the
    probes so far says which load to probe next (one at a time) or that the search ended."""
    search = spec.search
    assert search is not None
    uid = object_meta(body).uid
    ours = [kid for kid in kids if owned_by(kid, uid)]
    taken: dict[str, str] = {}
    for kid in ours:
        params = child_params(kid)
        taken[kid["metadata"]["name"]] = point_key(params)
        value = probe_value(kid, search)
        if value is None or set(params) != {search.path} or not _same_probe(kid, spec, value):
            await _spec_changed(services, body, kid, now, kids)
    recorded = parse_created(body)
    step = search_step(
        search, probes_of(ours, search), gone=lambda v: point_key({search.path: v}) in recorded
    )
    plan = search_plan(step, [child_phase(kid) for kid in ours])
    keys = recorded | set(taken.values())
    if step.next is not None:
        if _deleting(services, body):
            return
        params, run_spec = spec.probe(step.next)
        if await _create_child(services, body, step.probes, params, run_spec, taken):
            keys.add(point_key(params))
    await _progressed(services, body, recorded, keys, plan, now)


def _same_probe(kid: Mapping[str, Any], spec: ExperimentSpec, value: int | float) -> bool:
    try:
        expected = spec.probe(value)[1]
    except ValidationError:
        return False
    return _same_spec(kid, expected)


async def record_created(api: KubeApi, body: Body, keys: set[str]) -> Body | None:
    """Add ``keys`` to the experiment's :data:`CREATED_ANNOTATION` (a set that only grows).

    A merge patch of ``metadata.annotations`` conditional on the resourceVersion read; on 409
    re-read (same uid) and merge again. Returns the patched body; None if the experiment is gone.
    """
    namespace, name, uid, _ = object_meta(body)
    current: Body | None = body
    for _ in range(MAX_ATTEMPTS):
        if current is None or object_meta(current).uid != uid:
            return None
        merged = parse_created(current) | keys
        rv = str(current["metadata"]["resourceVersion"])
        patch = {"metadata": {"annotations": {CREATED_ANNOTATION: format_created(merged)}}}
        try:
            return await api.patch(EXPERIMENT, namespace, name, patch, rv)
        except Conflict:
            pass
        current = await api.get(EXPERIMENT, namespace, name)
    raise kopf.TemporaryError(
        f"experiment {namespace}/{name}: {MAX_ATTEMPTS} conflicts in a row", delay=1.0
    )


def _same_spec(kid: Mapping[str, Any], expected: BenchmarkRunSpec) -> bool:
    try:
        return BenchmarkRunSpec.model_validate(kid.get("spec") or {}) == expected
    except ValidationError:
        return False


async def resync_experiment(services: ExperimentServices, namespace: str, name: str) -> None:
    """The timer's reconcile: like :func:`reconcile_experiment`; a rejection is not an error."""
    with contextlib.suppress(InvalidExperiment):
        await reconcile_experiment(services, namespace, name)


# --------------------------------------------------------------------------- events


def parent_of(run: Mapping[str, Any]) -> Key | None:
    """(namespace, name) of the Experiment controlling ``run``, from its ownerReferences."""
    meta = run.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if not isinstance(ref, Mapping) or not ref.get("controller"):
            continue
        if ref.get("kind") == EXPERIMENT_KIND:
            return str(meta.get("namespace") or ""), str(ref.get("name"))
    return None


async def child_event(
    services: ExperimentServices, run: Mapping[str, Any], event_type: str | None
) -> None:
    """A child run changed: if its rollup row changed, mark its experiment dirty; if it just
    ended or went away, reconcile the experiment (start the next runs).

    Events that leave the row unchanged (``status.live`` every few seconds, kopf's annotation
    patches) do nothing. ``event_type`` None (kopf's initial listing at startup) only marks
    dirty: the experiment's resume handler reconciles it once, not once per finished child.
    """
    parent = parent_of(run)
    if parent is None:
        return
    uid = str((run.get("metadata") or {}).get("uid") or "")
    if event_type == "DELETED":
        services.rows.get(parent, {}).pop(uid, None)
        services.refresher.mark_dirty(*parent)
        with contextlib.suppress(InvalidExperiment):
            await reconcile_experiment(services, *parent)
        return
    row = run_row(run)
    rows = services.rows.setdefault(parent, {})
    if rows.get(uid) == row:
        return
    rows[uid] = row
    services.refresher.mark_dirty(*parent)
    if event_type is not None and row.phase in TERMINAL_PHASES:
        with contextlib.suppress(InvalidExperiment):
            await reconcile_experiment(services, *parent)


def observe_experiment(
    services: ExperimentServices, body: Mapping[str, Any], event_type: str | None
) -> None:
    """Remember deleted or deleting experiments so that no child is created for them; forget
    an experiment once it is DELETED (at the end of a reconcile that holds its lock then)."""
    meta = body.get("metadata") or {}
    if event_type == "DELETED" or meta.get("deletionTimestamp"):
        uid = str(meta.get("uid"))
        services.gone.add(uid)
        if event_type == "DELETED":
            namespace, name = str(meta.get("namespace")), str(meta.get("name"))
            lock = services.locks.get((namespace, name))
            if lock is not None and lock.locked():
                services.deleted.add(uid)
            else:
                forget_experiment(services, namespace, name, uid)


def forget_experiment(services: ExperimentServices, namespace: str, name: str, uid: str) -> None:
    """Drop what is kept in memory for a deleted experiment (its uid, lock and rows)."""
    services.gone.discard(uid)
    services.deleted.discard(uid)
    services.rows.pop((namespace, name), None)
    lock = services.locks.get((namespace, name))
    if lock is not None and not lock.locked():
        del services.locks[(namespace, name)]
