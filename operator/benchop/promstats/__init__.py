"""GPU stats of a run from Prometheus: metric kinds, the MetricValue shape, batched queries.

The operator calls :func:`live_gpu` (``status.live.gpu``), :func:`window_gpu`
(``status.results.gpu.prometheus``) and :func:`cross_check`; ``benchop top``
shows the same numbers. See docs/prometheus.md.
"""

from benchop.promstats.kinds import KINDS, MetricClass, MetricKind, UnknownMetricKind, kind_of
from benchop.promstats.live import (
    LIVE_METRICS,
    RESULT_METRICS,
    cross_check,
    live_gpu,
    window_gpu,
)
from benchop.promstats.query import PromClient, PrometheusUnavailable
from benchop.promstats.selector import GpuSelector
from benchop.promstats.shape import MetricValue, MovingStats, fmt

__all__ = [
    "KINDS",
    "LIVE_METRICS",
    "RESULT_METRICS",
    "GpuSelector",
    "MetricClass",
    "MetricKind",
    "MetricValue",
    "MovingStats",
    "PromClient",
    "PrometheusUnavailable",
    "UnknownMetricKind",
    "cross_check",
    "fmt",
    "kind_of",
    "live_gpu",
    "window_gpu",
]
