"""`autoresearch check`: JSON report without a GPU, NVML missing, and the profile recommendation."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core import hardware
from core.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]


def test_check_prints_json_and_exits_0_without_gpu():
    proc = subprocess.run([sys.executable, "-m", "core.cli", "check"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in ("gpus", "driver_version", "cuda_available", "cuda_version", "torch_version", "mps_available", "uv",
                "python", "cpu_count", "ram_gb", "recommended_profile"):
        assert key in report, key
    assert isinstance(report["gpus"], list) and report["recommended_profile"] in PROFILES
    assert report["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert report["cpu_count"] >= 1 and report["ram_gb"] > 0
    assert set(report["uv"]) == {"path", "version"}
    for gpu in report["gpus"]:  # on a GPU machine: name, memory and driver per GPU
        assert {"name", "memory_total_mb", "memory_used_mb", "driver"} <= set(gpu)
    if not report["gpus"]:
        assert report["recommended_profile"] in ("cpu", "mps") and report["driver_version"] is None


def test_missing_nvml_is_an_empty_list(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    assert hardware.nvml_gpus() == [] and hardware.nvml_driver() is None
    assert hardware.report()["gpus"] == [] or hardware.report()["cuda_available"]


@pytest.mark.parametrize("memory_mb, expected", [
    (81559, "h100"), (143771, "h100"), (40960, "a100-40gb"), (49140, "a100-40gb"), (24564, "24gb"),
    (16384, "6gb"), (6144, "6gb"), (4096, "cpu"), (None, "cpu"),
])
def test_profile_by_gpu_memory(memory_mb, expected):
    assert hardware.profile_for(memory_mb) == expected
    gpus = [] if memory_mb is None else [{"index": 0, "name": "x", "memory_total_mb": memory_mb}]
    assert hardware.recommend_profile(gpus=gpus, mps=False) == expected


def test_largest_gpu_and_mps_decide():
    gpus = [{"memory_total_mb": 8192}, {"memory_total_mb": 81920}]
    assert hardware.recommend_profile(gpus=gpus, mps=False) == "h100"
    assert hardware.recommend_profile(gpus=[], mps=True) == "mps"
    assert hardware.profile_for(None, mps=True) == "mps"
