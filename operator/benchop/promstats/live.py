"""What the operator calls: GPU stats of a run for ``status.live.gpu`` and
``status.results.gpu.prometheus``, and the cross-check against the baseline acks.

Both entry points are synchronous (prometheus-api-client uses requests): call
them from the operator's loop with ``asyncio.to_thread``. They never raise for
an unreachable or misconfigured Prometheus or an empty selector: the dict
then holds ``error`` (a message) and the run goes on. An unknown metric kind
is a programming error and raises :class:`UnknownMetricKind`.

    prom = PromClient(spec.prometheus.url)   # one per run: reuses its HTTP session
    selector = GpuSelector.from_pods(namespace, target_pod_bodies)
    live = await asyncio.to_thread(live_gpu, prom, selector)
    gpu = await asyncio.to_thread(window_gpu, prom, selector, start, end)
    gpu["crossCheck"] = cross_check(baseline_results, gpu)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from benchop.api.models import GpuResults
from benchop.promstats.kinds import ALL_AGENT_METRICS, kinds_for
from benchop.promstats.query import PromClient, PrometheusUnavailable
from benchop.promstats.selector import GpuSelector, attribution
from benchop.promstats.shape import Gpu, gpus, summary

LIVE_METRICS: tuple[str, ...] = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
)
"""Per-GPU metrics in ``status.live.gpu`` (their capacity sources are queried too)."""

RESULT_METRICS: tuple[str, ...] = (*LIVE_METRICS, "DCGM_FI_DEV_SM_CLOCK")
"""Per-GPU metrics in ``status.results.gpu.prometheus``."""

LIVE_MAX_GPUS = 8
RESULT_MAX_GPUS = 16


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _seconds(t: float | datetime) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


def _client(prom: str | PromClient, timeout_s: float) -> PromClient:
    return prom if isinstance(prom, PromClient) else PromClient(prom, timeout_s=timeout_s)


def gpu_block(
    gpu_list: Sequence[Gpu], metrics: Sequence[str], max_gpus: int
) -> tuple[dict[str, Any], bool]:
    """``{gpu key: {uuid, model, pod?, metrics}}`` for the first ``max_gpus`` GPUs."""
    out: dict[str, Any] = {}
    for g in gpu_list[:max_gpus]:
        entry: dict[str, Any] = {"uuid": g.uuid, "model": g.model}
        if g.pod:
            entry["pod"] = g.pod
        entry["metrics"] = g.values(metrics)
        out[g.key] = entry
    return out, len(gpu_list) > max_gpus


def _collect(
    prom: str | PromClient,
    selector: GpuSelector,
    metrics: Sequence[str],
    start: float,
    end: float | None,
    max_gpus: int,
    timeout_s: float,
) -> dict[str, Any]:
    kinds_for(list(metrics))  # unknown kind: raise (loudly) before anything else
    client = _client(prom, timeout_s)
    head: dict[str, Any] = {"source": "prometheus", "url": client.url}
    if selector.empty:
        return head | {"error": "no target pods or nodes known yet: no GPUs to query"}
    before = client.queries
    try:
        by_metric = client.window(metrics, selector, start, end)
    except PrometheusUnavailable as e:
        return head | {"error": str(e), "queries": client.queries - before}
    finally:
        if not isinstance(prom, PromClient):
            client.close()
    gpu_list = gpus(by_metric)
    block, truncated = gpu_block(gpu_list, metrics, max_gpus)
    head |= {
        "queries": client.queries - before,
        "attribution": attribution(s.labels for ss in by_metric.values() for s in ss),
        "summary": summary(gpu_list, None if end is None else (start, end)),
        "gpus": block,
    }
    if truncated:
        head["truncated"] = f"{len(block)} of {len(gpu_list)} GPUs shown"
    if not gpu_list:
        head["error"] = "Prometheus has no GPU series for the target's pods or nodes"
    return head


def live_gpu(
    prom: str | PromClient,
    selector: GpuSelector,
    *,
    lookback_s: float = 30.0,
    metrics: Sequence[str] = LIVE_METRICS,
    max_gpus: int = LIVE_MAX_GPUS,
    timeout_s: float = 3.0,
) -> dict[str, Any]:
    """The run's GPUs now, for ``status.live.gpu``: stats over the last ``lookback_s``.

    Bounded: per-GPU MetricValues of ``metrics`` for at most ``max_gpus`` GPUs
    (``truncated`` says so), ``summary`` over all of them. Never raises for
    Prometheus trouble: returns ``{"error": message, ...}`` instead.
    ``prom`` is a URL (a client with ``timeout_s`` is made and closed) or a
    :class:`PromClient` (its own timeout applies).
    """
    now = time.time()
    out = _collect(prom, selector, metrics, now - lookback_s, None, max_gpus, timeout_s)
    return {"at": _iso(now), "lookbackS": lookback_s} | out


def window_gpu(
    prom: str | PromClient,
    selector: GpuSelector,
    start: float | datetime,
    end: float | datetime,
    *,
    metrics: Sequence[str] = RESULT_METRICS,
    max_gpus: int = RESULT_MAX_GPUS,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """The run's GPUs over the profiling window ``[start, end]`` (unix s or aware
    datetimes), for ``status.results.gpu.prometheus``. Same bounds and error
    behaviour as :func:`live_gpu`."""
    t0, t1 = _seconds(start), _seconds(end)
    if t1 <= t0:
        return {"error": f"empty window: end {_iso(t1)} is not after start {_iso(t0)}"}
    out = _collect(prom, selector, metrics, t0, t1, max_gpus, timeout_s)
    return {"start": _iso(t0), "end": _iso(t1), "windowS": round(t1 - t0, 3)} | out


CROSS_CHECKS: tuple[tuple[str, str, str], ...] = (
    # (row, GpuResults field, summary key)
    ("energyJ", "energy_j", "energyWindowJ"),
    ("powerMeanW", "power_mean_w", "powerMeanW"),
    ("utilMean", "util_mean", "utilMean"),
)


def cross_check(baseline_gpu: GpuResults | None, prom: Mapping[str, Any]) -> dict[str, Any]:
    """Baseline-ack numbers next to Prometheus' for the same window, with the difference.

    ``{"energyJ": {"baseline": b, "prometheus": p, "diff": p - b, "diffPct": ...}, ...}``;
    a side that is missing is None (and the diff too). Energy compares the acks'
    exact END - START with Prometheus' ``energyWindowJ``; power compares the
    acks' mean with the energy counter's mean over the scraped span; util
    compares the acks' two-point mean with the mean of every scrape.
    """
    summ = prom.get("summary") or {}
    out: dict[str, Any] = {}
    for row, field, key in CROSS_CHECKS:
        b = getattr(baseline_gpu, field) if baseline_gpu is not None else None
        p = summ.get(key)
        entry: dict[str, Any] = {"baseline": b, "prometheus": p, "diff": None, "diffPct": None}
        if b is not None and p is not None:
            entry["diff"] = round(p - b, 3)
            entry["diffPct"] = round(100.0 * (p - b) / b, 2) if b else None
        out[row] = entry
    if "error" in prom:
        out["note"] = f"no Prometheus numbers: {prom['error']}"
    return out


__all__ = [
    "ALL_AGENT_METRICS",
    "LIVE_METRICS",
    "RESULT_METRICS",
    "cross_check",
    "live_gpu",
    "window_gpu",
]
