"""The noise floor: σ of val_bpb from repeated runs of one train.py, when to measure it again, and run means."""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

MIN_RUNS = 2  # a sample standard deviation needs two runs (the baseline's own run counts as one)

# Extra runs of the unmodified baseline (beyond the baseline's own run) per hardware profile; see
# default_noise_runs() for the reasons. Profiles not listed get DEFAULT_NOISE_RUNS.
NOISE_RUNS = {"cpu": 3, "mps": 3, "6gb": 3, "24gb": 3, "a100-40gb": 3, "h100": 3}
DEFAULT_NOISE_RUNS = 3


def default_noise_runs(profile: str | None) -> int:
    """How many extra baseline runs `--noise-runs` does by default on a profile (0 turns the floor off).

    3 on every profile: σ then comes from 4 runs (3 degrees of freedom), and each confirmation pair adds one
    more (pooled_sigma). The numbers behind the choice (bench/decision_sim.py, 100 seeds, 100 runs of GPU
    time, every win confirmed and σ pooled):
    - false keeps (kept changes that are truly not better) with σ = 0.0005 (H100-like): 6.7 % with 1 extra
      run, 5.7 % with 2, 4.5 % with 3, 4.4 % with 5, 4.0 % with 8; the true final val_bpb is the same for all;
    - with σ = 0.1 (the CPU demo): 23 %, 20 %, 16 %, 13 %, 9 %; the true final val_bpb again does not change.
    - with few runs σ is often far off: from 2 runs it is below half the true σ (a bar at 1σ instead of 2σ)
      in 38 % of tags, from 3 runs in 22 %, from 4 runs in 14 %, from 6 runs in 6 %.
    - cost: on a GPU profile a run is the 5-minute budget, 3 runs are 15 minutes (3 % of an 8-hour night);
      on the CPU demo about 3 minutes before the first proposal is decided (proposals can be made meanwhile).
    More runs buy little on GPUs; on the CPU demo nothing short of ~8 runs gets false keeps near 5 %, because
    its effects are smaller than its noise (σ ≈ 0.1-0.2 with the cores shared).
    """
    if profile is None:
        return DEFAULT_NOISE_RUNS
    return NOISE_RUNS.get(profile, DEFAULT_NOISE_RUNS)


def _finite_values(values: Iterable[float], what: str) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{what} must be finite numbers, got {v!r}")
        out.append(float(v))
    return out


def sample_sigma(values: Sequence[float]) -> float:
    """Sample standard deviation with Bessel's correction (n - 1); needs at least MIN_RUNS finite values."""
    xs = _finite_values(values, "val_bpb values")
    if len(xs) < MIN_RUNS:
        raise ValueError(f"σ needs at least {MIN_RUNS} runs, got {len(xs)}")
    m = math.fsum(xs) / len(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def pooled_sigma(groups: Iterable[Sequence[float]]) -> tuple[float, int] | None:
    """σ pooled over groups of repeated runs (each group: runs of one train.py), with its degrees of freedom.

    The baseline and its noise runs are one group; a borderline run and its confirmation are another. Each
    group of n runs adds n - 1 degrees of freedom: sqrt(Σ within-group squared deviations / Σ (n_i - 1)).
    Groups of one run add nothing. None when no group has two runs.
    """
    ss, dof = 0.0, 0
    for g in groups:
        xs = _finite_values(g, "val_bpb values")
        if len(xs) < 2:
            continue
        m = math.fsum(xs) / len(xs)
        ss += math.fsum((x - m) ** 2 for x in xs)
        dof += len(xs) - 1
    if dof == 0:
        return None
    return math.sqrt(ss / dof), dof


@dataclass(frozen=True)
class RunMean:
    """The mean of one train.py's runs (a borderline run and its confirmations) and its standard error."""

    mean: float
    stderr: float | None  # σ/sqrt(n) with the floor's σ; the runs' own spread when no σ is given (n >= 2)
    n: int


def combine_runs(val_bpbs: Sequence[float], sigma: float | None = None) -> RunMean:
    """Mean and standard error of repeated runs of one train.py.

    With the noise floor's σ the standard error is σ/sqrt(n): two runs' own spread is a poor estimate of the
    noise (one degree of freedom). Without σ it is the runs' sample σ/sqrt(n), None for a single run.
    """
    xs = _finite_values(val_bpbs, "val_bpb values")
    if not xs:
        raise ValueError("combine_runs needs at least one run")
    n = len(xs)
    mean = math.fsum(xs) / n
    if sigma is not None:
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"σ must be a finite number >= 0, got {sigma!r}")
        return RunMean(mean, sigma / math.sqrt(n), n)
    return RunMean(mean, sample_sigma(xs) / math.sqrt(n) if n >= 2 else None, n)


def hardware_fingerprint(gpu_names: Sequence[str] | None = None) -> str:
    """What σ depends on besides the profile and the budget: the accelerator a run trains on.

    gpu_names: the names of the GPUs the runs use (e.g. from core.hardware.nvml_gpus()); none -> the CPU
    (architecture and core count: a run on 2 cores is noisier than on 64). Same machine, same string.
    """
    names = sorted({" ".join(str(n).split()) for n in gpu_names or () if str(n).strip()})
    if names:
        return "gpu " + " + ".join(names)
    return f"cpu {platform.machine() or 'unknown'} x{os.cpu_count() or 1}"


@dataclass(frozen=True)
class NoiseFloor:
    """σ of val_bpb measured on one profile, time budget and machine (stored with the tag)."""

    sigma: float
    val_bpbs: tuple[float, ...]  # every run of the unmodified baseline, its own first run included
    profile: str | None
    time_budget: float
    hardware: str
    measured_at: float  # Unix epoch seconds
    experiments: tuple[str, ...] = field(default=())  # experiment ids of the runs, in val_bpbs' order
    num_steps: tuple[int, ...] = field(default=())  # optimizer steps of each run (the CPU's noise source)
    # later groups of repeated runs of one commit (a win and its confirmation), pooled into sigma
    groups: tuple[tuple[float, ...], ...] = field(default=())

    @property
    def runs(self) -> int:
        """Every run σ rests on: the baseline's runs and those of the pooled groups."""
        return len(self.val_bpbs) + sum(len(g) for g in self.groups)

    @property
    def dof(self) -> int:
        """Degrees of freedom of σ (runs minus one per group)."""
        return len(self.val_bpbs) - 1 + sum(len(g) - 1 for g in self.groups)

    def pooled_with(self, val_bpbs: Sequence[float]) -> "NoiseFloor":
        """This floor with one more group of runs of one commit (a win and its confirmations) pooled into σ.

        A group of one run adds nothing and returns the floor unchanged.
        """
        vals = tuple(_finite_values(val_bpbs, "val_bpb values"))
        if len(vals) < 2:
            return self
        groups = (*self.groups, vals)
        sigma, _ = pooled_sigma([self.val_bpbs, *groups])
        return replace(self, sigma=sigma, groups=groups)

    @property
    def mean(self) -> float:
        """The baseline's val_bpb as the mean of its runs (the reference the first decisions use)."""
        return math.fsum(self.val_bpbs) / len(self.val_bpbs)

    def describe(self) -> str:
        """For the dashboard header: 'noise σ 0.0006 from 3 runs'."""
        return f"noise σ {format_sigma(self.sigma)} from {self.runs} runs"

    def to_json(self) -> dict:
        return {"sigma": self.sigma, "runs": self.runs, "val_bpbs": list(self.val_bpbs), "profile": self.profile,
                "time_budget": self.time_budget, "hardware": self.hardware, "measured_at": self.measured_at,
                "experiments": list(self.experiments), "num_steps": list(self.num_steps),
                "groups": [list(g) for g in self.groups]}

    @classmethod
    def from_json(cls, data) -> "NoiseFloor":
        """Inverse of to_json; raises ValueError with what is wrong (a hand-edited or truncated file)."""
        if not isinstance(data, dict):
            raise ValueError("a noise floor must be a JSON object")
        try:
            vals = tuple(_finite_values(data["val_bpbs"], "val_bpbs"))
            sigma = float(data["sigma"])
            budget = float(data["time_budget"])
            hardware = str(data["hardware"])
            measured_at = float(data["measured_at"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"a noise floor lacks or mangles a field ({e})") from None
        if len(vals) < MIN_RUNS:
            raise ValueError(f"a noise floor needs at least {MIN_RUNS} runs, has {len(vals)}")
        if not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"a noise floor's sigma must be a finite number >= 0, got {sigma!r}")
        profile = data.get("profile")
        try:
            experiments = tuple(str(e) for e in data.get("experiments") or ())
            steps = tuple(int(s) for s in data.get("num_steps") or ())
            groups = tuple(tuple(_finite_values(g, "groups")) for g in data.get("groups") or ())
        except (TypeError, ValueError) as e:
            raise ValueError(f"a noise floor's experiments, num_steps or groups are malformed ({e})") from None
        return cls(sigma, vals, None if profile is None else str(profile), budget, hardware, measured_at,
                   experiments, steps, groups)


def measure(val_bpbs: Sequence[float], profile: str | None, time_budget: float, hardware: str,
            measured_at: float | None = None, experiments: Sequence[str] = (),
            num_steps: Sequence[int] = ()) -> NoiseFloor:
    """The noise floor of these runs of one unmodified train.py (the baseline's own run included)."""
    vals = tuple(_finite_values(val_bpbs, "val_bpb values"))
    return NoiseFloor(sample_sigma(vals), vals, profile, float(time_budget), hardware,
                      time.time() if measured_at is None else float(measured_at), tuple(experiments),
                      tuple(int(s) for s in num_steps))


def remeasure_reason(floor: NoiseFloor | None, profile: str | None, time_budget: float,
                     hardware: str) -> str | None:
    """Why σ must be measured again before it is used, or None when the stored floor still holds.

    σ belongs to one profile, one time budget (fewer steps, more noise) and one machine; any change of these
    makes the old number meaningless.
    """
    if floor is None:
        return "no noise floor has been measured yet"
    if floor.profile != profile:
        return f"the profile changed ({floor.profile} -> {profile})"
    if not math.isclose(floor.time_budget, float(time_budget), rel_tol=1e-9, abs_tol=1e-9):
        return f"the time budget changed ({floor.time_budget:g} s -> {float(time_budget):g} s)"
    if floor.hardware != hardware:
        return f"the hardware changed ({floor.hardware} -> {hardware})"
    return None


def needs_remeasure(floor: NoiseFloor | None, profile: str | None, time_budget: float, hardware: str) -> bool:
    """True when the stored floor does not fit this profile, budget and hardware (see remeasure_reason)."""
    return remeasure_reason(floor, profile, time_budget, hardware) is not None


def format_sigma(sigma: float) -> str:
    """σ with two significant digits: 0.00058, 0.1, 0.012."""
    if sigma == 0 or not math.isfinite(sigma):
        return f"{sigma:g}"
    return f"{sigma:.2g}" if 1e-4 <= abs(sigma) < 1e4 else f"{sigma:.1e}"


def delta_decimals(sigma: float | None) -> int:
    """Decimals that show a val_bpb difference at the resolution of the noise (down to σ's first digit)."""
    if sigma is None or sigma <= 0 or not math.isfinite(sigma):
        return 6
    return min(6, max(2, -math.floor(math.log10(sigma))))
