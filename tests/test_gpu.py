"""core.gpu: NVML sampling (real library where present, a stand-in module on GPU-less CI) and /proc memory."""

import os
import subprocess
import sys
import types

import pytest

from core import gpu


class _NVMLError(Exception):
    pass


def _fake_nvml(count=2, fail_init=None, broken_field=False):
    """A module with pynvml's API: NVML cannot be faked by a real device on a CPU-only machine."""
    calls = {"init": 0}
    nv = types.SimpleNamespace(NVML_TEMPERATURE_GPU=0, NVMLError=_NVMLError)

    def init():
        calls["init"] += 1
        if fail_init:
            raise _NVMLError(fail_init)

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: count
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3" if h == 0 else "NVIDIA A100"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 1024**3, total=80 * 1024**3)
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=97 - h)

    def temp(h, kind):
        if broken_field:
            raise _NVMLError("Not Supported")
        return 65

    nv.nvmlDeviceGetTemperature = temp
    nv.nvmlDeviceGetPowerUsage = lambda h: 350_000
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=4242, usedGpuMemory=512 * 1024**2),
        types.SimpleNamespace(pid=1, usedGpuMemory=None),
    ]
    return nv, calls


def test_sample_reads_every_gpu():
    nv, _ = _fake_nvml()
    s = gpu.GpuMonitor(nvml=nv).sample(pids=[4242])
    assert s.available and len(s.gpus) == 2
    g0, g1 = s.gpus
    assert g0.name == "NVIDIA H100 80GB HBM3" and g1.name == "NVIDIA A100"
    assert g0.memory_used_mb == 1024 and g0.memory_total_mb == 80 * 1024
    assert g0.memory_fraction == pytest.approx(1 / 80)
    assert g0.utilization_percent == 97 and g1.utilization_percent == 96
    assert g0.temperature_c == 65 and g0.power_w == 350 and g0.power_limit_w == 700
    assert g0.process_memory_mb == 512


def test_unsupported_field_is_none_not_failure():
    nv, _ = _fake_nvml(count=1, broken_field=True)
    s = gpu.GpuMonitor(nvml=nv).sample()
    assert s.available and s.gpus[0].temperature_c is None and s.gpus[0].memory_used_mb == 1024


def test_init_failure_is_an_explicit_state_and_not_retried_every_poll():
    nv, calls = _fake_nvml(fail_init="NVML Shared Library Not Found")
    mon = gpu.GpuMonitor(nvml=nv)
    s = mon.sample()
    assert not s.available and "NVML library not found" in s.reason
    mon.sample()
    assert calls["init"] == 1


def test_zero_gpus():
    nv, _ = _fake_nvml(count=0)
    s = gpu.GpuMonitor(nvml=nv).sample()
    assert not s.available and s.reason == "no NVIDIA GPU"


def test_real_pynvml_never_raises():
    s = gpu.GpuMonitor().sample(pids=[os.getpid()])
    if s.available:  # a machine with a driver: the real numbers must be sane
        assert s.gpus and all(g.memory_total_mb and g.memory_total_mb > 0 for g in s.gpus)
    else:
        assert s.reason


def test_process_rss_and_tree():
    from core import procs
    assert procs.rss_mb(os.getpid()) > 1
    assert procs.rss_mb(2**22 + 12345) is None
    code = "import sys; b = b'x' * (64 * 2**20); print('ready', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"ready"  # the 64 MiB are allocated and touched
        assert child.pid in procs.descendants(os.getpid())
        assert procs.tree_rss_mb([child.pid]) >= 64
        mem = procs.machine_memory()
        assert mem is not None and 0 < mem.used_mb < mem.total_mb
    finally:
        child.communicate(b"")


def test_core_gpu_does_not_import_textual():
    code = "import sys, core.gpu; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(), check=True)
    assert out.stdout.strip() == "False"


def test_memory_v2_is_preferred_when_the_library_has_it():
    nv, _ = _fake_nvml(count=1)
    nv.nvmlMemory_v2 = object()
    v1 = nv.nvmlDeviceGetMemoryInfo
    nv.nvmlDeviceGetMemoryInfo = lambda h, version=None: (
        types.SimpleNamespace(used=0, total=80 * 1024**3) if version is nv.nvmlMemory_v2 else v1(h))
    assert gpu.GpuMonitor(nvml=nv).sample().gpus[0].memory_used_mb == 0
