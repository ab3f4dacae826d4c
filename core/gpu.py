"""GPU monitor over NVML: per-GPU memory, utilisation, temperature, power, and the trainer's own GPU memory."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterable

MB = 1024 * 1024




@dataclass(frozen=True)
class GpuInfo:
    """One GPU at one instant. A field NVML could not report is None, never a made-up zero."""

    index: int
    name: str
    memory_used_mb: float | None = None
    memory_total_mb: float | None = None
    utilization_percent: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    # GPU memory held by the processes we were asked about (the trainer); None when NVML cannot say
    process_memory_mb: float | None = None

    @property
    def memory_fraction(self) -> float | None:
        if self.memory_used_mb is None or not self.memory_total_mb:
            return None
        return max(0.0, min(1.0, self.memory_used_mb / self.memory_total_mb))


@dataclass(frozen=True)
class GpuSample:
    """The result of one poll: available=False means "no NVIDIA GPU" (reason says why), not an error."""

    available: bool
    gpus: tuple[GpuInfo, ...] = ()
    reason: str = ""
    ts: float = field(default_factory=time.time)


def unavailable(reason: str) -> GpuSample:
    return GpuSample(available=False, gpus=(), reason=reason)


class GpuMonitor:
    """Polls NVML. nvmlInit runs lazily on the first sample; any NVMLError becomes an explicit state.

    `nvml` can be injected (a module with pynvml's API) so the data path is testable without a GPU.
    """

    def __init__(self, nvml=None, retry_after_s: float = 60.0):
        self._nvml = nvml
        self._lock = threading.Lock()
        self._initialised = False
        self._failed_reason: str | None = None
        self._failed_at = 0.0
        self._retry_after_s = retry_after_s

    def _ensure_init(self) -> str | None:
        """Initialise NVML once; returns a reason string when it is not usable."""
        if self._initialised:
            return None
        # a missing driver does not appear by itself; retrying every poll would only burn CPU
        if self._failed_reason is not None and time.monotonic() - self._failed_at < self._retry_after_s:
            return self._failed_reason
        try:
            if self._nvml is None:
                import pynvml  # lazy: importing is cheap, but keep it off the TUI's first frame
                self._nvml = pynvml
            self._nvml.nvmlInit()
        except ImportError:
            return self._fail("nvidia-ml-py is not installed")
        except self._nvml_error() as e:  # library missing, driver not loaded, ...
            return self._fail(_nvml_reason(e))
        self._initialised = True
        self._failed_reason = None
        return None

    def _nvml_error(self) -> type[Exception]:
        """NVML's exception class (pynvml.NVMLError, or an injected module's)."""
        return getattr(self._nvml, "NVMLError", None) or Exception

    def _fail(self, reason: str) -> str:
        self._failed_reason = reason
        self._failed_at = time.monotonic()
        return reason

    def sample(self, pids: Iterable[int] = ()) -> GpuSample:
        """Read every GPU; never raises. `pids`: processes whose GPU memory to add up (e.g. the trainer)."""
        with self._lock:
            reason = self._ensure_init()
            if reason is not None:
                return unavailable(reason)
            nv = self._nvml
            err = self._nvml_error()
            try:
                count = nv.nvmlDeviceGetCount()
            except err as e:
                return unavailable(_nvml_reason(e))
            if count == 0:
                return unavailable("no NVIDIA GPU")
            wanted = set(pids)
            gpus = []
            for i in range(count):
                try:
                    handle = nv.nvmlDeviceGetHandleByIndex(i)
                except err:
                    gpus.append(GpuInfo(index=i, name="unknown"))
                    continue
                gpus.append(self._read(nv, i, handle, wanted))
            return GpuSample(available=True, gpus=tuple(gpus))

    def _read(self, nv, index: int, handle, pids: set[int]) -> GpuInfo:
        err = self._nvml_error()
        name = _try(lambda: nv.nvmlDeviceGetName(handle), err)
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        mem = None
        if hasattr(nv, "nvmlMemory_v2"):
            # v2 reports `used` without the driver's reservation, as nvidia-smi does (v1 adds ~600 MiB on an H200)
            mem = _try(lambda: nv.nvmlDeviceGetMemoryInfo(handle, version=nv.nvmlMemory_v2), err)
        if mem is None:
            mem = _try(lambda: nv.nvmlDeviceGetMemoryInfo(handle), err)
        util = _try(lambda: nv.nvmlDeviceGetUtilizationRates(handle), err)
        temp = _try(lambda: nv.nvmlDeviceGetTemperature(handle, getattr(nv, "NVML_TEMPERATURE_GPU", 0)), err)
        power = _try(lambda: nv.nvmlDeviceGetPowerUsage(handle), err)
        limit = _try(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle), err)
        proc_mb = None
        if pids:
            procs = _try(lambda: nv.nvmlDeviceGetComputeRunningProcesses(handle), err)
            if procs is not None:
                used = [p.usedGpuMemory for p in procs if getattr(p, "pid", None) in pids]
                # usedGpuMemory is None when the driver hides it (e.g. inside some containers)
                known = [u for u in used if isinstance(u, int)]
                proc_mb = sum(known) / MB if known else (0.0 if not used else None)
        return GpuInfo(
            index=index,
            name=str(name or f"GPU {index}"),
            memory_used_mb=mem.used / MB if mem is not None else None,
            memory_total_mb=mem.total / MB if mem is not None else None,
            utilization_percent=float(util.gpu) if util is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            power_w=power / 1000.0 if power is not None else None,
            power_limit_w=limit / 1000.0 if limit is not None else None,
            process_memory_mb=proc_mb,
        )

    def close(self) -> None:
        with self._lock:
            if self._initialised:
                _try(self._nvml.nvmlShutdown, self._nvml_error())
                self._initialised = False


def _try(fn, error: type[Exception] = Exception):
    """One NVML field: a field the device does not support is None, not a failed sample. `error` is NVML's
    exception class; AttributeError/TypeError cover an older nvidia-ml-py without the call or argument."""
    try:
        return fn()
    except (error, AttributeError, TypeError):
        return None


def _nvml_reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    low = text.lower()
    if "library not found" in low or "shared library" in low:
        return "no NVIDIA driver (NVML library not found)"
    if "driver not loaded" in low:
        return "NVIDIA driver not loaded"
    return f"NVML unavailable: {text}"
