"""Wire messages of benchop: every struct that crosses a ZMQ socket.

Workers, the gate coordinator (operator or local mode) and node agents speak
this one protocol. It lives in the agent package because the agent must not
import the operator's package, while the operator may import the agent's wire
protocol.

Every message is a msgspec struct tagged by ``kind``; :data:`Message` is the
one tagged union every reader decodes through. Latencies are integer
nanoseconds, energy is integer millijoules (NVML's counter unit).
"""

from __future__ import annotations

from typing import Literal

import msgspec

Boundary = Literal["START", "END"]
SnapshotState = Literal["LIVE", "DRAINING", "COMPLETE"]


class GpuSample(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of one GPU (NVML or simulated)."""

    index: int
    uuid: str
    name: str
    timestamp_ns: int  # time.time_ns() when read
    gpu_util_pct: float
    mem_copy_util_pct: float
    mem_used_bytes: int
    mem_total_bytes: int
    power_w: float
    power_limit_w: float
    energy_mj: int  # NVML total energy counter since driver load, millijoules
    temperature_c: float
    sm_clock_mhz: int
    mem_clock_mhz: int
    error: str | None = None  # per-GPU read error; other fields are then zero
    # Integral of gpu_util_pct over time (%·s) since the agent's sampler started: a step
    # function of its ticks, extended to ``timestamp_ns``; None when unknown (old agents,
    # errors, not sampled yet). (END - START) / window is the window's mean utilisation.
    util_integral_pct_s: float | None = None


class BaselineRequest(msgspec.Struct, tag="BaselineRequest", tag_field="kind", kw_only=True):
    """Coordinator -> agent: take a fresh sample of these GPUs now."""

    request_id: str
    run: str
    phase_id: str
    boundary: Boundary
    gpus: list[str] | None = None  # GPU UUIDs; None means every GPU of the node


class BaselineAck(msgspec.Struct, tag="BaselineAck", tag_field="kind", kw_only=True):
    """Agent -> coordinator: the fresh samples, or why there are none."""

    request_id: str
    run: str
    phase_id: str
    boundary: Boundary
    agent: str
    node: str
    success: bool
    error: str | None = None
    simulated: bool = False  # True when the numbers come from SimulatedReader
    samples: list[GpuSample] = msgspec.field(default_factory=list)


class GateRequest(msgspec.Struct, tag="GateRequest", tag_field="kind", kw_only=True):
    """Worker -> coordinator: I reached this phase boundary; may I pass?"""

    run: str
    phase_id: str
    boundary: Boundary
    worker: int  # worker index, 0..workers-1
    workers: int  # how many workers the worker believes the run has


class GateGranted(msgspec.Struct, tag="GateGranted", tag_field="kind", kw_only=True):
    """Coordinator -> worker: pass the boundary at ``start_at_ns`` (wall clock)."""

    run: str
    phase_id: str
    boundary: Boundary
    worker: int
    start_at_ns: int
    baseline_captured: bool
    missing: list[str] = msgspec.field(default_factory=list)  # agents that did not ack


class GateDenied(msgspec.Struct, tag="GateDenied", tag_field="kind", kw_only=True):
    """Coordinator -> worker: this gate cannot be granted (unknown or ended run)."""

    run: str
    phase_id: str
    boundary: Boundary
    worker: int
    reason: str


class SeriesSummary(msgspec.Struct, kw_only=True):
    """A series of integer values (ns, tokens) as it crosses the wire.

    ``sum`` is exact; ``m2`` is the sum of squared deviations from the mean
    (merged with Chan's formula); ``buckets`` is the sparse live histogram
    (bucket index -> count, see benchop.metrics); ``values`` holds the raw
    values as little-endian int64 bytes when the sender includes them (final
    snapshots), which makes cross-worker percentiles exact.
    """

    count: int = 0
    sum: int = 0
    m2: float = 0.0
    min: int = 0
    max: int = 0
    buckets: dict[int, int] = msgspec.field(default_factory=dict)
    values: bytes | None = None


class WorkerAbort(msgspec.Struct, kw_only=True):
    """Why a worker ended its run early: a failed preflight check (``TargetUnreachable``,
    ``ModelNotFound``, ``TargetError``, ``SecretError``) or too many failed requests
    (``FailureRatioExceeded``), with a message naming the target."""

    reason: str
    message: str


class MetricsSnapshot(msgspec.Struct, tag="MetricsSnapshot", tag_field="kind", kw_only=True):
    """Worker -> operator: live and final metrics of one worker.

    States go LIVE -> DRAINING -> COMPLETE; COMPLETE is always the last
    snapshot a worker publishes and carries raw values.
    """

    run: str
    worker: int
    seq: int
    state: SnapshotState
    phase: str  # starting | warmup | profiling | done
    time_ns: int
    elapsed_s: float  # seconds since profiling started (0 before)
    n_pending: int  # requests in flight
    counters: dict[str, int] = msgspec.field(default_factory=dict)
    gauges: dict[str, float] = msgspec.field(default_factory=dict)
    series: dict[str, SeriesSummary] = msgspec.field(default_factory=dict)
    interrupted: bool = False  # stopped by a signal before the phase's bound
    abort: WorkerAbort | None = None  # the worker ended the run early (every snapshot after)
    warnings: list[str] = msgspec.field(default_factory=list)  # e.g. the preflight's


Message = BaselineRequest | BaselineAck | GateRequest | GateGranted | GateDenied | MetricsSnapshot
