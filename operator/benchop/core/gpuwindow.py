"""GPU results of a profiling window from the agents' START and END baseline acks.

Used by local mode and the operator, on the acks persisted in ``status.gates``
(:func:`gpu_from_status`) or as the coordinator returned them (:func:`gpu_results`).

- energy: for every GPU sampled by a successful ack at both START and END,
  ``END.energy_mj - START.energy_mj`` (NVML's total-energy counter), summed
  over GPUs, in joules — exact for the window whatever the sampling rate. A GPU
  whose counter went backwards (driver reload, GPU reset: NVML counts from
  zero again) is left out of energy, power and J/token and named in
  ``missing_agents`` as ``"<agent>/<uuid>: energy counter reset"``; energy is
  never negative. With no GPU left, energy, power and J/token are None;
- power mean: that energy divided by the window (END - START sample time),
  summed over GPUs — exact as well;
- util mean: per GPU, ``(END - START) / window`` of ``util_integral_pct_s``,
  the agent sampler's step integral of utilisation over its ticks (each tick's
  value held until the next; a baseline read extends it to its own time), so
  the mean over every tick in the window, not two points. A GPU falls back to
  the two-point estimate (mean of START and END utilisation) when either
  sample lacks the integral (an older agent, acks restored from status) or
  the integral went backwards or gives more than 100 % (the agent restarted
  in the window). ``GpuResults`` does not say which method was used; results
  from current agents in one uninterrupted window use the integral. The
  agent's Prometheus series give the sampled curve (``results.gpu.prometheus``);
- memory peak: max of the START and END memory used (two points);
- joules per output token: energy / output tokens of the profiling phase;
- ``simulated`` is true when any ack came from a simulated reader: such numbers
  must never pass as real ones.

>>> gpu_results([], [], output_tokens=10) is None
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from benchagent.wire import BaselineAck, GpuSample
from benchop.api.models import GpuResults
from benchop.core.gaterecords import acks_from_record


def _by_gpu(acks: Iterable[BaselineAck]) -> dict[tuple[str, str], GpuSample]:
    return {(a.agent, s.uuid): s for a in acks if a.success for s in a.samples if s.error is None}


def gpu_results(
    start: Sequence[BaselineAck],
    end: Sequence[BaselineAck],
    *,
    output_tokens: int,
    expected_agents: Iterable[str] = (),
) -> GpuResults | None:
    """Window GPU numbers, or None when no GPU was sampled at both boundaries."""
    first, last = _by_gpu(start), _by_gpu(end)
    both = sorted(first.keys() & last.keys())
    acked = sorted({agent for agent, _ in both})
    missing = sorted(set(expected_agents) - set(acked))
    simulated = any(a.simulated for a in (*start, *end))
    if not both:
        if not missing and not start and not end:
            return None
        return GpuResults(gpus=0, simulated=simulated, agents=acked, missing_agents=missing)
    energy_mj = 0
    energy_gpus = 0
    power_w = 0.0
    util = 0.0
    mem_peak = 0
    reset: list[str] = []
    for key in both:
        s, e = first[key], last[key]
        window_s = (e.timestamp_ns - s.timestamp_ns) / 1e9
        delta_mj = e.energy_mj - s.energy_mj
        if delta_mj < 0:
            reset.append(f"{key[0]}/{key[1]}: energy counter reset")
        else:
            energy_mj += delta_mj
            energy_gpus += 1
            if window_s > 0:
                power_w += delta_mj / 1000 / window_s
        util += util_mean(s, e)
        mem_peak = max(mem_peak, s.mem_used_bytes, e.mem_used_bytes)
    energy_j = energy_mj / 1000 if energy_gpus else None
    return GpuResults(
        util_mean=round(util / len(both), 3),
        power_mean_w=round(power_w, 3) if energy_gpus else None,
        energy_j=round(energy_j, 3) if energy_j is not None else None,
        joules_per_output_token=(
            round(energy_j / output_tokens, 6) if energy_j is not None and output_tokens else None
        ),
        mem_peak_bytes=mem_peak,
        gpus=len(both),
        simulated=simulated,
        agents=acked,
        missing_agents=missing + reset,
    )


def util_mean(start: GpuSample, end: GpuSample) -> float:
    """One GPU's mean utilisation over the window: integral if usable, else two-point."""
    window_s = (end.timestamp_ns - start.timestamp_ns) / 1e9
    a, b = start.util_integral_pct_s, end.util_integral_pct_s
    if a is not None and b is not None and window_s > 0:
        mean = (b - a) / window_s
        if 0 <= mean <= 100 + 1e-6:
            return mean
    return (start.gpu_util_pct + end.gpu_util_pct) / 2


def gpu_from_status(gates: Mapping[str, Any], *, output_tokens: int) -> GpuResults | None:
    """``results.gpu`` from ``status.gates`` (None without both gates or without agents)."""
    start, end = gates.get("START"), gates.get("END")
    if not start or not end:
        return None
    expected = set(start.get("agents") or []) | set(end.get("agents") or [])
    if not expected:
        return None
    return gpu_results(
        acks_from_record(start, "START"),
        acks_from_record(end, "END"),
        output_tokens=output_tokens,
        expected_agents=sorted(expected),
    )
