"""Sampler: interval floor, ring buffer, readiness, resilience, no process enumeration."""

from __future__ import annotations

import asyncio
import math
import threading

import msgspec
import pytest
from fake_pynvml import FakeNvml

from benchagent.gpu import NvmlReader, SimulatedReader, error_sample
from benchagent.sampler import MIN_INTERVAL_S, Sampler, Tick, UtilIntegrals, check_interval
from benchagent.wire import GpuSample


@pytest.mark.parametrize("bad", [0.0, 0.01, 0.049, -1.0, math.nan])
def test_interval_below_50ms_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"minimum is 50 ms \(NVML returns zeros or errors"):
        check_interval(bad)
    with pytest.raises(ValueError):
        Sampler(SimulatedReader(1), interval_s=bad)


def test_interval_at_floor_is_accepted() -> None:
    assert check_interval(MIN_INTERVAL_S) == MIN_INTERVAL_S
    assert Sampler(SimulatedReader(1)).interval_s == 1.0  # the default


async def test_ring_buffer_keeps_the_last_n() -> None:
    seen: list[Tick] = []
    sampler = Sampler(SimulatedReader(2), history=3, on_tick=seen.append)
    assert not sampler.ready and sampler.latest is None
    for _ in range(5):
        await sampler.poll()
    assert sampler.ready
    assert sampler.count == 5 and len(seen) == 5
    assert list(sampler.ticks) == seen[-3:]
    assert sampler.latest is seen[-1]
    assert len(seen[-1].samples) == 2


class FlakyReader:
    simulated = True
    blocking = True

    def __init__(self, fail_first: int) -> None:
        self.calls = 0
        self.fail_first = fail_first
        self.inner = SimulatedReader(1)

    def read(self) -> list[GpuSample]:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError("driver hiccup")
        return self.inner.read()

    def close(self) -> None:
        pass


async def test_reader_exception_is_counted_not_fatal_and_not_ready() -> None:
    reader = FlakyReader(fail_first=2)
    sampler = Sampler(reader, interval_s=MIN_INTERVAL_S)
    task = asyncio.create_task(sampler.run())
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.07):  # first poll failed; not ready yet
                await sampler.wait_ready()
        async with asyncio.timeout(5):
            await sampler.wait_ready()
    finally:
        task.cancel()
    assert sampler.failures == 2
    assert sampler.count >= 1
    assert reader.calls >= 3


async def test_run_polls_repeatedly_at_the_interval() -> None:
    sampler = Sampler(SimulatedReader(1), interval_s=MIN_INTERVAL_S)
    task = asyncio.create_task(sampler.run())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        while sampler.count < 4:
            assert loop.time() - t0 < 5.0, "sampler did not poll 4 times in 5 s"
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    # 4 polls at a 50 ms interval take >= 150 ms (first poll is immediate).
    assert loop.time() - t0 >= 3 * MIN_INTERVAL_S * 0.9


class ThreadRecordingReader(SimulatedReader):
    """Remembers which thread each read ran in."""

    def __init__(self, *, blocking: bool) -> None:
        super().__init__(1)
        self.blocking = blocking
        self.threads: list[int] = []

    def read(self) -> list[GpuSample]:
        self.threads.append(threading.get_ident())
        return super().read()


@pytest.mark.parametrize("blocking", [False, True])
async def test_only_blocking_readers_are_read_in_a_thread(blocking: bool) -> None:
    reader = ThreadRecordingReader(blocking=blocking)
    sampler = Sampler(reader)
    assert await sampler.poll() is not None
    on_loop = reader.threads == [threading.get_ident()]
    assert on_loop is not blocking


async def test_nvml_sampling_never_enumerates_processes() -> None:
    fake = FakeNvml(count=4)  # its process enumeration raises AssertionError
    fake.fail[("nvmlDeviceGetTemperature", 2)] = "Not Supported"
    sampler = Sampler(NvmlReader(fake), interval_s=MIN_INTERVAL_S)
    for _ in range(3):
        tick = await sampler.poll()
        assert tick is not None
        assert tick.errors == 1
    assert sampler.failures == 0
    assert not any("Process" in c for c in fake.calls)
    assert tick.samples[2].error == "nvmlDeviceGetTemperature: Not Supported"


def util_sample(t_s: float, util: float, uuid: str = "GPU-a") -> GpuSample:
    return msgspec.structs.replace(
        SimulatedReader(1).read()[0], uuid=uuid, timestamp_ns=int(t_s * 1e9), gpu_util_pct=util
    )


def test_util_integral_is_a_step_integral_of_the_ticks() -> None:
    integrals = UtilIntegrals()
    recorded = [integrals.record(util_sample(t, u)) for t, u in [(10, 50), (11, 100), (13, 0)]]
    # 50 % held for 1 s, then 100 % for 2 s: 50 + 200 %·s.
    assert [s.util_integral_pct_s for s in recorded] == [0.0, 50.0, 250.0]
    # A baseline read between ticks: extended with the last tick's value, not recorded.
    [fresh] = integrals.extend([util_sample(12.5, 7)])
    assert fresh.util_integral_pct_s == 50.0 + 100 * 1.5 and fresh.gpu_util_pct == 7
    [after] = integrals.extend([util_sample(14, 7)])
    assert after.util_integral_pct_s == 250.0  # 0 % held since the last tick
    # A read that raced the last tick (read at 12.9, the tick at 13 recorded first).
    assert integrals.at("GPU-a", int(12.9e9)) == pytest.approx(50.0 + 100 * 1.9)
    assert integrals.at("GPU-a", int(10.5e9)) is None  # older than the ticks it keeps
    assert integrals.at("GPU-other", int(14e9)) is None  # never sampled
    # Errors carry nothing and do not end the step: the next good tick integrates across.
    err = integrals.record(error_sample(0, "GPU-a", "x", "GPU is lost"))
    assert err.util_integral_pct_s is None
    assert integrals.record(util_sample(15, 30)).util_integral_pct_s == 250.0
    assert integrals.extend([err]) == [err]
    # A wall clock that stepped back adds nothing for that step.
    assert integrals.record(util_sample(14.5, 30)).util_integral_pct_s == 250.0
    assert integrals.record(util_sample(15.5, 30)).util_integral_pct_s == 280.0


async def test_tick_samples_carry_the_util_integral() -> None:
    sampler = Sampler(SimulatedReader(2))
    first = await sampler.poll()
    second = await sampler.poll()
    assert first is not None and second is not None
    assert [s.util_integral_pct_s for s in first.samples] == [0.0, 0.0]
    for a, b in zip(first.samples, second.samples, strict=True):
        dt_s = (b.timestamp_ns - a.timestamp_ns) / 1e9
        assert b.util_integral_pct_s == pytest.approx(a.gpu_util_pct * dt_s)
