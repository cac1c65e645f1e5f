"""Metric kinds: how each GPU metric is read (gauge, rate or diff), its unit and capacity.

The table :data:`KINDS` is closed on purpose: a metric that is not in it has
no known meaning, and :func:`kind_of` raises :class:`UnknownMetricKind`
instead of guessing (or returning None). Unit hints come from
:data:`UNIT_HINTS` first and then from a naming convention
(:func:`resolve_unit_hint`), so a new table row only needs a hint when its
name says nothing.

    >>> kind_of("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION").cls
    <MetricClass.DIFF: 'diff'>
    >>> resolve_unit_hint("DCGM_FI_DEV_GPU_TEMP")
    'celsius'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from benchagent.dcgm import DCGM_FIELDS


class MetricClass(StrEnum):
    """How a metric's samples turn into numbers.

    - ``gauge``: a level (util %, memory, temperature, clocks, power); stats over the samples.
    - ``rate``: a counter whose headline is its per-second rate over the window.
    - ``diff``: a counter whose headline is its increase over the window
      (energy: joules in the window; its rate is the mean power).
    """

    GAUGE = "gauge"
    RATE = "rate"
    DIFF = "diff"


class UnknownMetricKind(LookupError):
    """A metric name that is not in :data:`KINDS`; the message lists the known ones."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"unknown metric kind {name!r}: not in benchop.promstats.kinds.KINDS "
            f"(known: {', '.join(sorted(KINDS))})"
        )


@dataclass(frozen=True, slots=True)
class Capacity:
    """Where a metric's capacity comes from: a constant (``fixed``), or the sum of the
    latest values of other metrics of the same GPU (``metrics``)."""

    fixed: float | None = None
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MetricKind:
    """One row of the table. ``scale`` turns raw values into ``unit_hint`` (mJ -> J)."""

    name: str  # Prometheus metric name
    key: str  # short key in benchop's dicts and tables
    cls: MetricClass
    unit_hint: str
    scale: float = 1.0
    capacity: Capacity | None = None


UNIT_HINTS: dict[str, str] = {
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "joules",  # exported in mJ, scaled by 0.001
    "DCGM_FI_DEV_POWER_USAGE": "watts",
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": "watts",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": "count",
}
"""Explicit unit hints; everything else goes through the naming convention."""

_CONVENTION: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), hint)
    for pattern, hint in (
        (r"_util$", "percent"),
        (r"_temp$", "celsius"),
        (r"_clock$", "MHz"),
        (r"_power(_usage)?$", "watts"),
        (r"_fb_", "MiB"),
        (r"energy", "joules"),
        (r"_bytes(_total)?$", "bytes"),
        (r"_seconds(_total)?$", "seconds"),
    )
)


def resolve_unit_hint(name: str) -> str:
    """The unit hint of ``name``: the table, else the naming convention, else ``""``.

    >>> resolve_unit_hint("DCGM_FI_DEV_ENC_UTIL")
    'percent'
    """
    if name in UNIT_HINTS:
        return UNIT_HINTS[name]
    for pattern, hint in _CONVENTION:
        if pattern.search(name):
            return hint
    return ""


def _kind(
    name: str,
    key: str,
    cls: MetricClass,
    *,
    scale: float = 1.0,
    capacity: Capacity | None = None,
) -> MetricKind:
    hint = resolve_unit_hint(name)
    if not hint:  # a table row must say its unit: fail at import, not at query time
        raise ValueError(f"no unit hint for {name}: add it to UNIT_HINTS")
    return MetricKind(name, key, cls, hint, scale, capacity)


_PERCENT = Capacity(fixed=100.0)
_FB = Capacity(metrics=("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE"))
G, R, D = MetricClass.GAUGE, MetricClass.RATE, MetricClass.DIFF

KINDS: dict[str, MetricKind] = {
    k.name: k
    for k in (
        _kind("DCGM_FI_DEV_GPU_UTIL", "gpu_util", G, capacity=_PERCENT),
        _kind("DCGM_FI_DEV_MEM_COPY_UTIL", "mem_copy_util", G, capacity=_PERCENT),
        _kind("DCGM_FI_DEV_ENC_UTIL", "enc_util", G, capacity=_PERCENT),
        _kind("DCGM_FI_DEV_DEC_UTIL", "dec_util", G, capacity=_PERCENT),
        _kind("DCGM_FI_DEV_FB_USED", "fb_used", G, capacity=_FB),
        _kind("DCGM_FI_DEV_FB_FREE", "fb_free", G, capacity=_FB),
        _kind(
            "DCGM_FI_DEV_POWER_USAGE",
            "power",
            G,
            capacity=Capacity(metrics=("DCGM_FI_DEV_POWER_MGMT_LIMIT",)),
        ),
        _kind("DCGM_FI_DEV_POWER_MGMT_LIMIT", "power_limit", G),
        _kind("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "energy", D, scale=0.001),
        _kind("DCGM_FI_DEV_GPU_TEMP", "temp", G),
        _kind("DCGM_FI_DEV_MEMORY_TEMP", "mem_temp", G),
        _kind("DCGM_FI_DEV_SM_CLOCK", "sm_clock", G),
        _kind("DCGM_FI_DEV_MEM_CLOCK", "mem_clock", G),
        _kind("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "pcie_replays", R),
    )
}
"""Every metric benchop knows, by Prometheus name."""

BY_KEY: dict[str, MetricKind] = {k.key: k for k in KINDS.values()}

ALL_AGENT_METRICS: tuple[str, ...] = tuple(f.name for f in DCGM_FIELDS)
"""What the benchop agent exports (the exporter's own table; dcgm-exporter's defaults
use the same names): one query each. Each must have a kind in :data:`KINDS`."""


def kind_of(name: str) -> MetricKind:
    """The kind of metric ``name``; raises :class:`UnknownMetricKind` when unknown."""
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownMetricKind(name) from None


def kinds_for(names: tuple[str, ...] | list[str]) -> list[MetricKind]:
    """:func:`kind_of` for each name, plus the metrics their capacities need, in order."""
    out: dict[str, MetricKind] = {}
    for name in names:
        kind = kind_of(name)
        out[name] = kind
        for dep in kind.capacity.metrics if kind.capacity else ():
            out.setdefault(dep, kind_of(dep))
    return list(out.values())
