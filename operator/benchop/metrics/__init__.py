"""Metrics core: a registry of counters, gauges and integer series.

See ``series`` (cheap recording, bulk fold), ``registry`` (snapshot to wire
summaries) and ``stats`` (exact percentiles, stable moments, exact merge).
"""

from benchop.metrics import names
from benchop.metrics.registry import Counter, Gauge, Registry
from benchop.metrics.series import Series
from benchop.metrics.stats import Stats, describe, merge, percentile, summarize

__all__ = [
    "Counter",
    "Gauge",
    "Registry",
    "Series",
    "Stats",
    "describe",
    "merge",
    "names",
    "percentile",
    "summarize",
]
