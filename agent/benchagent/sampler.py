"""The sampler: polls a :class:`~benchagent.gpu.GpuReader` at a fixed rate.

It keeps the latest reading and a small ring buffer of recent ones for the
exporter; it never enumerates processes (the readers do not, and this loop
calls nothing but ``reader.read()``). A blocking reader (NVML) is read in a
worker thread, a non-blocking one (``reader.blocking`` False) on the event
loop.

It also keeps, per GPU, the integral of the GPU utilisation over time since
it started (:class:`UtilIntegrals`: a step function, each tick's value held
until the next tick) and every sample it records carries it
(``GpuSample.util_integral_pct_s``); a baseline read between ticks gets the
integral extended to its own time with the last sampled value. The mean
utilisation over any window is then ``(END - START) / window``, with no state
kept per window.

    sampler = Sampler(reader, interval_s=1.0)
    task = asyncio.create_task(sampler.run())
    async with asyncio.timeout(5):
        await sampler.wait_ready()    # the first reading is in
    sampler.latest                    # Tick(time_ns, samples)
    sampler.integrals.extend(samples) # fresh samples carrying the integral at their time
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

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


@dataclass(frozen=True, slots=True)
class _Step:
    """One GPU's integral at ``t_ns`` and the utilisation held from then on."""

    t_ns: int
    integral: float  # %·s up to t_ns
    util: float  # % held from t_ns until the next tick


class UtilIntegrals:
    """Per-GPU integral of ``gpu_util_pct`` over time (%·s), by UUID; pure, not thread-safe.

    :meth:`record` adds a tick's sample (the previous tick's value held from
    its time to this one: step integration) and returns the sample carrying
    the integral at its time. :meth:`extend` gives a sample that is *not* a
    tick (a baseline read) the integral at its time, extended from the tick
    before it with that tick's value. Errored samples and GPUs not sampled
    yet carry None. A clock that steps back adds nothing for that step.
    """

    def __init__(self) -> None:
        self._last: dict[str, _Step] = {}
        self._prev: dict[str, _Step] = {}  # the tick before _last, for reads that raced it

    def record(self, sample: GpuSample) -> GpuSample:
        if sample.error is not None or not sample.uuid:
            return sample
        t = sample.timestamp_ns
        last = self._last.get(sample.uuid)
        integral = 0.0 if last is None else last.integral + last.util * max(0, t - last.t_ns) / 1e9
        if last is not None:
            self._prev[sample.uuid] = last
        self._last[sample.uuid] = _Step(t, integral, sample.gpu_util_pct)
        return msgspec.structs.replace(sample, util_integral_pct_s=integral)

    def at(self, uuid: str, t_ns: int) -> float | None:
        """The integral of GPU ``uuid`` at ``t_ns``; None before the ticks it remembers."""
        for step in (self._last.get(uuid), self._prev.get(uuid)):
            if step is not None and t_ns >= step.t_ns:
                return step.integral + step.util * (t_ns - step.t_ns) / 1e9
        return None

    def extend(self, samples: list[GpuSample]) -> list[GpuSample]:
        """``samples`` (a fresh read, not recorded) carrying the integral at their time."""
        out = []
        for s in samples:
            integral = None if s.error is not None else self.at(s.uuid, s.timestamp_ns)
            out.append(
                s if integral is None else msgspec.structs.replace(s, util_integral_pct_s=integral)
            )
        return out


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
    counted in ``failures``; the loop keeps going. Tick samples carry the
    utilisation integral kept in ``integrals``.
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
        self.integrals = UtilIntegrals()
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
        """Read once (in a thread if the reader blocks) and record it; None if it raised."""
        try:
            if self.reader.blocking:
                samples = await asyncio.to_thread(self.reader.read)
            else:
                samples = self.reader.read()
        except Exception:
            self.failures += 1
            log.exception("GPU read failed (poll %d)", self.count + self.failures)
            return None
        samples = [self.integrals.record(s) for s in samples]
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
