"""Where a tag's noise floor lives (.autoresearch/noise/<tag>.json) and what it was measured under."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import pyconst
from .early_stop import Calibration
from .noise import NoiseFloor, default_noise_runs, hardware_fingerprint
from .workspace import Workspace, atomic_write_json, read_json


@dataclass(frozen=True)
class Setting:
    """What σ belongs to: the hardware profile, the time budget and the machine (the GPUs the slots use)."""

    profile: str | None
    time_budget: float
    hardware: str


def setting(ws: Workspace, gpu_names: list[str]) -> Setting:
    consts = pyconst.read(ws.root / "constants.py", ("PROFILE", "TIME_BUDGET"))
    budget = consts.get("TIME_BUDGET")
    profile = consts.get("PROFILE")
    return Setting(profile if isinstance(profile, str) else None,
                   float(budget) if isinstance(budget, (int, float)) and not isinstance(budget, bool) else 300.0,
                   hardware_fingerprint(gpu_names))


def noise_runs(requested: int | None, profile: str | None) -> int:
    return default_noise_runs(profile) if requested is None else requested


def path(ws: Workspace, tag: str) -> Path:
    return ws.state_dir / "noise" / f"{tag}.json"


def load(ws: Workspace, tag: str) -> tuple[NoiseFloor | None, Calibration | None, str | None]:
    """(floor, early-stop calibration, why it could not be read) of a tag; nothing stored is (None, None, None)."""
    data = read_json(path(ws, tag), None)
    if data is None:
        return None, None, None
    try:
        floor = NoiseFloor.from_json(data.get("floor") if isinstance(data, dict) else None)
    except ValueError as e:
        return None, None, f"{path(ws, tag)} cannot be used ({e}); sigma is measured again"
    cal = None
    if isinstance(data.get("early_stop"), dict):
        try:
            cal = Calibration.from_json(data["early_stop"])
        except ValueError:
            cal = None
    return floor, cal, None


def save(ws: Workspace, tag: str, floor: NoiseFloor, cal: Calibration | None) -> None:
    atomic_write_json(path(ws, tag), {"floor": floor.to_json(), "early_stop": cal.to_json() if cal else None})
