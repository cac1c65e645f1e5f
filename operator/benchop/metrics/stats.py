"""Statistics of integer series: exact percentiles, stable moments, exact merge.

Definitions (all pure functions, numpy in, floats out):

- **Percentile**: numpy's default ``method="linear"`` (Hyndman & Fan type 7):
  with the values sorted ascending as ``x[0..n-1]`` and ``h = (n - 1) * q / 100``,
  ``P(q) = x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])``.
- **Mean** is ``sum / count`` with the sum an exact Python int.
- **Std** is the population standard deviation (numpy's default ``ddof=0``):
  ``sqrt(m2 / count)``, where ``m2`` is the sum of squared deviations from the
  mean. ``m2`` of a chunk is computed in two passes around an integer shift (so
  nanosecond values near 1e12 keep their precision) and chunks are combined
  with Chan's parallel formula, whose between-chunk term is computed exactly
  from the integer sums.
- **Merge** of summaries is exact: counts, sums, min and max add up or compare
  exactly, histogram counts add per bucket, and raw values concatenate, so the
  percentiles of a merge equal numpy over the union of all values.

An empty series describes as ``Stats`` with ``count == 0`` and zeros elsewhere.

>>> import numpy as np
>>> s = describe(np.array([1, 2, 3, 4], dtype=np.int64))
>>> (s.count, s.mean, s.p50, s.p90, s.max)
(4, 2.5, 2.5, 3.7, 4.0)
>>> s.scaled(1e-6).max  # ns -> ms
4e-06
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from benchagent.wire import SeriesSummary
from benchop.metrics import buckets as _buckets

IntArray = npt.NDArray[np.int64]
QUANTILES = (50.0, 90.0, 95.0, 99.0)
"""The percentiles every ``Stats`` has (``p50``, ``p90``, ``p95``, ``p99``)."""
_INT64_SAFE = 1 << 63


def percentile_key(q: float) -> str:
    """The name of a percentile: ``p50``, ``p99.9``.

    >>> percentile_key(99.9), percentile_key(50.0)
    ('p99.9', 'p50')
    """
    return f"p{q:g}"


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary statistics of one series, in the series' unit (ns, tokens).

    ``extra`` holds the requested percentiles other than p50/p90/p95/p99 as ``(q, value)``
    pairs, in the order asked.
    """

    count: int
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float
    extra: tuple[tuple[float, float], ...] = ()

    def percentiles(self) -> dict[str, float]:
        """Every percentile held, by name (``p50`` ... ``p99``, then the extra ones)."""
        out = {"p50": self.p50, "p90": self.p90, "p95": self.p95, "p99": self.p99}
        out.update((percentile_key(q), v) for q, v in self.extra)
        return out

    def scaled(self, factor: float) -> Stats:
        """The same statistics with every value multiplied by ``factor`` (1e-6: ns -> ms)."""
        return Stats(
            count=self.count,
            mean=self.mean * factor,
            std=self.std * abs(factor),
            min=self.min * factor,
            max=self.max * factor,
            p50=self.p50 * factor,
            p90=self.p90 * factor,
            p95=self.p95 * factor,
            p99=self.p99 * factor,
            extra=tuple((q, v * factor) for q, v in self.extra),
        )


EMPTY = Stats(count=0, mean=0.0, std=0.0, min=0.0, max=0.0, p50=0.0, p90=0.0, p95=0.0, p99=0.0)


@dataclass(frozen=True, slots=True)
class Moments:
    """Count, exact integer sum, m2 (sum of squared deviations), min and max."""

    count: int
    sum: int
    m2: float
    min: int
    max: int


NO_MOMENTS = Moments(count=0, sum=0, m2=0.0, min=0, max=0)


def exact_sum(values: IntArray, lo: int, hi: int) -> int:
    """Exact sum of int64 ``values`` whose minimum is ``lo`` and maximum ``hi``."""
    if max(abs(lo), abs(hi)) * values.size < _INT64_SAFE:
        return int(values.sum(dtype=np.int64))
    return sum(values.tolist())  # would overflow int64: Python ints


def moments(values: IntArray) -> Moments:
    """Moments of a chunk of values, two-pass around the integer floor of the mean."""
    a = np.asarray(values, dtype=np.int64)
    n = int(a.size)
    if n == 0:
        return NO_MOMENTS
    lo, hi = int(a.min()), int(a.max())
    s = exact_sum(a, lo, hi)
    shift = s // n
    d = (a - shift).astype(np.float64)
    d -= (s - shift * n) / n  # the exact mean's fractional part, correctly rounded
    # (d * d).sum(), not d @ d: a BLAS dot starts OpenBLAS's spinning thread pool in the
    # load generator's process (a second core burnt); numpy's pairwise sum is also more exact.
    return Moments(count=n, sum=s, m2=float((d * d).sum()), min=lo, max=hi)


def combine(parts: Iterable[Moments]) -> Moments:
    """Moments of the union of disjoint parts (Chan et al.'s parallel formula).

    The between-part term ``(mean_b - mean_a)**2 * n_a * n_b / n`` equals
    ``(s_b*n_a - s_a*n_b)**2 / (n_a*n_b*n)`` and is evaluated with Python ints.
    """
    n, s, m2, lo, hi = 0, 0, 0.0, 0, 0
    for p in parts:
        if p.count == 0:
            continue
        if n == 0:
            n, s, m2, lo, hi = p.count, p.sum, p.m2, p.min, p.max
            continue
        nn = n + p.count
        between = (p.sum * n - s * p.count) ** 2 / (n * p.count * nn)
        n, s, m2 = nn, s + p.sum, m2 + p.m2 + between
        lo, hi = min(lo, p.min), max(hi, p.max)
    return Moments(count=n, sum=s, m2=m2, min=lo, max=hi)


def percentile(values: IntArray | Sequence[int], q: float) -> float:
    """The ``q``-th percentile (``0 <= q <= 100``) by numpy's 'linear' method (type 7)."""
    a = np.asarray(values)
    if a.size == 0:
        raise ValueError("percentile of an empty series")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within [0, 100], got {q}")
    return float(np.percentile(a, q))


def _extra(qs: Sequence[float]) -> tuple[float, ...]:
    """The requested percentiles that are not among QUANTILES, in order, once each."""
    out: list[float] = []
    for q in qs:
        q = float(q)
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"q must be within [0, 100], got {q}")
        if q not in QUANTILES and q not in out:
            out.append(q)
    return tuple(out)


def _stats(m: Moments, values: Sequence[float], extra: tuple[float, ...]) -> Stats:
    """``values`` are the percentiles at QUANTILES + extra, in that order."""
    p50, p90, p95, p99 = values[:4]
    return Stats(
        count=m.count,
        mean=m.sum / m.count,
        std=math.sqrt(max(m.m2, 0.0) / m.count),
        min=float(m.min),
        max=float(m.max),
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        extra=tuple(zip(extra, values[4:], strict=True)),
    )


def _exact(values: IntArray, qs: tuple[float, ...]) -> list[float]:
    return [float(x) for x in np.percentile(values, qs)]


def describe(values: IntArray | Sequence[int], qs: Sequence[float] = ()) -> Stats:
    """Exact statistics of raw integer values; ``qs``: percentiles wanted beyond the four."""
    a = np.asarray(values, dtype=np.int64)
    extra = _extra(qs)
    if a.size == 0:
        return EMPTY
    return _stats(moments(a), _exact(a, QUANTILES + extra), extra)


def encode_values(values: IntArray) -> bytes:
    """Raw values as they cross the wire: little-endian int64 bytes."""
    return np.ascontiguousarray(values, dtype="<i8").tobytes()


def decode_values(summary: SeriesSummary) -> IntArray | None:
    """The raw values of a summary (a read-only view), or None when it carries none."""
    if summary.values is None:
        return None
    return np.frombuffer(summary.values, dtype="<i8").astype(np.int64, copy=False)


def _moments_of(s: SeriesSummary) -> Moments:
    return Moments(count=s.count, sum=s.sum, m2=s.m2, min=s.min, max=s.max)


def merge(parts: Iterable[SeriesSummary]) -> SeriesSummary:
    """Exact merge of the summaries of disjoint parts of one series.

    Values are concatenated when every non-empty part carries them, else None.
    """
    nonempty = [p for p in parts if p.count > 0]
    m = combine(_moments_of(p) for p in nonempty)
    counts: dict[int, int] = {}
    for p in nonempty:
        for k, c in p.buckets.items():
            counts[k] = counts.get(k, 0) + c
    values: bytes | None = None
    if all(p.values is not None for p in nonempty):
        values = b"".join(p.values for p in nonempty if p.values is not None)
    return SeriesSummary(
        count=m.count,
        sum=m.sum,
        m2=m.m2,
        min=m.min,
        max=m.max,
        buckets=dict(sorted(counts.items())),
        values=values,
    )


def estimate_percentiles(
    buckets: dict[int, int], lo: int, hi: int, qs: Sequence[float] = QUANTILES
) -> list[float]:
    """Percentiles estimated from a histogram with the same type-7 rule as ``percentile``.

    Each ranked value is replaced by its bucket's midpoint clamped to ``[lo, hi]``
    (the smallest and largest ranks by ``lo`` and ``hi`` themselves), so for
    non-negative values every estimate is within ``buckets.REL_ERROR`` of the
    exact percentile. NaN when the histogram is empty.
    """
    keys = sorted(k for k, c in buckets.items() if c > 0)
    if not keys:
        return [math.nan for _ in qs]
    cum = np.cumsum([buckets[k] for k in keys])
    n = int(cum[-1])

    def ranked(r: int) -> float:
        if r == 0:
            return float(lo)
        if r == n - 1:
            return float(hi)
        mid = _buckets.midpoint(keys[int(np.searchsorted(cum, r, side="right"))])
        return min(max(mid, float(lo)), float(hi))

    out = []
    for q in qs:
        h = (n - 1) * q / 100.0
        r = math.floor(h)
        v0 = ranked(r)
        out.append(v0 if r >= n - 1 else v0 + (h - r) * (ranked(r + 1) - v0))
    return out


def summarize(summary: SeriesSummary, qs: Sequence[float] = ()) -> Stats:
    """Statistics of a summary: exact when it carries values, else percentiles estimated
    from its histogram (count, mean, std, min and max are exact either way). ``qs``:
    percentiles wanted beyond p50/p90/p95/p99 (``Stats.extra``).

    >>> summarize(summary, qs=[99.9]).percentiles()["p99.9"]  # doctest: +SKIP
    """
    extra = _extra(qs)
    if summary.count == 0:
        return EMPTY
    m = _moments_of(summary)
    values = decode_values(summary)
    if values is None:
        return _stats(
            m,
            estimate_percentiles(summary.buckets, summary.min, summary.max, QUANTILES + extra),
            extra,
        )
    if values.size != summary.count:
        raise ValueError(f"summary has count {summary.count} but {values.size} values")
    return _stats(m, _exact(values, QUANTILES + extra), extra)
