"""The sampler: polls a :class:`~benchagent.gpu.GpuReader` at a fixed rate.

It keeps the latest reading and a small ring buffer of recent ones for the
exporter; it never enumerates processes (the readers do not, and this loop
calls nothing but ``reader.read()``). Reads run in a worker thread because
NVML calls block.

    sampler = Sampler(reader, interval_s=1.0)
    task = asyncio.create_task(sampler.run())
    async with asyncio.timeout(5):
        await sampler.wait_ready()    # the first reading is in
    sampler.latest                    # Tick(time_ns, samples)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchagent.gpu import GpuReader
from benchagent.wire import GpuSample

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.05


@dataclass(frozen=True, slots=True)
class Tick:
    """One poll of every GPU: when it finished and what it read."""

    time_ns: int
    samples: list[GpuSample]

    @property
    def errors(self) -> int:
        return sum(1 for s in self.samples if s.error is not None)


def check_interval(interval_s: float) -> float:
    """``interval_s`` if NVML can honour it, else a ValueError that says why."""
    if not interval_s >= MIN_INTERVAL_S:  # also rejects NaN
        raise ValueError(
            f"sampling interval {interval_s * 1000:g} ms is too short: the minimum is "
            f"{MIN_INTERVAL_S * 1000:g} ms (NVML returns zeros or errors when polled faster)"
        )
    return interval_s


class Sampler:
    """Fixed-rate poller with a ring buffer of the last ``history`` ticks.

    A late tick does not make the next ones early: missed slots are skipped.
    A reader that raises (instead of returning per-GPU errors) is logged and
    counted in ``failures``; the loop keeps going.
    """

    def __init__(
        self,
        reader: GpuReader,
        *,
        interval_s: float = 1.0,
        history: int = 60,
        on_tick: Callable[[Tick], None] | None = None,
    ) -> None:
        self.reader = reader
        self.interval_s = check_interval(interval_s)
        self.ticks: collections.deque[Tick] = collections.deque(maxlen=max(1, history))
        self.on_tick = on_tick
        self.count = 0  # successful polls
        self.failures = 0  # polls where the reader raised
        self._ready = asyncio.Event()

    @property
    def latest(self) -> Tick | None:
        return self.ticks[-1] if self.ticks else None

    @property
    def ready(self) -> bool:
        """True once the reader has produced a reading."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Wait for the first reading (wrap in ``asyncio.timeout``)."""
        await self._ready.wait()

    async def poll(self) -> Tick | None:
        """Read once (in a thread) and record it; None if the reader raised."""
        try:
            samples = await asyncio.to_thread(self.reader.read)
        except Exception:
            self.failures += 1
            log.exception("GPU read failed (poll %d)", self.count + self.failures)
            return None
        tick = Tick(time.time_ns(), samples)
        self.ticks.append(tick)
        self.count += 1
        self._ready.set()
        if self.on_tick is not None:
            self.on_tick(tick)
        return tick

    async def run(self) -> None:
        """Poll every ``interval_s`` until cancelled."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self.poll()
            next_at += self.interval_s
            now = loop.time()
            if next_at < now:  # overran: skip the missed slots
                next_at += (now - next_at) // self.interval_s * self.interval_s + self.interval_s
            await asyncio.sleep(next_at - now)
