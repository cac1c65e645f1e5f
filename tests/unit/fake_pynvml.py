"""A fake ``pynvml`` module for tests: NVML's units, injectable failures."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


class FakeNVMLError(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class FakeNvml:
    """Just enough of pynvml: values in NVML's units (mW, bytes, mJ)."""

    NVMLError = FakeNVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2

    def __init__(self, count: int = 2, *, init_error: str | None = None) -> None:
        self.count = count
        self.init_error = init_error
        self.fail: dict[tuple[str, int], str] = {}  # (function, index) -> message
        self.calls: list[str] = []
        self.shutdowns = 0

    def _maybe_fail(self, fn: str, index: int) -> None:
        self.calls.append(fn)
        if (fn, index) in self.fail:
            raise FakeNVMLError(self.fail[(fn, index)])

    def nvmlInit(self) -> None:
        if self.init_error:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        self._maybe_fail("nvmlDeviceGetHandleByIndex", i)
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        self._maybe_fail("nvmlDeviceGetUUID", h)
        return f"GPU-0000000{h}-aaaa-bbbb-cccc-dddddddddddd".encode()  # old bindings: bytes

    def nvmlDeviceGetName(self, h: int) -> str:
        self._maybe_fail("nvmlDeviceGetName", h)
        return "NVIDIA A100-SXM4-80GB"

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        self._maybe_fail("nvmlDeviceGetUtilizationRates", h)
        return SimpleNamespace(gpu=87 + h, memory=41)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        self._maybe_fail("nvmlDeviceGetMemoryInfo", h)
        return SimpleNamespace(used=40 * 2**30, total=80 * 2**30, free=40 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._maybe_fail("nvmlDeviceGetPowerUsage", h)
        return 312_456  # mW

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        self._maybe_fail("nvmlDeviceGetEnforcedPowerLimit", h)
        return 400_000

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self._maybe_fail("nvmlDeviceGetTotalEnergyConsumption", h)
        return 123_456_789_012 + h

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        self._maybe_fail("nvmlDeviceGetTemperature", h)
        return 61

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        self._maybe_fail("nvmlDeviceGetClockInfo", h)
        return {self.NVML_CLOCK_SM: 1410, self.NVML_CLOCK_MEM: 1593}[clock]

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        raise AssertionError("process enumeration must never run in the sampling path")
