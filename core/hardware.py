"""`autoresearch check`: a JSON report of GPUs, CUDA, torch, MPS, uv and the machine, with a recommended profile."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

GIB = 1024**3


def nvml_gpus() -> list[dict]:
    """[{index, name, memory_total_mb, memory_used_mb}] through NVML; no NVML, no driver or no GPU -> []."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError (no driver/library) or anything odd from a broken install
        return []
    gpus = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                         "memory_total_mb": round(mem.total / 2**20, 1), "memory_used_mb": round(mem.used / 2**20, 1)})
    except Exception:
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return gpus


def nvml_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def torch_info() -> dict:
    """torch version, CUDA availability/version/devices, MPS availability (imports torch: a few seconds)."""
    try:
        import torch
    except Exception as e:  # missing or broken install: reported, not raised
        return {"torch": None, "torch_error": f"{type(e).__name__}: {e}", "cuda_available": False,
                "cuda_version": None, "cuda_devices": [], "mps_available": False}
    cuda = False
    devices = []
    try:
        cuda = torch.cuda.is_available()
        if cuda:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                devices.append({"index": i, "name": p.name, "memory_total_mb": round(p.total_memory / 2**20, 1),
                                "capability": f"{p.major}.{p.minor}"})
    except Exception:
        cuda = False
    try:
        mps = bool(torch.backends.mps.is_available())
    except Exception:
        mps = False
    return {"torch": torch.__version__, "cuda_available": cuda, "cuda_version": torch.version.cuda,
            "cuda_devices": devices, "mps_available": mps}


def uv_info() -> dict:
    path = shutil.which("uv")
    version = None
    if path:
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
            version = out.split()[1] if len(out.split()) > 1 else out or None
        except (OSError, subprocess.SubprocessError):
            pass
    return {"path": path, "version": version}


def ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _mps_possible() -> bool:
    """Only Apple Silicon Macs can have MPS: elsewhere torch is not imported just to hear "no"."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def profile_for(gpu_memory_mb: float | None, mps: bool = False) -> str:
    """Hardware profile by the largest GPU's memory: >=70 GB h100, >=35 a100-40gb, >=20 24gb, >=5 6gb."""
    if gpu_memory_mb is not None:
        gb = gpu_memory_mb / 1024
        for threshold, name in ((70, "h100"), (35, "a100-40gb"), (20, "24gb"), (5, "6gb")):
            if gb >= threshold:
                return name
    return "mps" if mps else "cpu"


def recommend_profile(gpus: list[dict] | None = None, mps: bool | None = None) -> str:
    """The profile for this machine (NVML first; torch only where NVML sees nothing or on Apple Silicon)."""
    gpus = nvml_gpus() if gpus is None else gpus
    memory = max((g["memory_total_mb"] for g in gpus if g.get("memory_total_mb")), default=None)
    if memory is None and mps is None and (_mps_possible() or shutil.which("nvidia-smi")):
        info = torch_info()
        memory = max((d["memory_total_mb"] for d in info["cuda_devices"]), default=None)
        mps = info["mps_available"]
    return profile_for(memory, bool(mps))


def report() -> dict:
    gpus = nvml_gpus()
    t = torch_info()
    if not gpus and t["cuda_devices"]:  # NVML missing but CUDA works: report what torch sees
        gpus = [dict(d, memory_used_mb=None) for d in t["cuda_devices"]]
    driver = nvml_driver() if gpus else None
    gpus = [dict(g, driver=driver) for g in gpus]
    memory = max((g["memory_total_mb"] for g in gpus if g.get("memory_total_mb")), default=None)
    return {
        "gpus": gpus,
        "driver_version": driver,
        "cuda_available": t["cuda_available"],
        "cuda_version": t["cuda_version"],
        "torch_version": t["torch"],
        **({"torch_error": t["torch_error"]} if "torch_error" in t else {}),
        "mps_available": t["mps_available"],
        "uv": uv_info(),
        "python": {"version": platform.python_version(), "executable": sys.executable},
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "ram_gb": ram_gb(),
        "recommended_profile": profile_for(memory, t["mps_available"]),
    }


def cmd_check(args=None) -> int:
    """autoresearch check: print the report as JSON (exit 0 also without a GPU)."""
    print(json.dumps(report(), indent=2))
    return 0
