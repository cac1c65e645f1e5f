"""GPU numbers of the profiling window from the START/END baseline acks, as the coordinator
returned them or as read back from the gate records in ``status.gates``."""

import json

import msgspec
import pytest

from benchagent.wire import BaselineAck, GpuSample
from benchop.core.gaterecords import GateOutcome, gate_instant, gate_record, profiling_window
from benchop.core.gpuwindow import gpu_from_status, gpu_results


def sample(
    uuid: str,
    t_s: float,
    energy_mj: int,
    util: float = 50.0,
    mem: int = 1000,
    integral: float | None = None,
) -> GpuSample:
    return GpuSample(
        index=0,
        uuid=uuid,
        name="sim",
        timestamp_ns=int(t_s * 1e9),
        gpu_util_pct=util,
        mem_copy_util_pct=0.0,
        mem_used_bytes=mem,
        mem_total_bytes=10_000,
        power_w=0.0,
        power_limit_w=700.0,
        energy_mj=energy_mj,
        temperature_c=40.0,
        sm_clock_mhz=1,
        mem_clock_mhz=1,
        util_integral_pct_s=integral,
    )


def ack(agent: str, boundary: str, *samples: GpuSample, ok: bool = True, sim: bool = False):
    return BaselineAck(
        request_id="r",
        run="run",
        phase_id="profiling",
        boundary=boundary,  # type: ignore[arg-type]
        agent=agent,
        node="n",
        success=ok,
        simulated=sim,
        samples=list(samples),
    )


def test_energy_and_power_are_exact_end_minus_start_over_gpus():
    start = [ack("a", "START", sample("g0", 10, 1_000_000), sample("g1", 10, 5_000_000))]
    end = [ack("a", "END", sample("g0", 20, 3_000_000, util=70), sample("g1", 20, 6_000_000))]
    res = gpu_results(start, end, output_tokens=1500)
    assert res is not None
    assert res.energy_j == 3000.0  # (2000 + 1000) J
    assert res.power_mean_w == 300.0  # 200 W + 100 W
    assert res.joules_per_output_token == 2.0
    assert res.util_mean == 55.0  # g0 (50+70)/2 = 60, g1 50 -> mean 55
    assert res.gpus == 2 and res.agents == ["a"] and res.missing_agents == []
    assert res.simulated is False


def test_gpu_missing_at_one_boundary_and_failed_acks_are_left_out():
    start = [ack("a", "START", sample("g0", 0, 0)), ack("b", "START", sample("h0", 0, 0))]
    end = [ack("a", "END", sample("g0", 1, 500)), ack("b", "END", ok=False)]
    res = gpu_results(start, end, output_tokens=0, expected_agents=["a", "b", "c"])
    assert res is not None
    assert res.gpus == 1 and res.energy_j == 0.5
    assert res.joules_per_output_token is None
    assert res.missing_agents == ["b", "c"]


def test_simulated_acks_mark_the_results():
    start = [ack("a", "START", sample("g0", 0, 0), sim=True)]
    end = [ack("a", "END", sample("g0", 1, 1000), sim=True)]
    res = gpu_results(start, end, output_tokens=1)
    assert res is not None and res.simulated is True


def test_no_agents_at_all_gives_none_but_missing_agents_are_reported():
    assert gpu_results([], [], output_tokens=5) is None
    res = gpu_results([], [], output_tokens=5, expected_agents=["a"])
    assert res is not None and res.gpus == 0 and res.missing_agents == ["a"]


def with_integral(s: GpuSample, integral: float | None) -> GpuSample:
    return msgspec.structs.replace(s, util_integral_pct_s=integral)


def test_util_mean_is_the_window_mean_of_the_integral_when_both_samples_carry_it():
    # g0: 10 s window, integral 200 -> 800 %·s: 60 % mean (two points would say 30 %).
    start = [ack("a", "START", with_integral(sample("g0", 10, 0, util=10), 200.0))]
    end = [ack("a", "END", with_integral(sample("g0", 20, 0, util=50), 800.0))]
    res = gpu_results(start, end, output_tokens=1)
    assert res is not None and res.util_mean == 60.0


@pytest.mark.parametrize(
    ("start_integral", "end_integral"),
    [(None, 800.0), (200.0, None), (900.0, 100.0), (0.0, 2000.0)],
    ids=["start-unknown", "end-unknown", "went-backwards", "over-100-pct"],
)
def test_util_mean_falls_back_to_two_points(
    start_integral: float | None, end_integral: float | None
):
    start = [ack("a", "START", with_integral(sample("g0", 10, 0, util=10), start_integral))]
    end = [ack("a", "END", with_integral(sample("g0", 20, 0, util=50), end_integral))]
    res = gpu_results(start, end, output_tokens=1)
    assert res is not None and res.util_mean == 30.0


def test_gpu_whose_energy_counter_went_backwards_is_dropped_from_energy():
    start = [ack("a", "START", sample("g0", 10, 1_000_000), sample("g1", 10, 9_000_000))]
    end = [ack("a", "END", sample("g0", 20, 3_000_000), sample("g1", 20, 4_000))]  # g1 reset
    res = gpu_results(start, end, output_tokens=1000, expected_agents=["a"])
    assert res is not None
    assert res.energy_j == 2000.0 and res.power_mean_w == 200.0  # g0 only, never negative
    assert res.joules_per_output_token == 2.0
    assert res.gpus == 2 and res.util_mean == 50.0  # utilisation of both is still valid
    assert res.missing_agents == ["a/g1: energy counter reset"]

    only = gpu_results(start[:1], [ack("a", "END", sample("g1", 20, 4_000))], output_tokens=5)
    assert only is not None and only.gpus == 1
    assert only.energy_j is None and only.power_mean_w is None
    assert only.joules_per_output_token is None
    assert only.missing_agents == ["a/g1: energy counter reset"]


# --------------------------------------------------------------------------- gate records


def closed(
    boundary: str,
    acks: list[BaselineAck],
    *,
    start_at_ns: int = 1,
    baseline: bool = True,
    agents: tuple[str, ...] = ("agent-a",),
    closed_at_ns: int = 0,
) -> dict[str, object]:
    """The ``status.gates`` record of a gate closed with these acks, every agent answering."""
    outcome = GateOutcome(
        run="ns.r",
        phase_id="profiling",
        boundary=boundary,  # type: ignore[arg-type]
        start_at_ns=start_at_ns,
        baseline=baseline,
        baseline_captured=baseline,
        agents=list(agents),
        acks=acks,
        closed_at_ns=closed_at_ns,
    )
    return gate_record(outcome)


def test_gate_records_persist_what_gpu_results_need() -> None:
    start, end = (
        [ack("agent-a", b, sample("g0", t, e0, u0), sample("g1", t, e1, u1), sim=True)]
        for b, t, e0, u0, e1, u1 in (
            ("START", 10, 1_000_000, 50, 2_000_000, 70),
            ("END", 20, 3_000_000, 90, 2_500_000, 10),
        )
    )
    gates = {
        "START": closed("START", start, start_at_ns=1),
        "END": closed("END", end, start_at_ns=2),
    }
    json.dumps(gates)  # JSON-ready
    from_status = gpu_from_status(gates, output_tokens=100)
    direct = gpu_results(start, end, output_tokens=100, expected_agents=["agent-a"])
    assert from_status == direct
    assert from_status is not None and from_status.energy_j == 2500.0  # (2000 + 500) J
    assert from_status.joules_per_output_token == 25.0 and from_status.simulated


def test_gate_records_keep_the_util_integral_for_the_window_mean() -> None:
    start = [ack("agent-a", "START", sample("g0", 10, 0, 50, integral=1_000.0))]
    end = [ack("agent-a", "END", sample("g0", 20, 1_000, 50, integral=1_300.0))]
    gates = {b: closed(b, acks) for b, acks in (("START", start), ("END", end))}
    from_status = gpu_from_status(json.loads(json.dumps(gates)), output_tokens=10)
    assert from_status is not None
    assert from_status.util_mean == 30.0  # (1300 - 1000) pct*s over 10 s, not (50 + 50) / 2
    assert from_status == gpu_results(start, end, output_tokens=10, expected_agents=["agent-a"])


def test_profiling_window_is_between_the_gates_baseline_reads() -> None:
    acks = [ack("agent-a", "START", sample("g0", 10.0, 1, 0), sample("g1", 10.2, 1, 0))]
    rec = {"START": closed("START", acks, start_at_ns=int(11e9), closed_at_ns=int(10.5e9))}
    assert rec["START"]["closedAtNs"] == int(10.5e9)
    assert gate_instant(rec["START"]) == 10.1  # the mean of the samples' stamps
    assert profiling_window(rec) is None  # END not closed yet
    # no agents: when the gate closed; an older record without closedAtNs: startAtNs
    rec["END"] = closed(
        "END", [], start_at_ns=int(25e9), baseline=False, agents=(), closed_at_ns=int(24e9)
    )
    assert profiling_window(rec) == (10.1, 24.0)
    del rec["END"]["closedAtNs"]
    assert profiling_window(rec) == (10.1, 25.0)
    assert profiling_window({"START": rec["END"], "END": rec["START"]}) is None  # not in order
    assert gate_instant({"acks": []}) is None
