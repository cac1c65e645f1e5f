"""Timeline: per-second counts and latency histograms of a run's requests (pure).

Each request counts in the wall-clock second it *ended* (``sent + e2e``): its outcome, its
tokens, and its TTFT, inter-token latencies and end-to-end latency go into that second's
log-linear histograms (:mod:`benchop.metrics.buckets`). Histograms, not values: a row costs
a few hundred integers however many tokens the second saw, rows of different workers merge
exactly by adding counts, and a percentile estimated from a row is within
``buckets.REL_ERROR`` (0.78 %) of the exact one. Whole-run percentiles stay exact (they come
from the raw values of the final snapshots); the timeline is for "over time".

    tl = Timeline()
    tl.add(end_ns=..., ok=True, good=True, input_tokens=128, output_tokens=64,
           ttft_ns=20_000_000, itl_ns=[5_000_000] * 63, e2e_ns=335_000_000)
    rows = tl.rows()                     # list[TimelineRow], one per second, gaps filled
    merged = merge_rows([rows_a, rows_b])
    percentiles_ms(rows[0].ttft, [50, 99])
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from benchagent.wire import TimelineRow
from benchop.metrics import buckets
from benchop.metrics.stats import estimate_percentiles

__all__ = ["Timeline", "TimelineRow", "coarsen", "merge_rows", "percentiles_ms"]

NS = 1_000_000_000
_KEY_BITS = 13  # bucket keys of int64 values stay below 64 * 64 = 4096 < 2**13
_FOLD_EVERY = 4096  # requests buffered before a vectorised fold


class Timeline:
    """Accumulates requests into per-second rows; ``add`` is cheap, folds are vectorised."""

    def __init__(self) -> None:
        self._rows: dict[int, TimelineRow] = {}
        self._pending = 0
        # buffered per-series (second, value) pairs, folded into the rows' histograms
        self._secs: dict[str, list[int]] = {"ttft": [], "itl": [], "e2e": []}
        self._vals: dict[str, list[int]] = {"ttft": [], "itl": [], "e2e": []}

    def add(
        self,
        *,
        end_ns: int,
        ok: bool,
        good: bool = False,
        input_tokens: int = 0,
        output_tokens: int = 0,
        ttft_ns: int | None = None,
        itl_ns: Sequence[int] = (),
        e2e_ns: int | None = None,
    ) -> None:
        """Count one request (latencies only for a successful one, as the metrics do)."""
        t = end_ns // NS
        row = self._rows.get(t)
        if row is None:
            row = self._rows[t] = TimelineRow(t_s=t)
        row.requests += 1
        if not ok:
            return
        row.ok += 1
        row.good += good
        row.input_tokens += input_tokens
        row.output_tokens += output_tokens
        if ttft_ns is not None:
            self._secs["ttft"].append(t)
            self._vals["ttft"].append(ttft_ns)
        if itl_ns:
            self._secs["itl"].extend([t] * len(itl_ns))
            self._vals["itl"].extend(itl_ns)
        if e2e_ns is not None:
            self._secs["e2e"].append(t)
            self._vals["e2e"].append(e2e_ns)
        self._pending += 1
        if self._pending >= _FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        self._pending = 0
        for name, secs in self._secs.items():
            if not secs:
                continue
            t = np.asarray(secs, dtype=np.int64)
            v = np.maximum(np.asarray(self._vals[name], dtype=np.int64), 0)
            secs.clear()
            self._vals[name].clear()
            combined = (t << _KEY_BITS) | buckets.keys(v)
            uniq, counts = np.unique(combined, return_counts=True)
            for c, n in zip(uniq.tolist(), counts.tolist(), strict=True):
                hist: dict[int, int] = getattr(self._rows[c >> _KEY_BITS], name)
                key = c & ((1 << _KEY_BITS) - 1)
                hist[key] = hist.get(key, 0) + n

    def rows(self) -> list[TimelineRow]:
        """The rows so far, one per second from the first to the last, empty seconds included."""
        self._fold()
        return _filled(self._rows)


def _filled(rows: dict[int, TimelineRow]) -> list[TimelineRow]:
    if not rows:
        return []
    first, last = min(rows), max(rows)
    return [rows.get(t) or TimelineRow(t_s=t) for t in range(first, last + 1)]


def _add_hist(into: dict[int, int], other: dict[int, int]) -> None:
    for k, n in other.items():
        into[k] = into.get(k, 0) + n


def _accumulate(acc: TimelineRow, r: TimelineRow) -> None:
    acc.requests += r.requests
    acc.ok += r.ok
    acc.good += r.good
    acc.input_tokens += r.input_tokens
    acc.output_tokens += r.output_tokens
    _add_hist(acc.ttft, r.ttft)
    _add_hist(acc.itl, r.itl)
    _add_hist(acc.e2e, r.e2e)


def merge_rows(parts: Iterable[Iterable[TimelineRow] | None]) -> list[TimelineRow]:
    """The rows of several workers (or attempts) added second by second, gaps filled."""
    out: dict[int, TimelineRow] = {}
    for rows in parts:
        for r in rows or ():
            acc = out.get(r.t_s)
            if acc is None:
                acc = out[r.t_s] = TimelineRow(t_s=r.t_s)
            _accumulate(acc, r)
    return _filled(out)


def coarsen(rows: Sequence[TimelineRow], factor: int) -> list[TimelineRow]:
    """Rows of ``factor`` seconds each (``t_s``: the first second of each), exactly merged."""
    if factor <= 1 or not rows:
        return list(rows)
    t0 = rows[0].t_s
    out: dict[int, TimelineRow] = {}
    for r in rows:
        t = t0 + (r.t_s - t0) // factor * factor
        acc = out.get(t)
        if acc is None:
            acc = out[t] = TimelineRow(t_s=t)
        _accumulate(acc, r)
    return list(out.values())


def percentiles_ms(hist: dict[int, int], qs: Sequence[float]) -> list[float]:
    """Percentiles (ms) of a row's histogram (ns buckets), each within 0.78 %; NaN when empty."""
    keys = [k for k, n in hist.items() if n > 0]
    if not keys:
        return [math.nan for _ in qs]
    lo, hi = buckets.midpoint(min(keys)), buckets.midpoint(max(keys))
    return [x / 1e6 for x in estimate_percentiles(hist, int(lo), int(hi), qs)]
