"""Series: a cheap recorder of integer values (ns latencies, token counts).

``record`` is the bound ``append`` of a plain list, so the hot path costs one
C call. ``fold`` moves the buffered values in bulk (numpy) into

- raw int64 chunks, kept for exact final percentiles (``values()``);
- a live log-linear histogram (``benchop.metrics.buckets``) for cheap estimates;
- exact moments (count, integer sum, m2, min, max; see ``benchop.metrics.stats``).

Call ``fold`` regularly (each snapshot tick); reads fold first, so they always
include every value recorded so far.

>>> s = Series("ttft_ns")
>>> s.record(1_500_000)
>>> s.record_many([2_000_000, 2_500_000])
>>> s.count, s.values().tolist()
(3, [1500000, 2000000, 2500000])
>>> s.summary(include_values=False).sum
6000000
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from benchagent.wire import SeriesSummary
from benchop.metrics import buckets
from benchop.metrics.stats import (
    NO_MOMENTS,
    IntArray,
    Moments,
    combine,
    encode_values,
    estimate_percentiles,
    moments,
)

_EMPTY = np.zeros(0, dtype=np.int64)


def _add_counts(acc: IntArray, keys: IntArray) -> IntArray:
    """``acc`` (grown as needed) plus the count of each key in ``keys`` (all >= 0)."""
    return _add_bins(acc, np.bincount(keys))


def _add_bins(acc: IntArray, counts: IntArray) -> IntArray:
    """``acc`` (grown as needed) plus ``counts``, bin by bin."""
    if counts.size > acc.size:
        acc = np.concatenate([acc, np.zeros(counts.size - acc.size, dtype=np.int64)])
    acc[: counts.size] += counts
    return acc


class Histogram:
    """Bucket counts (``benchop.metrics.buckets``), count, min and max of int values, without
    the values: bounded memory for values too many to keep (one per read, say).

    >>> h = Histogram()
    >>> h.add(np.array([1_000, 2_000, 3_000, 1_000_000], dtype=np.int64))
    >>> h.count, round(h.percentile(50))
    (4, 2500)
    """

    __slots__ = ("_neg", "_pos", "count", "max", "min")

    def __init__(self) -> None:
        self._pos: IntArray = _EMPTY.copy()  # counts of keys >= 0, by key
        self._neg: IntArray = _EMPTY.copy()  # counts of keys < 0, by -key
        self.count = 0
        self.min = 0
        self.max = 0

    def add(self, values: IntArray) -> None:
        """Count int64 ``values``."""
        if not values.size:
            return
        lo, hi = int(values.min()), int(values.max())
        self.min, self.max = (lo, hi) if not self.count else (min(self.min, lo), max(self.max, hi))
        self.count += int(values.size)
        keys = buckets.keys(values)
        if lo < 0:
            self._neg = _add_counts(self._neg, -keys[keys < 0])
            keys = keys[keys >= 0]
        self._pos = _add_counts(self._pos, keys)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts to these."""
        if not other.count:
            return
        lo, hi = other.min, other.max
        self.min, self.max = (lo, hi) if not self.count else (min(self.min, lo), max(self.max, hi))
        self.count += other.count
        self._pos = _add_bins(self._pos, other._pos)
        self._neg = _add_bins(self._neg, other._neg)

    def buckets(self) -> dict[int, int]:
        """Bucket key -> count, non-zero buckets only, ascending."""
        out = {-int(k): int(self._neg[k]) for k in np.flatnonzero(self._neg)[::-1]}
        out.update((int(k), int(self._pos[k])) for k in np.flatnonzero(self._pos))
        return out

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile, estimated within ``buckets.REL_ERROR`` (NaN if empty)."""
        return estimate_percentiles(self.buckets(), self.min, self.max, [q])[0]


class Series:
    """Integer values of one metric; not thread-safe beyond the GIL's atomic list ops."""

    __slots__ = ("_buf", "_chunks", "_hist", "_moments", "name", "record", "record_many")

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._buf: list[int] = []
        #: Record one int (hot path: list.append; no validation until ``fold``).
        self.record: Callable[[int], None] = self._buf.append
        #: Record many ints at once (list.extend), e.g. a request's inter-token latencies.
        self.record_many: Callable[[Iterable[int]], None] = self._buf.extend
        self._chunks: list[IntArray] = []
        self._moments: Moments = NO_MOMENTS
        self._hist = Histogram()

    def fold(self, limit: int | None = None) -> int:
        """Move buffered values (at most ``limit``, oldest first) into chunks, histogram
        and moments; return how many.

        Raises TypeError, keeping the buffer, when a recorded value is not an
        int within int64 (a caller bug: floats are never truncated silently).
        """
        n = len(self._buf) if limit is None else min(len(self._buf), limit)
        if n <= 0:
            return 0
        chunk = np.array(self._buf[:n])
        if chunk.dtype.kind != "i" or chunk.ndim != 1:
            raise TypeError(
                f"series {self.name!r}: recorded values must be ints within int64, "
                f"got an array of {chunk.dtype}"
            )
        chunk = chunk.astype(np.int64, copy=False)
        del self._buf[:n]  # values appended meanwhile (another thread) stay buffered
        self._hist.add(chunk)
        self._moments = combine((self._moments, moments(chunk)))
        self._chunks.append(chunk)
        return n

    @property
    def buffered(self) -> int:
        """Values recorded and not folded yet."""
        return len(self._buf)

    @property
    def count(self) -> int:
        """How many values were recorded (folded or still buffered)."""
        return self._moments.count + len(self._buf)

    def values(self) -> IntArray:
        """Every recorded value in recording order, as a read-only int64 array."""
        self.fold()
        if len(self._chunks) != 1:
            whole = np.concatenate(self._chunks) if self._chunks else _EMPTY.copy()
            whole.flags.writeable = False
            self._chunks = [whole]
        return self._chunks[0]

    def buckets(self) -> dict[int, int]:
        """The live histogram: bucket key -> count, non-zero buckets only."""
        self.fold()
        return self._hist.buckets()

    def moments(self) -> Moments:
        """Count, exact sum, m2, min and max of every recorded value."""
        self.fold()
        return self._moments

    def summary(self, include_values: bool) -> SeriesSummary:
        """The wire form; raw values only when ``include_values`` (final snapshots)."""
        m = self.moments()
        return SeriesSummary(
            count=m.count,
            sum=m.sum,
            m2=m.m2,
            min=m.min,
            max=m.max,
            buckets=self.buckets(),
            values=encode_values(self.values()) if include_values else None,
        )
