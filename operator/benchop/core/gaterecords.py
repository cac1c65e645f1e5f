"""A closed gate: the coordinator's :class:`GateOutcome` and its record in ``status.gates``.

When a gate closes, the operator (and local mode) persists :func:`gate_record` of its outcome
under ``status.gates.<START|END>``: the bounded facts a restarted operator answers retrying
workers from, and the GPU samples the window's results are computed from
(:func:`acks_from_record`). :func:`profiling_window` is the time between the two gates'
baseline reads, for the Prometheus query of the same window.

    record = gate_record(outcome)            # -> status.gates[outcome.boundary]
    window = profiling_window(status["gates"])   # (start_s, end_s) or None
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from benchagent.wire import BaselineAck, Boundary, GpuSample
from benchop.api.conditions import now_rfc3339

MAX_SAMPLES = 64
"""GPU samples kept per gate in status (bounded status; beyond that GPUs are dropped)."""

GateKey = tuple[str, Boundary]
"""``(phase_id, boundary)``: one gate of a run."""


@dataclass(frozen=True)
class GateOutcome:
    """How one gate closed (or, with ``restored``, what status said about it).

    ``acks`` holds every BaselineAck received in time (successful or not);
    ``missing`` the agents that did not ack by the timeout. The baseline was
    captured when asked for, at least one agent was asked, none is missing
    and every ack succeeded.
    """

    run: str
    phase_id: str
    boundary: Boundary
    start_at_ns: int  # wall clock at which every worker passes the boundary
    baseline: bool  # a baseline handshake was asked for
    baseline_captured: bool
    agents: list[str] = field(default_factory=list)  # agents asked
    acks: list[BaselineAck] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    closed_at_ns: int = 0  # wall clock when the gate closed
    barrier_s: float = 0.0  # first worker's request -> last worker's request
    handshake_s: float = 0.0  # baseline requests sent -> acks collected (or timeout)
    restored: bool = False  # seeded by restore_gate, not closed by this coordinator

    @property
    def key(self) -> GateKey:
        return (self.phase_id, self.boundary)


def _sample_record(s: GpuSample) -> dict[str, Any]:
    return {
        "uuid": s.uuid,
        "index": s.index,
        "timestampNs": s.timestamp_ns,
        "util": s.gpu_util_pct,
        "memUsed": s.mem_used_bytes,
        "powerW": s.power_w,
        "energyMj": s.energy_mj,
        **({} if s.util_integral_pct_s is None else {"utilIntegral": s.util_integral_pct_s}),
    }


def gate_record(outcome: GateOutcome) -> dict[str, Any]:
    """The bounded ``status.gates.<boundary>`` record of a closed gate, written now.

    ``closedAtNs`` (wall clock, when the last ack arrived or the timeout passed) is written
    when known: :func:`gate_instant` falls back on it when no agent sampled. At most
    :data:`MAX_SAMPLES` GPU samples are kept.
    """
    kept = 0
    ack_records = []
    for ack in outcome.acks:
        gpus = []
        for s in ack.samples:
            if s.error is None and kept < MAX_SAMPLES:
                gpus.append(_sample_record(s))
                kept += 1
        rec: dict[str, Any] = {
            "agent": ack.agent,
            "node": ack.node,
            "success": ack.success,
            "simulated": ack.simulated,
            "gpus": gpus,
        }
        if ack.error:
            rec["error"] = ack.error[:200]
        ack_records.append(rec)
    record: dict[str, Any] = {
        "phaseId": outcome.phase_id,
        "startAtNs": outcome.start_at_ns,
        "baseline": outcome.baseline,
        "baselineCaptured": outcome.baseline_captured,
        "agents": sorted(outcome.agents),
        "missing": sorted(outcome.missing),
        "simulated": any(a.simulated for a in outcome.acks),
        "closedAt": now_rfc3339(),
        "acks": ack_records,
    }
    if outcome.closed_at_ns:
        record["closedAtNs"] = outcome.closed_at_ns
    return record


def acks_from_record(record: Mapping[str, Any], boundary: str) -> list[BaselineAck]:
    """The BaselineAcks of a persisted record (only the fields results need are kept)."""
    out = []
    for a in record.get("acks") or []:
        samples = [
            GpuSample(
                index=int(g.get("index", 0)),
                uuid=str(g["uuid"]),
                name="",
                timestamp_ns=int(g["timestampNs"]),
                gpu_util_pct=float(g["util"]),
                mem_copy_util_pct=0.0,
                mem_used_bytes=int(g["memUsed"]),
                mem_total_bytes=0,
                power_w=float(g.get("powerW", 0.0)),
                power_limit_w=0.0,
                energy_mj=int(g["energyMj"]),
                temperature_c=0.0,
                sm_clock_mhz=0,
                mem_clock_mhz=0,
                util_integral_pct_s=(
                    float(g["utilIntegral"]) if g.get("utilIntegral") is not None else None
                ),
            )
            for g in a.get("gpus") or []
        ]
        out.append(
            BaselineAck(
                request_id="",
                run="",
                phase_id=str(record.get("phaseId", "")),
                boundary="START" if boundary == "START" else "END",
                agent=str(a["agent"]),
                node=str(a.get("node", "")),
                success=bool(a.get("success")),
                error=a.get("error"),
                simulated=bool(a.get("simulated")),
                samples=samples,
            )
        )
    return out


def gate_instant(record: Mapping[str, Any]) -> float | None:
    """When a closed gate's baselines were read (unix s), or None if the record cannot say.

    The mean of its GPU samples' timestamps when agents sampled (so a Prometheus window between
    two gates covers exactly the acks' END - START window); else when the gate closed
    (``closedAtNs``); else the instant the workers were released (``startAtNs``).
    """
    stamps = [
        int(g["timestampNs"])
        for a in record.get("acks") or []
        for g in a.get("gpus") or []
        if g.get("timestampNs")
    ]
    if stamps:
        return sum(stamps) / len(stamps) / 1e9
    for key in ("closedAtNs", "startAtNs"):
        if record.get(key):
            return int(record[key]) / 1e9
    return None


def profiling_window(gates: Mapping[str, Any]) -> tuple[float, float] | None:
    """``(start, end)`` in unix seconds between the START and END gates, None until both closed
    (or when the instants are unknown or not in order)."""
    start, end = gates.get("START"), gates.get("END")
    if not start or not end:
        return None
    t0, t1 = gate_instant(start), gate_instant(end)
    if t0 is None or t1 is None or t1 <= t0:
        return None
    return t0, t1
