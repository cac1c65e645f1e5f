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

import sys
from typing import Annotated, Literal

import msgspec

Boundary = Literal["START", "END"]
SnapshotState = Literal["LIVE", "DRAINING", "COMPLETE"]

# Ranges checked when a frame is decoded: a value outside them makes the frame malformed
# (counted and dropped by the codec) instead of a NaN, an infinity or an integer past int64
# reaching status, which is JSON that the API server stores as int64.
Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
"""A float that is a number (NaN and infinities are refused)."""
NonNegative = Annotated[float, msgspec.Meta(ge=0.0, le=sys.float_info.max)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class GpuSample(msgspec.Struct, frozen=True, kw_only=True):
    """One reading of one GPU (NVML or simulated)."""

    index: Count
    uuid: str
    name: str
    timestamp_ns: Int64  # time.time_ns() when read
    gpu_util_pct: Finite
    mem_copy_util_pct: Finite
    mem_used_bytes: Count
    mem_total_bytes: Count
    power_w: Finite
    power_limit_w: Finite
    energy_mj: Count  # NVML total energy counter since driver load, millijoules
    temperature_c: Finite
    sm_clock_mhz: Count
    mem_clock_mhz: Count
    error: str | None = None  # per-GPU read error; other fields are then zero
    # Integral of gpu_util_pct over time (%·s) since the agent's sampler started: a step
    # function of its ticks, extended to ``timestamp_ns``; None when unknown (old agents,
    # errors, not sampled yet). (END - START) / window is the window's mean utilisation.
    util_integral_pct_s: Finite | None = None


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

    count: Count = 0
    sum: int = 0
    m2: Finite = 0.0
    min: Int64 = 0
    max: Int64 = 0
    buckets: dict[Int64, Count] = msgspec.field(default_factory=dict)
    values: bytes | None = None

    def __post_init__(self) -> None:
        if self.values is not None and len(self.values) % 8:
            raise ValueError(f"values: {len(self.values)} bytes is not a whole number of int64")


class WorkerAbort(msgspec.Struct, kw_only=True):
    """Why a worker ended its run early: a failed preflight check (``TargetUnreachable``,
    ``ModelNotFound``, ``TargetError``, ``SecretError``) or too many failed requests
    (``FailureRatioExceeded``), with a message naming the target."""

    reason: str
    message: str


class TimelineRow(msgspec.Struct, array_like=True):
    """One second of a worker's profiling requests, by the second each request ended.

    ``t_s`` is that wall-clock second (epoch); the latency histograms use the sparse
    bucket keys of the live histogram (nanoseconds, see benchop.metrics.buckets), so rows
    of different workers merge by adding counts.
    """

    t_s: Int64
    requests: Count = 0
    ok: Count = 0
    good: Count = 0
    input_tokens: Count = 0
    output_tokens: Count = 0
    ttft: dict[Int64, Count] = msgspec.field(default_factory=dict)
    itl: dict[Int64, Count] = msgspec.field(default_factory=dict)
    e2e: dict[Int64, Count] = msgspec.field(default_factory=dict)


class MetricsSnapshot(msgspec.Struct, tag="MetricsSnapshot", tag_field="kind", kw_only=True):
    """Worker -> operator: live and final metrics of one worker.

    States go LIVE -> DRAINING -> COMPLETE; COMPLETE is always the last
    snapshot a worker publishes and carries raw values.
    """

    run: str
    worker: Count
    seq: Count
    state: SnapshotState
    phase: str  # starting | warmup | profiling | done
    time_ns: Int64
    elapsed_s: NonNegative  # seconds since profiling started (0 before)
    n_pending: Count  # requests in flight
    counters: dict[str, Count] = msgspec.field(default_factory=dict)
    gauges: dict[str, Finite] = msgspec.field(default_factory=dict)
    series: dict[str, SeriesSummary] = msgspec.field(default_factory=dict)
    interrupted: bool = False  # stopped by a signal before the phase's bound
    abort: WorkerAbort | None = None  # the worker ended the run early (every snapshot after)
    warnings: list[str] = msgspec.field(default_factory=list)  # e.g. the preflight's
    # COMPLETE only: per-second rows of the worker's profiling records (None: not built)
    timeline: list[TimelineRow] | None = None
    # The worker's attempt (1 for its first start, +1 per resume, across pods) and its
    # incarnation (the pod's uid: the same across container restarts in one pod). A worker's
    # snapshots are cumulative: they include what the earlier pods of its index recorded.
    attempt: Count = 0
    incarnation: str = ""


ResumeStatus = Literal["ready", "wait", "denied"]


class ResumeRequest(msgspec.Struct, tag="ResumeRequest", tag_field="kind", kw_only=True):
    """Worker -> coordinator (on the gate socket), once at start: what did the earlier
    pods of my index complete? Idempotent."""

    run: str
    worker: Count
    workers: Count
    incarnation: str  # the asking pod's uid


class ResumeReply(msgspec.Struct, tag="ResumeReply", tag_field="kind", kw_only=True):
    """Coordinator -> worker: ``ready`` with the last COMPLETE snapshot of the worker's index
    (``base``; None: nothing to resume), ``wait`` while an earlier pod of the index still
    runs (ask again), ``denied`` for a run the coordinator does not know (start afresh)."""

    run: str
    worker: Count
    status: ResumeStatus
    base: MetricsSnapshot | None = None
    reason: str = ""


Message = (
    BaselineRequest
    | BaselineAck
    | GateRequest
    | GateGranted
    | GateDenied
    | MetricsSnapshot
    | ResumeRequest
    | ResumeReply
)
