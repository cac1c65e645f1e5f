"""Cache-first reading of an Experiment's rollup: ``status.metrics`` if usable, else the runs.

``status.metrics`` is a denormalized cache written by the refresher. A reader uses it when its
``version`` is :data:`~benchop.api.models.METRICS_VERSION` and it decodes; anything else — no
metrics yet, an older or newer version, a malformed blob — is a *cache miss*: the rollup is
computed from the child runs with the same pure :func:`~benchop.operator.rollup.rollup` the
refresher uses. A bad blob never fails the read (nor a listing of many experiments).

    metrics, source = await read_rollup(experiment, list_children)
    # source: "cache" | "hydrated"
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import ValidationError

from benchop.api.conditions import now_rfc3339
from benchop.api.models import METRICS_VERSION, ExperimentMetrics
from benchop.operator.children import owned_by
from benchop.operator.rollup import DEFAULT_CAP, rollup

Source = Literal["cache", "hydrated"]
ListChildren = Callable[[Mapping[str, Any]], Awaitable[Sequence[Mapping[str, Any]]]]
"""``await list_children(experiment) -> [BenchmarkRun bodies]`` (its children, by label)."""


def cached_rollup(experiment: Mapping[str, Any]) -> ExperimentMetrics | None:
    """The decoded ``status.metrics`` if present, of the current version and well-formed."""
    status = experiment.get("status")
    blob = status.get("metrics") if isinstance(status, Mapping) else None
    if not isinstance(blob, Mapping) or blob.get("version") != METRICS_VERSION:
        return None
    try:
        return ExperimentMetrics.model_validate(blob)
    except ValidationError:
        return None


async def read_rollup(
    experiment: Mapping[str, Any],
    list_children: ListChildren,
    *,
    cap: int = DEFAULT_CAP,
    now: str | None = None,
) -> tuple[ExperimentMetrics, Source]:
    """The experiment's rollup and where it came from (see the module doc).

    Hydrating lists the children once and keeps only those owned by this experiment's uid.
    """
    cached = cached_rollup(experiment)
    if cached is not None:
        return cached, "cache"
    children = await list_children(experiment)
    uid = (experiment.get("metadata") or {}).get("uid")
    if uid:
        children = [c for c in children if owned_by(c, uid)]
    sweep = (experiment.get("spec") or {}).get("sweep")
    return rollup(children, cap=cap, now=now or now_rfc3339(), sweep=sweep), "hydrated"
