"""dcgm-exporter's metric families: names, types, help, and how to read each off a GpuSample.

The one table of names: the exporter renders it, ``benchop.promstats`` queries
it. Kept apart from the exporter so readers of the names import nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchagent.wire import GpuSample

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Field:
    """One dcgm-exporter metric family and how to read it off a GpuSample."""

    name: str
    type: str  # gauge | counter, as in dcgm-exporter's default-counters.csv
    help: str
    value: Callable[[GpuSample], float]


DCGM_FIELDS: tuple[Field, ...] = (
    Field(
        "DCGM_FI_DEV_SM_CLOCK", "gauge", "SM clock frequency (in MHz).", lambda s: s.sm_clock_mhz
    ),
    Field(
        "DCGM_FI_DEV_MEM_CLOCK",
        "gauge",
        "Memory clock frequency (in MHz).",
        lambda s: s.mem_clock_mhz,
    ),
    Field("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C).", lambda s: s.temperature_c),
    Field("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W).", lambda s: s.power_w),
    Field(
        "DCGM_FI_DEV_POWER_MGMT_LIMIT",
        "gauge",
        "Power management limit (in W).",
        lambda s: s.power_limit_w,
    ),
    Field(
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
        "counter",
        "Total energy consumption since boot (in mJ).",
        lambda s: s.energy_mj,
    ),
    Field("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %).", lambda s: s.gpu_util_pct),
    Field(
        "DCGM_FI_DEV_MEM_COPY_UTIL",
        "gauge",
        "Memory utilization (in %).",
        lambda s: s.mem_copy_util_pct,
    ),
    Field(
        "DCGM_FI_DEV_FB_FREE",
        "gauge",
        "Framebuffer memory free (in MiB).",
        lambda s: (s.mem_total_bytes - s.mem_used_bytes) // MIB,
    ),
    Field(
        "DCGM_FI_DEV_FB_USED",
        "gauge",
        "Framebuffer memory used (in MiB).",
        lambda s: s.mem_used_bytes // MIB,
    ),
)
