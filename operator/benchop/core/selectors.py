"""Label selectors as ``labelSelector`` query strings: one renderer for every list call.

>>> label_selector(LabelSelector(match_labels={"app": "vllm"}))
'app=vllm'
>>> experiment_selector("sweep")
'benchop.io/experiment=sweep'
"""

from __future__ import annotations

from collections.abc import Iterable

from benchop.api.models import LabelSelector, LabelSelectorRequirement
from benchop.core.names import (
    COMPONENT_LABEL,
    EXPERIMENT_LABEL,
    LOADGEN,
    RUN_LABEL,
    experiment_label_value,
    run_label_value,
)

LOADGEN_SELECTOR = f"{COMPONENT_LABEL}={LOADGEN},{RUN_LABEL}"
"""Every run's load-generator pods and Jobs (the operator's watches and its resync)."""


def label_selector(selector: LabelSelector | None) -> str:
    """``matchLabels`` (sorted by key) then ``matchExpressions``, comma-separated (AND);
    ``""`` (everything) for None.

    >>> label_selector(LabelSelector.model_validate({"matchExpressions": [
    ...     {"key": "tier", "operator": "In", "values": ["a", "b"]},
    ...     {"key": "spot", "operator": "DoesNotExist"}]}))
    'tier in (a,b),!spot'
    """
    if selector is None:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for req in selector.match_expressions or ():
        values = ",".join(req.values or ())
        if req.operator == "In":
            parts.append(f"{req.key} in ({values})")
        elif req.operator == "NotIn":
            parts.append(f"{req.key} notin ({values})")
        elif req.operator == "Exists":
            parts.append(req.key)
        else:  # DoesNotExist (the model admits no other operator)
            parts.append(f"!{req.key}")
    return ",".join(parts)


def run_selector(run_name: str) -> str:
    """The objects of run ``run_name`` (its ConfigMap, Job and worker pods)."""
    return label_selector(LabelSelector(match_labels={RUN_LABEL: run_label_value(run_name)}))


def experiment_selector(experiment: str) -> str:
    """The child runs of ``experiment``."""
    value = experiment_label_value(experiment)
    return label_selector(LabelSelector(match_labels={EXPERIMENT_LABEL: value}))


def experiments_selector(experiments: Iterable[str]) -> str:
    """The child runs of any of ``experiments`` (one list request for several).

    >>> experiments_selector(["b", "a"])
    'benchop.io/experiment in (a,b)'
    """
    values = sorted({experiment_label_value(e) for e in experiments})
    req = LabelSelectorRequirement(key=EXPERIMENT_LABEL, operator="In", values=values)
    return label_selector(LabelSelector(match_expressions=[req]))
