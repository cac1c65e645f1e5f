"""GPU readers: the hardware seam of the agent.

A :class:`GpuReader` turns "read every GPU now" into a list of
:class:`~benchagent.wire.GpuSample`. :class:`NvmlReader` asks NVML (the
``nvidia-ml-py`` distribution, import name ``pynvml``); :class:`SimulatedReader`
invents deterministic numbers for machines without GPUs. :func:`open_reader`
picks one for ``--gpu-backend nvml|simulated|auto`` and never falls back to
simulated numbers silently.

    reader = open_reader("auto", simulated_gpus=8, seed=0)
    samples = reader.read()      # if reader.blocking, call it in a thread from asyncio
    reader.close()
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, Protocol

from benchagent.wire import GpuSample

log = logging.getLogger(__name__)

Backend = Literal["nvml", "simulated", "auto"]
BACKENDS: tuple[Backend, ...] = ("nvml", "simulated", "auto")


class GpuReader(Protocol):
    """Reads every GPU of the node at once; ``blocking`` says whether ``read`` may block."""

    @property
    def simulated(self) -> bool:
        """True when the numbers are invented, not measured."""
        ...

    @property
    def blocking(self) -> bool:
        """True when ``read`` may block (NVML calls do): asyncio callers read it in a thread.

        False promises a read that is quick and never waits (pure arithmetic), so it may
        run on the event loop.
        """
        ...

    def read(self) -> list[GpuSample]:
        """One sample per GPU; a GPU that fails to read carries ``error``."""
        ...

    def close(self) -> None:
        """Release the backend (``nvmlShutdown``)."""
        ...


class GpuBackendError(RuntimeError):
    """The requested GPU backend cannot be used (library missing, no driver)."""


def error_sample(index: int, uuid_: str, name: str, error: str) -> GpuSample:
    """A sample that says why GPU ``index`` could not be read; numbers are zero."""
    return GpuSample(
        index=index,
        uuid=uuid_,
        name=name,
        timestamp_ns=time.time_ns(),
        gpu_util_pct=0.0,
        mem_copy_util_pct=0.0,
        mem_used_bytes=0,
        mem_total_bytes=0,
        power_w=0.0,
        power_limit_w=0.0,
        energy_mj=0,
        temperature_c=0.0,
        sm_clock_mhz=0,
        mem_clock_mhz=0,
        error=error,
    )


# --------------------------------------------------------------------------- NVML


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Device:
    """Static facts of one GPU, read once (a handle, UUID, name, memory total)."""

    __slots__ = ("handle", "name", "uuid")

    def __init__(self, handle: Any, uuid_: str, name: str) -> None:
        self.handle = handle
        self.uuid = uuid_
        self.name = name


class NvmlReader:
    """Reads GPUs through NVML.

    Per GPU and read: utilisation (GPU, memory copy), memory used/total, power
    usage and enforced limit, the total-energy counter (mJ since driver load),
    temperature, SM and memory clocks — nine cheap queries, no process
    enumeration. Any ``NVMLError`` of one GPU becomes that GPU's
    ``GpuSample.error`` (naming the call), never an exception; a GPU whose
    handle or UUID could not be read is retried on the next read.

    ``nvml`` is the ``pynvml`` module; tests pass a fake one.
    """

    simulated = False
    blocking = True  # NVML calls block (a busy or lost GPU can stall them)

    def __init__(self, nvml: Any | None = None) -> None:
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError as e:  # nvidia-ml-py not installed
                raise GpuBackendError(f"cannot import pynvml (nvidia-ml-py): {e}") from e
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise GpuBackendError(f"nvmlInit failed: {e}") from e
        try:
            self._count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as e:
            nvml.nvmlShutdown()
            raise GpuBackendError(f"nvmlDeviceGetCount failed: {e}") from e
        self._devices: dict[int, _Device] = {}
        self._lock = threading.Lock()  # NVML is thread-safe; our device cache is not
        self._closed = False

    @property
    def count(self) -> int:
        return self._count

    def _device(self, index: int) -> _Device:
        dev = self._devices.get(index)
        if dev is None:
            nvml = self._nvml
            handle = _call(nvml, "nvmlDeviceGetHandleByIndex", index)
            uuid_ = _text(_call(nvml, "nvmlDeviceGetUUID", handle))
            name = _text(_call(nvml, "nvmlDeviceGetName", handle))
            dev = self._devices[index] = _Device(handle, uuid_, name)
        return dev

    def read(self) -> list[GpuSample]:
        out: list[GpuSample] = []
        with self._lock:
            for index in range(self._count):
                out.append(self._read_one(index))
        return out

    def _read_one(self, index: int) -> GpuSample:
        nvml = self._nvml
        try:
            dev = self._device(index)
        except _CallError as e:
            return error_sample(index, "", "", str(e))
        h = dev.handle
        try:
            util = _call(nvml, "nvmlDeviceGetUtilizationRates", h)
            mem = _call(nvml, "nvmlDeviceGetMemoryInfo", h)
            power_mw = _call(nvml, "nvmlDeviceGetPowerUsage", h)
            limit_mw = _call(nvml, "nvmlDeviceGetEnforcedPowerLimit", h)
            energy_mj = _call(nvml, "nvmlDeviceGetTotalEnergyConsumption", h)
            temp = _call(nvml, "nvmlDeviceGetTemperature", h, nvml.NVML_TEMPERATURE_GPU)
            sm = _call(nvml, "nvmlDeviceGetClockInfo", h, nvml.NVML_CLOCK_SM)
            memclk = _call(nvml, "nvmlDeviceGetClockInfo", h, nvml.NVML_CLOCK_MEM)
        except _CallError as e:
            return error_sample(index, dev.uuid, dev.name, str(e))
        return GpuSample(
            index=index,
            uuid=dev.uuid,
            name=dev.name,
            timestamp_ns=time.time_ns(),
            gpu_util_pct=float(util.gpu),
            mem_copy_util_pct=float(util.memory),
            mem_used_bytes=int(mem.used),
            mem_total_bytes=int(mem.total),
            power_w=power_mw / 1000.0,
            power_limit_w=limit_mw / 1000.0,
            energy_mj=int(energy_mj),
            temperature_c=float(temp),
            sm_clock_mhz=int(sm),
            mem_clock_mhz=int(memclk),
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as e:
                log.warning("nvmlShutdown failed: %s", e)


class _CallError(Exception):
    """An NVML call of one GPU failed; the message names the call."""


def _call(nvml: Any, fn: str, *args: Any) -> Any:
    try:
        return getattr(nvml, fn)(*args)
    except nvml.NVMLError as e:
        raise _CallError(f"{fn}: {e}") from e


# ---------------------------------------------------------------------- simulated

_MASK64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread deterministic hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class SimulatedReader:
    """Deterministic invented GPUs for machines without NVIDIA hardware.

    Each GPU's load is a pure function of ``(seed, gpu, step)`` where a step is
    ``step_ms`` of the monotonic clock; power is piecewise constant over steps
    in whole watts. Time is taken in whole milliseconds, so the energy counter
    (mJ = W x ms) is an exact integer: on every read it advances by the exact
    integral of power since the previous read. Hence for any two reads,
    ``energy_mj(END) - energy_mj(START) == integral_mj(gpu, t_start, t_end)``.

    ``clock_ms`` (default: ``time.monotonic_ns() // 1e6``) is injectable so
    tests can place reads at exact instants. Every name ends in
    ``(simulated)`` so the numbers cannot pass as real ones.
    """

    simulated = True
    blocking = False  # pure arithmetic, ~35 us for 8 GPUs: fine on the event loop
    MODEL = "NVIDIA H100 80GB HBM3 (simulated)"
    MEM_TOTAL = 81559 * 1024 * 1024  # what an H100 80GB reports
    POWER_LIMIT_W = 700
    IDLE_W = 70

    def __init__(
        self,
        gpus: int = 8,
        *,
        seed: int = 0,
        step_ms: int = 100,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        if gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {gpus}")
        if step_ms <= 0:
            raise ValueError(f"step_ms must be > 0, got {step_ms}")
        self.gpus = gpus
        self.seed = seed
        self.step_ms = step_ms
        self._clock = clock_ms or _monotonic_ms
        seed_key = _mix(seed & _MASK64)
        self.uuids = [
            "GPU-" + str(uuid.UUID(int=(_mix(seed_key ^ i) << 64) | _mix(seed_key + i + 1)))
            for i in range(gpus)
        ]
        # A plausible "since driver load" starting value, different per GPU.
        self._energy = [10**9 + (_mix(seed_key * 31 + i) % 10**9) for i in range(gpus)]
        self._last_ms = self._clock()
        self._lock = threading.Lock()

    # Pure model ---------------------------------------------------------------

    def load(self, gpu: int, step: int) -> float:
        """Load in [0.05, 0.98] of ``gpu`` during ``step``: slow wave plus noise."""
        noise = _mix((_mix(self.seed & _MASK64) + gpu * 0x1000193) ^ step) / float(_MASK64)
        wave = math.sin(2 * math.pi * step / 600.0 + gpu)
        return min(0.98, max(0.05, 0.55 + 0.3 * wave + 0.3 * (noise - 0.5)))

    def power_w(self, gpu: int, step: int) -> int:
        """Whole watts drawn by ``gpu`` during ``step`` (constant within the step)."""
        span = self.POWER_LIMIT_W - self.IDLE_W
        return self.IDLE_W + round(span * self.load(gpu, step))

    def integral_mj(self, gpu: int, t0_ms: int, t1_ms: int) -> int:
        """Exact energy in mJ that ``gpu`` drew between two clock readings."""
        total = 0
        t = t0_ms
        while t < t1_ms:
            step = t // self.step_ms
            end = min(t1_ms, (step + 1) * self.step_ms)
            total += self.power_w(gpu, step) * (end - t)
            t = end
        return total

    # Reader -------------------------------------------------------------------

    def read(self) -> list[GpuSample]:
        with self._lock:
            now = self._clock()
            last = self._last_ms
            if now < last:  # a monotonic clock never does this; guard anyway
                now = last
            for i in range(self.gpus):
                self._energy[i] += self.integral_mj(i, last, now)
            self._last_ms = now
            energy = list(self._energy)
        ts = time.time_ns()
        step = now // self.step_ms
        out: list[GpuSample] = []
        for i in range(self.gpus):
            load = self.load(i, step)
            out.append(
                GpuSample(
                    index=i,
                    uuid=self.uuids[i],
                    name=self.MODEL,
                    timestamp_ns=ts,
                    gpu_util_pct=float(round(100 * load)),
                    mem_copy_util_pct=float(round(60 * load)),
                    mem_used_bytes=int(self.MEM_TOTAL * (0.6 + 0.3 * load)) // 1048576 * 1048576,
                    mem_total_bytes=self.MEM_TOTAL,
                    power_w=float(self.power_w(i, step)),
                    power_limit_w=float(self.POWER_LIMIT_W),
                    energy_mj=energy[i],
                    temperature_c=float(round(32 + 45 * load)),
                    sm_clock_mhz=1980 if load > 0.1 else 345,
                    mem_clock_mhz=2619,
                )
            )
        return out

    def close(self) -> None:
        pass


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


# ------------------------------------------------------------------------ choice


def open_reader(
    backend: Backend,
    *,
    simulated_gpus: int = 8,
    seed: int = 0,
    nvml: Any | None = None,
) -> GpuReader:
    """The reader for ``--gpu-backend``.

    ``nvml`` fails with :class:`GpuBackendError` when NVML cannot load or
    initialise; ``auto`` then falls back to :class:`SimulatedReader` with a
    WARNING log (callers also export ``benchop_agent_simulated 1`` and mark
    every baseline ack ``simulated``).
    """
    if backend == "simulated":
        log.info("GPU backend: simulated (%d GPUs, seed %d), as requested", simulated_gpus, seed)
        return SimulatedReader(simulated_gpus, seed=seed)
    if backend not in ("nvml", "auto"):
        raise ValueError(f"unknown GPU backend {backend!r}; expected one of {BACKENDS}")
    try:
        reader = NvmlReader(nvml)
    except GpuBackendError as e:
        if backend == "nvml":
            raise
        log.warning(
            "GPU backend auto: NVML unavailable (%s); FALLING BACK TO SIMULATED GPUs "
            "(%d GPUs, seed %d). These numbers are invented: metrics export "
            "benchop_agent_simulated 1 and every baseline ack says simulated=true.",
            e,
            simulated_gpus,
            seed,
        )
        return SimulatedReader(simulated_gpus, seed=seed)
    log.info("GPU backend: NVML, %d GPU(s)", reader.count)
    return reader
