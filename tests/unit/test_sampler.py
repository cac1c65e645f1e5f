"""Sampler: interval floor, ring buffer, readiness, resilience, no process enumeration."""

from __future__ import annotations

import asyncio
import math

import pytest
from fake_pynvml import FakeNvml

from benchagent.gpu import NvmlReader, SimulatedReader
from benchagent.sampler import MIN_INTERVAL_S, Sampler, Tick, check_interval
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
