"""Pure: Prometheus results -> per-GPU :class:`MetricValue` (the legacy live-stat shape).

A MetricValue is ``{current, capacity, pct, unit_hint, stats: {min, max, avg,
sum, diff, rate}}`` with every number a **string** (:func:`fmt`: fixed point,
at most 3 decimals, trailing zeros dropped, ``NaN``/``+Inf``/``-Inf`` as
Prometheus spells them) and absent numbers left out. Values are in
``unit_hint`` (the kind's ``scale`` applied: energy mJ -> J). Per class, over
the samples ``(t_0, v_0) .. (t_n, v_n)`` of the window:

=========== ============= ========================= ============== =======================
class       current       min / max / avg           sum            diff / rate
=========== ============= ========================= ============== =======================
gauge       v_n           of the samples            of the samples v_n - v_0, diff / Δt
rate, diff  v_n (counter) of the per-interval rates = diff         increase, increase / Δt
=========== ============= ========================= ============== =======================

Counter increases are reset-aware as in PromQL (a drop means the counter
restarted from 0). For energy (diff) ``diff`` is the joules of the window and
``rate`` the mean power in W; ``min``/``max`` are the lowest and highest
mean power between two scrapes. ``capacity`` comes from the kind (a constant,
or other metrics of the same GPU: FB total = used + free, power limit) and
``pct`` = 100 x current / capacity (rate class: rate / capacity).

    >>> fmt(1.23456), fmt(2.0), fmt(-0.0001)
    ('1.235', '2', '0')
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import msgspec

from benchop.promstats.kinds import MetricClass, MetricKind, kind_of

MIB = 1024 * 1024

Point = tuple[float, float]  # (unix seconds, raw value)


def fmt(value: float) -> str:
    """The string form of a number in a MetricValue."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


class MovingStats(msgspec.Struct, frozen=True, omit_defaults=True):
    """Window statistics as strings; a field is absent when undefined (one sample)."""

    min: str | None = None
    max: str | None = None
    avg: str | None = None
    sum: str | None = None
    diff: str | None = None
    rate: str | None = None


class MetricValue(msgspec.Struct, frozen=True, omit_defaults=True):
    """One metric of one GPU, in the legacy live-stat shape (numbers as strings)."""

    current: str
    unit_hint: str
    capacity: str | None = None
    pct: str | None = None
    stats: MovingStats = MovingStats()

    def to_dict(self) -> dict[str, Any]:
        """Nested JSON form (what benchop writes to status)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out

    def to_legacy(self) -> dict[str, str | None]:
        """Flat legacy form: ``stats.min`` ... keys, absent numbers as None."""
        flat: dict[str, str | None] = {
            "current": self.current,
            "capacity": self.capacity,
            "pct": self.pct,
            "unit_hint": self.unit_hint,
        }
        for name in MovingStats.__struct_fields__:
            flat[f"stats.{name}"] = getattr(self.stats, name)
        return flat


@dataclass(frozen=True, slots=True)
class Numbers:
    """A MetricValue before formatting (floats in ``unit_hint``; rates per second)."""

    current: float
    capacity: float | None = None
    pct: float | None = None
    min: float | None = None
    max: float | None = None
    avg: float | None = None
    sum: float | None = None
    diff: float | None = None
    rate: float | None = None
    t0: float = 0.0  # time of the first sample (unix s)
    t1: float = 0.0  # time of the last sample
    samples: int = 1

    @property
    def span_s(self) -> float:
        return self.t1 - self.t0

    def value(self, unit_hint: str) -> MetricValue:
        def f(x: float | None) -> str | None:
            return None if x is None else fmt(x)

        return MetricValue(
            current=fmt(self.current),
            unit_hint=unit_hint,
            capacity=f(self.capacity),
            pct=f(self.pct),
            stats=MovingStats(
                min=f(self.min),
                max=f(self.max),
                avg=f(self.avg),
                sum=f(self.sum),
                diff=f(self.diff),
                rate=f(self.rate),
            ),
        )


def numbers(kind: MetricKind, points: Sequence[Point], capacity: float | None = None) -> Numbers:
    """The statistics of one metric of one GPU over time-ordered raw ``points``."""
    if not points:
        raise ValueError(f"{kind.name}: no samples")
    ts = [t for t, _ in points]
    vs = [v * kind.scale for _, v in points]
    span = ts[-1] - ts[0]
    if kind.cls is MetricClass.GAUGE:
        diff = vs[-1] - vs[0] if len(vs) > 1 else None
        return Numbers(
            current=vs[-1],
            capacity=capacity,
            pct=_pct(vs[-1], capacity),
            min=min(vs),
            max=max(vs),
            avg=sum(vs) / len(vs),
            sum=sum(vs),
            diff=diff,
            rate=diff / span if diff is not None and span > 0 else None,
            t0=ts[0],
            t1=ts[-1],
            samples=len(ts),
        )
    increments = [b - a if b >= a else b for a, b in pairwise(vs)]
    rates = [d / (t1 - t0) for d, (t0, t1) in zip(increments, pairwise(ts), strict=True) if t1 > t0]
    if not increments or span <= 0:
        return Numbers(current=vs[-1], capacity=capacity, t0=ts[0], t1=ts[-1], samples=len(ts))
    increase = sum(increments)
    rate = increase / span
    return Numbers(
        current=vs[-1],
        capacity=capacity,
        pct=_pct(rate, capacity) if kind.cls is MetricClass.RATE else None,
        min=min(rates),
        max=max(rates),
        avg=rate,  # the time-weighted mean of the per-interval rates
        sum=increase,
        diff=increase,
        rate=rate,
        t0=ts[0],
        t1=ts[-1],
        samples=len(ts),
    )


def _pct(value: float, capacity: float | None) -> float | None:
    if capacity is None or capacity <= 0 or not math.isfinite(capacity):
        return None
    return 100.0 * value / capacity


# --------------------------------------------------------------------------- results -> GPUs


@dataclass(frozen=True, slots=True)
class Series:
    """One Prometheus series: its labels and time-ordered ``(t, raw value)`` points."""

    labels: Mapping[str, str]
    points: tuple[Point, ...]


def parse_result(result: Iterable[Mapping[str, Any]]) -> list[Series]:
    """Series of an API ``result`` list: a matrix (``values``) or a vector (``value``)."""
    out = []
    for row in result:
        raw = row["values"] if "values" in row else [row["value"]]
        points = tuple(sorted((float(t), float(v)) for t, v in raw))
        out.append(Series(labels=dict(row["metric"]), points=points))
    return out


@dataclass(frozen=True, slots=True)
class Gpu:
    """One GPU of a run with the numbers of every queried metric (by Prometheus name)."""

    hostname: str
    index: str
    uuid: str
    model: str
    pod: str | None  # "namespace/pod" when attributed
    numbers: dict[str, Numbers] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.hostname}/{self.index}"

    def values(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """``{short key: MetricValue dict}`` for ``names`` (default: all queried)."""
        out = {}
        for name in self.numbers if names is None else names:
            if name in self.numbers:
                kind = kind_of(name)
                out[kind.key] = self.numbers[name].value(kind.unit_hint).to_dict()
        return out


def _sort_key(key: tuple[str, str]) -> tuple[str, int, str]:
    host, index = key
    return (host, int(index) if index.isdigit() else -1, index)


def gpus(by_metric: Mapping[str, Sequence[Series]]) -> list[Gpu]:
    """Group series by GPU (``Hostname``, ``gpu``), merge a GPU's split series (labels that
    changed in the window), and compute every metric's :class:`Numbers` with its capacity.

    Raises :class:`~benchop.promstats.kinds.UnknownMetricKind` for a metric not in the table.
    """
    kinds = {name: kind_of(name) for name in by_metric}
    merged: dict[tuple[str, str], dict[str, list[Point]]] = {}
    labels: dict[tuple[str, str], tuple[float, Mapping[str, str]]] = {}
    for name, series in by_metric.items():
        for s in series:
            key = (s.labels.get("Hostname", ""), s.labels.get("gpu", ""))
            merged.setdefault(key, {}).setdefault(name, []).extend(s.points)
            last = s.points[-1][0] if s.points else 0.0
            if key not in labels or last >= labels[key][0]:
                labels[key] = (last, s.labels)
    out = []
    for key in sorted(merged, key=_sort_key):
        points = {name: sorted(set(p)) for name, p in merged[key].items()}
        lab = labels[key][1]
        latest = {name: p[-1][1] * kinds[name].scale for name, p in points.items() if p}
        nums = {}
        for name, p in points.items():
            if not p:
                continue
            nums[name] = numbers(kinds[name], p, _capacity(kinds[name], latest))
        pod = f"{lab.get('namespace', '')}/{lab['pod']}" if lab.get("pod") else None
        out.append(
            Gpu(
                hostname=key[0],
                index=key[1],
                uuid=lab.get("UUID", ""),
                model=lab.get("modelName", ""),
                pod=pod,
                numbers=nums,
            )
        )
    return out


def _capacity(kind: MetricKind, latest: Mapping[str, float]) -> float | None:
    cap = kind.capacity
    if cap is None:
        return None
    if cap.fixed is not None:
        return cap.fixed
    if not cap.metrics or any(m not in latest for m in cap.metrics):
        return None  # e.g. no power limit exported: capacity (and pct) absent
    return sum(latest[m] for m in cap.metrics)


# --------------------------------------------------------------------------- rollup

ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
UTIL = "DCGM_FI_DEV_GPU_UTIL"
POWER = "DCGM_FI_DEV_POWER_USAGE"
FB_USED = "DCGM_FI_DEV_FB_USED"


def window_energy(n: Numbers, start: float, end: float) -> float:
    """A counter's increase scaled to ``[start, end]`` the way PromQL's ``increase()`` does:
    each edge gap is filled at the window's mean rate when it is shorter than 1.1 mean
    scrape intervals (a scrape just missed the edge), else by half an interval only (the
    series started or stopped inside the window)."""
    if n.diff is None or n.rate is None or n.samples < 2:
        return 0.0
    interval = n.span_s / (n.samples - 1)
    gaps = [max(0.0, n.t0 - start), max(0.0, end - n.t1)]
    filled = sum(g if g < 1.1 * interval else interval / 2 for g in gaps)
    return n.diff + n.rate * filled


def summary(gpu_list: Sequence[Gpu], window: tuple[float, float] | None = None) -> dict[str, Any]:
    """Run totals over every GPU (not only those shown), as floats.

    ``energyJ`` is the counters' increase between each GPU's first and last
    sample (``coveredS``: the shortest such span); ``powerMeanW`` the sum of
    the GPUs' mean power from the energy counter. With a ``window`` (the
    profiling window), ``energyWindowJ`` is the energy scaled to the whole
    window (:func:`window_energy`), comparable with the baseline acks' END -
    START. ``utilMean`` is the mean over GPUs of their mean utilisation;
    ``powerGaugeMeanW`` the sum of the power gauges' means; ``memPeakBytes``
    the highest framebuffer use seen.
    """
    out: dict[str, Any] = {"gpus": len(gpu_list)}
    energy = [g.numbers[ENERGY] for g in gpu_list if ENERGY in g.numbers]
    energy = [n for n in energy if n.diff is not None and n.rate is not None]
    if energy:
        out["energyJ"] = round(sum(n.diff or 0.0 for n in energy), 3)
        out["powerMeanW"] = round(sum(n.rate or 0.0 for n in energy), 3)
        out["coveredS"] = round(min(n.span_s for n in energy), 3)
        if window is not None:
            out["energyWindowJ"] = round(sum(window_energy(n, *window) for n in energy), 3)
    util = [g.numbers[UTIL].avg for g in gpu_list if UTIL in g.numbers]
    utils = [u for u in util if u is not None]
    if utils:
        out["utilMean"] = round(sum(utils) / len(utils), 3)
    pw = [g.numbers[POWER].avg for g in gpu_list if POWER in g.numbers]
    pws = [p for p in pw if p is not None]
    if pws:
        out["powerGaugeMeanW"] = round(sum(pws), 3)
    mem = [g.numbers[FB_USED].max for g in gpu_list if FB_USED in g.numbers]
    mems = [m for m in mem if m is not None]
    if mems:
        out["memPeakBytes"] = int(max(mems) * MIB)
    return out
