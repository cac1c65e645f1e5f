"""An Experiment's child BenchmarkRuns, pure: names, labels, manifests and the sweep plan.

No I/O and no clocks. The reconciler (:mod:`benchop.operator.handlers.experiments`) lists the
children, asks :func:`plan_sweep` what to do and creates what it says; the rollup reads the
params and sweep index back from the annotations written here.

Children are named ``<experiment>-<index>`` (index into ``ExperimentSpec.points()``, first axis
slowest; the same names as ``benchop run`` uses locally), hashed down to 63 characters when
longer. Each carries ``benchop.io/experiment=<experiment>``, one ``benchop.io/<path>=<value>``
label per swept parameter (values sanitised to label syntax), the exact params as JSON in an
annotation, and a controller ownerReference to the Experiment.

    manifest = build_child_run(exp_body, index=0, params={"load.concurrency": 1}, spec=spec)
    plan = plan_sweep(spec, [child_phase(c) for c in ordered_children])
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from benchop.api.models import API_VERSION, BenchmarkRunSpec, ExperimentSpec, Phase, to_wire
from benchop.operator.builders import LABEL_PREFIX, MAX_NAME, safe_name
from benchop.operator.k8s import Resource

EXPERIMENT = Resource("benchop.io", "v1alpha1", "experiments")
"""The Experiment resource for :class:`~benchop.operator.k8s.KubeApi` calls."""

EXPERIMENT_LABEL = LABEL_PREFIX + "experiment"
INDEX_ANNOTATION = LABEL_PREFIX + "sweep-index"
PARAMS_ANNOTATION = LABEL_PREFIX + "params"
EXPERIMENT_NAME_ANNOTATION = LABEL_PREFIX + "experiment-name"

TERMINAL = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})

_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


def child_name(experiment: str, index: int) -> str:
    """``<experiment>-<index>``, truncated with a stable hash above 63 characters.

    >>> child_name("sweep", 3)
    'sweep-3'
    """
    return safe_name(experiment, str(index))


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


def experiment_label_value(experiment: str) -> str:
    """The ``benchop.io/experiment`` label value: the name, hashed down to 63 chars if longer."""
    return safe_name(experiment)


def experiment_selector(experiment: str) -> str:
    """The label selector of an experiment's children."""
    return f"{EXPERIMENT_LABEL}={experiment_label_value(experiment)}"


def experiment_owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """The controller ownerReference pointing at an Experiment body (needs metadata.uid)."""
    meta = body["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "Experiment",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def params_json(params: Mapping[str, Any]) -> str:
    """The params annotation: compact JSON, keys in sweep order."""
    return json.dumps(dict(params), separators=(",", ":"))


def build_child_run(
    experiment: Mapping[str, Any],
    *,
    index: int,
    params: Mapping[str, Any],
    spec: BenchmarkRunSpec,
) -> dict[str, Any]:
    """The BenchmarkRun manifest of sweep point ``index`` of ``experiment`` (a full body)."""
    meta = experiment["metadata"]
    name = meta["name"]
    labels = {EXPERIMENT_LABEL: experiment_label_value(name)}
    for path, value in params.items():
        labels[param_label_key(path)] = label_value(value)
    return {
        "apiVersion": API_VERSION,
        "kind": "BenchmarkRun",
        "metadata": {
            "name": child_name(name, index),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {
                EXPERIMENT_NAME_ANNOTATION: name,
                INDEX_ANNOTATION: str(index),
                PARAMS_ANNOTATION: params_json(params),
            },
            "ownerReferences": [experiment_owner_reference(experiment)],
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


def order_children(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Children in sweep order (index annotation, then name)."""

    def key(run: Mapping[str, Any]) -> tuple[int, str]:
        index = sweep_index(run)
        name = str((run.get("metadata") or {}).get("name") or "")
        return (index if index is not None else 1 << 30, name)

    return sorted(runs, key=key)


# --------------------------------------------------------------------------- the plan

SucceededReason = Literal["Running", "AllSucceeded", "SomeFailed", "Aborted"]


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
        return self.finished and self.reason == "AllSucceeded"


def should_stop(spec: ExperimentSpec, failures: int) -> bool:
    """No new runs once ``failurePolicy: abort`` saw a failure or failures > ``maxFailures``.

    The same rule as ``benchop run`` (local mode).
    """
    if failures == 0:
        return False
    if spec.failure_policy == "abort":
        return True
    return spec.max_failures is not None and failures > spec.max_failures


def plan_sweep(spec: ExperimentSpec, phases: Mapping[int, str], total: int) -> Plan:
    """The next step of a sweep of ``total`` points given the children's phases by index.

    Points are started in index order, at most ``spec.max_parallel`` non-terminal at a time.
    A point below the highest created index that has no child was deleted by hand: it is not
    re-created and counts as failed. The sweep is finished when nothing is running and either
    every point was created or the failure policy stopped it (reason ``Aborted``).
    """
    created_up_to = max(phases, default=-1)
    missing = [i for i in range(created_up_to) if i not in phases]
    succeeded = sum(1 for p in phases.values() if p == Phase.SUCCEEDED.value)
    failed = sum(1 for p in phases.values() if p == Phase.FAILED.value) + len(missing)
    active = [i for i, p in phases.items() if p not in TERMINAL]
    pending_children = sum(1 for i in active if phases[i] == Phase.PENDING.value)
    stop = should_stop(spec, failed)
    create: tuple[int, ...] = ()
    if not stop:
        room = max(0, spec.max_parallel - len(active))
        create = tuple(range(created_up_to + 1, min(total, created_up_to + 1 + room)))
    not_created = max(0, total - (created_up_to + 1) - len(create))
    counts = {
        "total": total,
        "pending": not_created + len(create) + pending_children,
        "running": len(active) - pending_children,
        "succeeded": succeeded,
        "failed": failed,
    }
    all_created = created_up_to + 1 + len(create) >= total
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
