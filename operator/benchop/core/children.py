"""An Experiment's child BenchmarkRuns, pure: names, labels, manifests and the sweep plan.

No I/O and no clocks. The operator's reconciler (``benchop.operator.handlers.experiments``)
lists the children, asks :func:`plan_sweep` what to do and creates what it says; local mode
runs the sweep in order with the same manifests and failure policy; the rollup reads the
params and sweep index back from the annotations written here.

A child is identified by its params (:func:`point_key`), never by its index: values added to
any axis shift the indices of later points. It is named ``<experiment>-<index>`` (its index into
``ExperimentSpec.points()`` when it was created, first axis slowest; the same names as
``benchop run`` uses locally) or, if a child of another point already has that name (the sweep
was edited), ``<experiment>-<index>-<point key>``; hashed down to 63 characters when longer.
Each carries ``benchop.io/experiment=<experiment>``, one ``benchop.io/<path>=<value>``
label per swept parameter (values sanitised to label syntax), the exact params as JSON in an
annotation, and a controller ownerReference to the Experiment.

    manifest = build_child_run(exp_body, index=0, params={"load.concurrency": 1}, spec=spec)
    plan = plan_sweep(spec, {index: child_phase(child), ...}, len(points), created=indices)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from benchop.api.models import BenchmarkRunSpec, ExperimentSpec, Phase, to_wire
from benchop.core.names import (
    API_VERSION,
    BENCHMARKRUN_KIND,
    CREATED_ANNOTATION,
    EXPERIMENT_KIND,
    EXPERIMENT_LABEL,
    EXPERIMENT_NAME_ANNOTATION,
    INDEX_ANNOTATION,
    LABEL_PREFIX,
    MAX_NAME,
    PARAMS_ANNOTATION,
    TERMINAL_PHASES,
    experiment_label_value,
    owner_reference,
    safe_name,
)

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


def child_name(experiment: str, index: int) -> str:
    """``<experiment>-<index>``, truncated with a stable hash above 63 characters.

    >>> child_name("sweep", 3)
    'sweep-3'
    """
    return safe_name(experiment, str(index))


def point_key(params: Mapping[str, Any]) -> str:
    """A point's identity: 12 hex digits of the SHA-256 of its params as canonical JSON.

    Independent of the point's index, so it survives values added to any axis.

    >>> point_key({"a": 1, "b": "x"}) == point_key({"b": "x", "a": 1})
    True
    """
    text = json.dumps(dict(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def pick_child_name(
    experiment: str, index: int, params: Mapping[str, Any], taken: Mapping[str, str]
) -> str:
    """The name of a new child: ``<experiment>-<index>``, unless a child of another point
    (``taken``: name -> point key) already has that name (the sweep was edited after it was
    created): then ``<experiment>-<index>-<point key>``. Deterministic and unique.

    >>> pick_child_name("s", 2, {"c": 1}, {"s-2": point_key({"c": 2})}).startswith("s-2-")
    True
    """
    name = child_name(experiment, index)
    key = point_key(params)
    if taken.get(name, key) == key:
        return name
    return safe_name(experiment, f"{index}-{key}")


def parse_created(experiment: Mapping[str, Any]) -> set[str]:
    """The point keys in the Experiment's :data:`CREATED_ANNOTATION` (empty if absent)."""
    ann = (experiment.get("metadata") or {}).get("annotations") or {}
    text = ann.get(CREATED_ANNOTATION)
    return {k for k in text.split(",") if k} if isinstance(text, str) else set()


def format_created(keys: Collection[str]) -> str:
    """The :data:`CREATED_ANNOTATION` value of ``keys`` (sorted: the same set, the same text)."""
    return ",".join(sorted(keys))


def label_value(value: Any) -> str:
    """A label value (≤ 63 chars of ``[A-Za-z0-9_.-]``, alphanumeric at both ends) for ``value``.

    Strings are used as they are where legal; other values as compact JSON. Illegal characters
    become ``-``; a value that had to be truncated gets a hash suffix so distinct values stay
    distinct. The exact value is in the ``benchop.io/params`` annotation.

    >>> label_value("meta-llama/Llama-3.1-8B"), label_value(8), label_value(True)
    ('meta-llama-Llama-3.1-8B', '8', 'true')
    """
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    clean = _EDGE.sub("", _LABEL_BAD.sub("-", text))
    if len(clean) > MAX_NAME:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        clean = _EDGE.sub("", clean[: MAX_NAME - 9]) + "-" + digest
    return clean


def param_label_key(path: str) -> str:
    """``benchop.io/<path>``; the name part sanitised and bounded like a label value."""
    return LABEL_PREFIX + (label_value(path) or "param")


def params_json(params: Mapping[str, Any]) -> str:
    """The params annotation: compact JSON, keys in sweep order."""
    return json.dumps(dict(params), separators=(",", ":"))


def build_child_run(
    experiment: Mapping[str, Any],
    *,
    index: int,
    params: Mapping[str, Any],
    spec: BenchmarkRunSpec,
    name: str | None = None,
) -> dict[str, Any]:
    """The BenchmarkRun manifest of sweep point ``index`` of ``experiment`` (a full body),
    named ``name`` (default :func:`child_name`; the reconciler uses :func:`pick_child_name`)."""
    meta = experiment["metadata"]
    exp_name = meta["name"]
    name = name or child_name(exp_name, index)
    labels = {EXPERIMENT_LABEL: experiment_label_value(exp_name)}
    for path, value in params.items():
        labels[param_label_key(path)] = label_value(value)
    return {
        "apiVersion": API_VERSION,
        "kind": BENCHMARKRUN_KIND,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {
                EXPERIMENT_NAME_ANNOTATION: exp_name,
                INDEX_ANNOTATION: str(index),
                PARAMS_ANNOTATION: params_json(params),
            },
            "ownerReferences": [owner_reference(experiment, EXPERIMENT_KIND)],
        },
        "spec": to_wire(spec),
    }


# --------------------------------------------------------------------------- reading children


def owned_by(run: Mapping[str, Any], uid: str) -> bool:
    """Whether ``run`` has an ownerReference to ``uid`` (an older namesake's children do not)."""
    refs = (run.get("metadata") or {}).get("ownerReferences") or ()
    return any(isinstance(r, Mapping) and r.get("uid") == uid for r in refs)


def sweep_index(run: Mapping[str, Any]) -> int | None:
    """The child's index in the sweep (its annotation), or None if absent or unreadable."""
    ann = (run.get("metadata") or {}).get("annotations") or {}
    text = ann.get(INDEX_ANNOTATION)
    if not isinstance(text, str) or not text.isdigit():
        return None
    return int(text)


def child_params(run: Mapping[str, Any]) -> dict[str, Any]:
    """The child's params from its annotation; ``{}`` if absent or malformed."""
    ann = (run.get("metadata") or {}).get("annotations") or {}
    try:
        params = json.loads(ann.get(PARAMS_ANNOTATION) or "{}")
    except (TypeError, ValueError):
        return {}
    return params if isinstance(params, dict) else {}


def child_phase(run: Mapping[str, Any]) -> str:
    """``status.phase`` of a child; ``Pending`` until its operator wrote one."""
    status = run.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    return phase if isinstance(phase, str) and phase else Phase.PENDING.value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def order_children(runs: Sequence[Mapping[str, Any]], sweep: Any = None) -> list[Mapping[str, Any]]:
    """Children in sweep order.

    With ``sweep`` (the Experiment's raw ``spec.sweep``: ``[{path, values}, ...]``), by the
    position of each child's params in the current sweep, first axis slowest — right also
    after values were added to an axis. Children whose params are not in it (or without a
    usable ``sweep``) come after, by index annotation (their index when created), then name.
    """
    axes: list[tuple[str, dict[str, int]]] = []
    if isinstance(sweep, list):
        for axis in sweep:
            if not isinstance(axis, Mapping) or not isinstance(axis.get("values"), list):
                axes = []
                break
            positions: dict[str, int] = {}
            for i, value in enumerate(axis["values"]):
                positions.setdefault(_canonical(value), i)
            axes.append((str(axis.get("path")), positions))

    def key(run: Mapping[str, Any]) -> tuple[tuple[int, ...], int, str]:
        params = child_params(run)
        place: tuple[int, ...] = (1 << 30,)
        if axes and len(params) == len(axes) and all(path in params for path, _ in axes):
            found = [pos.get(_canonical(params[path])) for path, pos in axes]
            if all(i is not None for i in found):
                place = tuple(i for i in found if i is not None)
        index = sweep_index(run)
        name = str((run.get("metadata") or {}).get("name") or "")
        return (place, index if index is not None else 1 << 30, name)

    return sorted(runs, key=key)


def child_counts(phases: Iterable[str]) -> dict[str, int]:
    """``status.counts`` of existing children alone (a rejected spec has no points to count)."""
    listed = list(phases)
    active = [p for p in listed if p not in TERMINAL_PHASES]
    pending = sum(1 for p in active if p == Phase.PENDING.value)
    return {
        "total": len(listed),
        "pending": pending,
        "running": len(active) - pending,
        "succeeded": sum(1 for p in listed if p == Phase.SUCCEEDED.value),
        "failed": sum(1 for p in listed if p == Phase.FAILED.value),
    }


# --------------------------------------------------------------------------- the plan

SucceededReason = Literal[
    "Running",
    "AllSucceeded",
    "SomeFailed",
    "Aborted",
    # an SLO search (benchop.core.search): the outcomes it ends with
    "KneeFound",
    "AtMax",
    "ProbeLimit",
    "BelowMin",
]
SUCCESS_REASONS: frozenset[str] = frozenset({"AllSucceeded", "KneeFound", "AtMax", "ProbeLimit"})
"""A finished Experiment with one of these reasons Succeeded; any other failed. A search
succeeds when it has an answer (its probe runs failing is how it finds the limit); only
``BelowMin`` — not even the minimum load met the target — fails it."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What the reconciler should do now, and the status that describes it."""

    create: tuple[int, ...]
    """Indices of the points to create now, in order."""
    counts: dict[str, int]
    """``status.counts``: total, pending, running, succeeded, failed."""
    finished: bool
    reason: SucceededReason
    message: str

    @property
    def succeeded(self) -> bool:
        return self.finished and self.reason in SUCCESS_REASONS


def should_stop(spec: ExperimentSpec, failures: int) -> bool:
    """No new runs once ``failurePolicy: abort`` saw a failure or failures > ``maxFailures``.

    The same rule as ``benchop run`` (local mode).
    """
    if failures == 0:
        return False
    if spec.failure_policy == "abort":
        return True
    return spec.max_failures is not None and failures > spec.max_failures


def plan_sweep(
    spec: ExperimentSpec,
    phases: Mapping[int, str],
    total: int,
    created: Collection[int] | None = None,
) -> Plan:
    """The next step of a sweep of ``total`` points given the children's phases by index.

    ``created``: the points that ever had a child (the reconciler persists this high-water set
    on the Experiment); None means every index below the highest one in ``phases`` (a sweep
    created in index order, as ``benchop run`` does). A created point without a child was
    deleted by hand: it is not re-created and counts as failed. Points are started in index
    order, skipping created ones, at most ``spec.max_parallel`` non-terminal at a time. The
    sweep is finished when nothing is running and either every point was created or the
    failure policy stopped it (reason ``Aborted``).
    """
    if created is None:
        created = range(max(phases, default=-1) + 1)
    ever = set(created) | set(phases)
    missing = sorted(i for i in ever if i not in phases)
    succeeded = sum(1 for p in phases.values() if p == Phase.SUCCEEDED.value)
    failed = sum(1 for p in phases.values() if p == Phase.FAILED.value) + len(missing)
    active = [i for i, p in phases.items() if p not in TERMINAL_PHASES]
    pending_children = sum(1 for i in active if phases[i] == Phase.PENDING.value)
    stop = should_stop(spec, failed)
    create: tuple[int, ...] = ()
    if not stop:
        room = max(0, spec.max_parallel - len(active))
        fresh = (i for i in range(total) if i not in ever)
        create = tuple(itertools.islice(fresh, room))
    not_created = max(0, total - len(ever) - len(create))
    counts = {
        "total": total,
        "pending": not_created + len(create) + pending_children,
        "running": len(active) - pending_children,
        "succeeded": succeeded,
        "failed": failed,
    }
    all_created = not_created == 0
    finished = not active and not create and (all_created or stop)
    deleted = f"; deleted by hand: {', '.join(map(str, missing))}" if missing else ""
    if not finished:
        done = succeeded + failed
        reason: SucceededReason = "Running"
        message = f"{done}/{total} runs finished ({succeeded} succeeded, {failed} failed)"
        if stop:
            message += "; the failure policy stopped the sweep: no new runs are started"
    elif stop and not all_created:
        reason = "Aborted"
        message = (
            f"stopped after {failed} failed run(s) (failurePolicy {spec.failure_policy}, "
            f"maxFailures {spec.max_failures}); {succeeded} succeeded, "
            f"{total - succeeded - failed} not run{deleted}"
        )
    elif failed:
        reason = "SomeFailed"
        message = f"{failed} of {total} runs failed{deleted}"
    else:
        reason = "AllSucceeded"
        message = f"all {total} runs succeeded"
    return Plan(create, counts, finished, reason, message)
