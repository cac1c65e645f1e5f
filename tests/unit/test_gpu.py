"""GPU readers: NVML mapping and errors (against a fake pynvml), simulated model."""

from __future__ import annotations

import logging

import pytest
from fake_pynvml import FakeNvml
from hypothesis import given, settings
from hypothesis import strategies as st

from benchagent.gpu import GpuBackendError, NvmlReader, SimulatedReader, open_reader


def test_nvml_reader_maps_units_and_fields() -> None:
    fake = FakeNvml(count=2)
    reader = NvmlReader(fake)
    samples = reader.read()
    assert [s.index for s in samples] == [0, 1]
    s = samples[1]
    assert s.error is None
    assert s.uuid == "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"  # bytes decoded
    assert s.name == "NVIDIA A100-SXM4-80GB"
    assert s.gpu_util_pct == 88.0
    assert s.mem_copy_util_pct == 41.0
    assert s.mem_used_bytes == 40 * 2**30
    assert s.mem_total_bytes == 80 * 2**30
    assert s.power_w == pytest.approx(312.456)
    assert s.power_limit_w == pytest.approx(400.0)
    assert s.energy_mj == 123_456_789_013
    assert s.temperature_c == 61.0
    assert (s.sm_clock_mhz, s.mem_clock_mhz) == (1410, 1593)
    assert s.timestamp_ns > 0
    assert "nvmlDeviceGetComputeRunningProcesses" not in fake.calls
    reader.close()
    reader.close()
    assert fake.shutdowns == 1


def test_nvml_error_becomes_a_per_gpu_error() -> None:
    fake = FakeNvml(count=3)
    fake.fail[("nvmlDeviceGetPowerUsage", 1)] = "GPU is lost"
    samples = NvmlReader(fake).read()
    assert samples[0].error is None and samples[2].error is None
    bad = samples[1]
    assert bad.error == "nvmlDeviceGetPowerUsage: GPU is lost"
    assert bad.uuid == "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"
    assert (bad.power_w, bad.energy_mj, bad.gpu_util_pct) == (0.0, 0, 0.0)


def test_nvml_handle_failure_is_retried_on_next_read() -> None:
    fake = FakeNvml(count=2)
    fake.fail[("nvmlDeviceGetHandleByIndex", 0)] = "Unknown Error"
    reader = NvmlReader(fake)
    first = reader.read()
    assert first[0].error == "nvmlDeviceGetHandleByIndex: Unknown Error"
    assert first[0].uuid == ""
    assert first[1].error is None
    del fake.fail[("nvmlDeviceGetHandleByIndex", 0)]
    second = reader.read()
    assert second[0].error is None
    assert second[0].uuid.startswith("GPU-00000000")


def test_readers_declare_whether_read_blocks() -> None:
    assert NvmlReader(FakeNvml(count=1)).blocking is True  # NVML calls block: a thread
    assert SimulatedReader(1).blocking is False  # arithmetic: fine on the event loop


def test_nvml_init_failure_is_a_backend_error() -> None:
    with pytest.raises(GpuBackendError, match="nvmlInit failed: Driver Not Loaded"):
        NvmlReader(FakeNvml(init_error="Driver Not Loaded"))
    with pytest.raises(GpuBackendError):
        open_reader("nvml", nvml=FakeNvml(init_error="Driver Not Loaded"))


def test_auto_falls_back_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="benchagent.gpu"):
        reader = open_reader(
            "auto", simulated_gpus=3, seed=1, nvml=FakeNvml(init_error="Driver Not Loaded")
        )
    assert isinstance(reader, SimulatedReader)
    assert reader.simulated
    assert len(reader.read()) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "FALLING BACK TO SIMULATED" in warnings[0].getMessage()
    assert "Driver Not Loaded" in warnings[0].getMessage()


def test_auto_uses_nvml_when_it_initialises() -> None:
    reader = open_reader("auto", nvml=FakeNvml(count=4))
    assert isinstance(reader, NvmlReader)
    assert not reader.simulated
    assert len(reader.read()) == 4


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown GPU backend"):
        open_reader("dcgm")  # type: ignore[arg-type]


class FakeClock:
    def __init__(self, t: int = 1_000_000) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def test_simulated_is_deterministic_from_seed() -> None:
    a = SimulatedReader(8, seed=42, clock_ms=FakeClock())
    b = SimulatedReader(8, seed=42, clock_ms=FakeClock())
    c = SimulatedReader(8, seed=43, clock_ms=FakeClock())
    assert a.uuids == b.uuids
    assert len(set(a.uuids)) == 8
    assert all(u.startswith("GPU-") and len(u) == 40 for u in a.uuids)
    assert a.uuids != c.uuids
    sa, sb = a.read(), b.read()
    assert [(s.power_w, s.energy_mj, s.gpu_util_pct) for s in sa] == [
        (s.power_w, s.energy_mj, s.gpu_util_pct) for s in sb
    ]
    assert all(s.name.endswith("(simulated)") for s in sa)
    powers = {a.power_w(g, k) for g in range(8) for k in range(50)}
    assert len(powers) > 20  # it varies
    assert all(a.IDLE_W <= p <= a.POWER_LIMIT_W for p in powers)


def test_simulated_energy_is_exact_integral_of_power() -> None:
    clock = FakeClock(1_000_050)  # mid-step start
    r = SimulatedReader(2, seed=7, step_ms=100, clock_ms=clock)
    start = r.read()
    t0 = clock.t
    clock.t += 1234  # crosses 13 step boundaries, ends mid-step
    r.read()  # an intermediate read must not change the total
    clock.t += 3_333
    end = r.read()
    for g in range(2):
        delta = end[g].energy_mj - start[g].energy_mj
        expected = sum(r.power_w(g, ms // 100) for ms in range(t0, clock.t))  # 1 ms at a time
        assert delta == expected == r.integral_mj(g, t0, clock.t)
        assert delta > 0
    # power reported is the power of the step the read falls in
    assert end[0].power_w == r.power_w(0, clock.t // 100)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=700), min_size=2, max_size=8))
def test_simulated_energy_is_monotonic_and_additive(gaps: list[int]) -> None:
    clock = FakeClock(5_000_000)
    r = SimulatedReader(1, seed=3, step_ms=50, clock_ms=clock)
    t0 = clock.t
    e0 = r.read()[0].energy_mj
    energies = []
    for gap in gaps:
        clock.t += gap
        energies.append(r.read()[0].energy_mj)
    assert energies == sorted(energies)
    assert energies[-1] - e0 == r.integral_mj(0, t0, clock.t)


def test_simulated_real_clock_energy_is_monotonic() -> None:
    r = SimulatedReader(2, seed=0)
    e = [r.read()[0].energy_mj for _ in range(5)]
    assert e == sorted(e)
