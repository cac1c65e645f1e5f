"""GPU results of a profiling window from the agents' START and END baseline acks.

Pure; used by local mode and the operator.

- energy: for every GPU sampled by a successful ack at both START and END,
  ``END.energy_mj - START.energy_mj`` (NVML's total-energy counter), summed
  over GPUs, in joules — exact for the window whatever the sampling rate;
- power mean: that energy divided by the window (END - START sample time),
  summed over GPUs — exact as well;
- util mean and memory peak: from the two samples only (mean of START and END
  utilisation, max of their memory used). A two-point estimate: the agent's
  Prometheus series give the sampled curve (``results.gpu.prometheus``);
- joules per output token: energy / output tokens of the profiling phase;
- ``simulated`` is true when any ack came from a simulated reader: such numbers
  must never pass as real ones.

>>> gpu_results([], [], output_tokens=10) is None
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from benchagent.wire import BaselineAck, GpuSample
from benchop.api.models import GpuResults


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
    power_w = 0.0
    util = 0.0
    mem_peak = 0
    for key in both:
        s, e = first[key], last[key]
        delta_mj = e.energy_mj - s.energy_mj
        window_s = (e.timestamp_ns - s.timestamp_ns) / 1e9
        energy_mj += delta_mj
        if window_s > 0:
            power_w += delta_mj / 1000 / window_s
        util += (s.gpu_util_pct + e.gpu_util_pct) / 2
        mem_peak = max(mem_peak, s.mem_used_bytes, e.mem_used_bytes)
    energy_j = energy_mj / 1000
    return GpuResults(
        util_mean=round(util / len(both), 3),
        power_mean_w=round(power_w, 3),
        energy_j=round(energy_j, 3),
        joules_per_output_token=round(energy_j / output_tokens, 6) if output_tokens else None,
        mem_peak_bytes=mem_peak,
        gpus=len(both),
        simulated=simulated,
        agents=acked,
        missing_agents=missing,
    )
