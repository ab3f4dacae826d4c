"""Keep, discard or confirm: the ratchet's rules as pure functions (`plain`: upstream's; `noise`: beyond z·σ)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .noise import delta_decimals, format_sigma

RULES = ("plain", "noise")
DEFAULT_Z = 2.0  # against a best measured once, a mere change of seed clears 2σ in ~8 % of runs (σ·√2 apart)
DEFAULT_MAX_CONFIRMATIONS = 1  # a borderline win is re-run once (the rule; more runs cost more)
# sure_z that re-runs every win once before it is kept, not only the borderline ones. bench/decision_sim.py
# (σ 0.0005, 100 runs): false keeps 14 % with borderline confirmations only, 4.5 % with every win confirmed
# (and σ pooled over the confirmation pairs), for 0.0003 of true val_bpb.
CONFIRM_EVERY_WIN = math.inf
# Differences this small are float rounding (2.1 - 1.9 = 0.2000000000000002): a gain equal to the bar to
# 1e-12 is on the bar, not beyond it, so the band's edges do not depend on how the inputs were rounded.
EPS = 1e-12


@dataclass(frozen=True)
class Decision:
    status: str  # keep | discard | confirm (confirm: borderline, run the same commit again with another seed)
    simplification: bool
    reason: str
    z: float | None = None  # the gain (best - mean of the runs) in units of σ; None under the plain rule
    sigma: float | None = None  # the noise floor the decision used
    bar: float | None = None  # the gain a keep needed: max(z·σ, min_delta)
    mean: float | None = None  # the val_bpb the decision used: the mean of the run and its confirmations
    runs: int = 1  # how many runs of this commit the decision saw


def decide(val_bpb: float, best: float | None, lines_added: int, lines_removed: int,
           min_delta: float = 0.0, simplify_tolerance: float = 0.0005) -> Decision:
    """`--decide plain`, upstream's rule: keep an improvement beyond min_delta; also keep a simplification
    (fewer lines) that costs at most simplify_tolerance; discard everything else. No best yet (the
    baseline): keep."""
    if best is None:
        return Decision("keep", False, "baseline")
    if val_bpb < best - min_delta:
        return Decision("keep", False, f"improved by {best - val_bpb:.6f}")
    if lines_removed > lines_added and val_bpb <= best + simplify_tolerance:
        return Decision("keep", True, f"simplification (-{lines_removed - lines_added} lines) "
                                      f"within {simplify_tolerance:g} of the best")
    if val_bpb < best:
        return Decision("discard", False, f"improved by {best - val_bpb:.6f}, not more than min_delta {min_delta:g}")
    return Decision("discard", False, f"worse by {val_bpb - best:.6f}" if val_bpb > best else "no improvement")


def decide_noise(val_bpb: float, best: float | None, sigma: float, *, z: float = DEFAULT_Z,
                 min_delta: float = 0.0, lines_added: int = 0, lines_removed: int = 0,
                 simplify_tolerance: float = 0.0005, confirmations: Sequence[float] = (),
                 max_confirmations: int = DEFAULT_MAX_CONFIRMATIONS, confirm_min_z: float = 0.0,
                 best_runs: int | None = None, sure_z: float | None = None) -> Decision:
    """`--decide noise`: keep only a gain beyond the noise band; re-run a borderline win before keeping it.

    val_bpb: this commit's first run; confirmations: the val_bpbs of its later runs (same commit, other seeds),
    oldest first. The decision uses their mean m. best: the val_bpb of the current best (the mean of its own
    runs where it had several); sigma: the noise floor (one run's σ). The bar is max(z·σ, min_delta):
    - gain = best - m > bar: keep ("improved by 0.0021 (z 3.5, σ 0.0006)");
    - 0 < gain <= bar (beats the best, inside the band): confirm while fewer than max_confirmations
      confirmations ran and the run's z-score exceeds confirm_min_z, else discard "within noise";
    - gain <= 0: discard ("within noise" when the loss is inside the band, else "worse by ...");
    - a simplification (removes more lines than it adds) is kept when m <= best + max(z·σ, simplify_tolerance):
      a change that is not measurably worse and makes train.py shorter is worth having.
    The z-score is gain/σ (None when σ is 0). No best yet (the baseline): keep.

    best_runs (optional): how many runs the best's value is the mean of. Given, σ above becomes the σ of the
    difference of the two means, σ·sqrt(1/n + 1/best_runs) (n: this commit's runs): the best's own value is a
    noisy measurement too, so two runs of one train.py differ by σ·sqrt(2), not σ. None: σ as given (the
    issue's rule, "keep only beyond z·σ").

    sure_z (optional, > z): a first run whose z-score clears the bar but not sure_z is confirmed too before it
    is kept (a clear win, beyond sure_z, is kept at once). None: every win beyond the bar is kept at once.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"σ must be a finite number >= 0, got {sigma!r}")
    if z < 0 or min_delta < 0 or max_confirmations < 0:
        raise ValueError("z, min_delta and max_confirmations must be >= 0")
    if best_runs is not None and best_runs < 1:
        raise ValueError("best_runs must be >= 1")
    runs = [val_bpb, *confirmations]
    n = len(runs)
    m = math.fsum(runs) / n
    if best is None:
        return Decision("keep", False, "baseline", None, sigma, None, m, n)
    s_cmp = sigma if best_runs is None else sigma * math.sqrt(1 / n + 1 / best_runs)
    band = z * s_cmp
    bar = max(band, min_delta)
    gain = best - m
    zs = gain / s_cmp if sigma > 0 else None
    dec = delta_decimals(sigma if sigma > 0 else None)
    of_runs = f" on the mean of {n} runs" if n > 1 else ""
    score = _score(zs, sigma)
    common = dict(z=zs, sigma=sigma, bar=bar, mean=m, runs=n)

    if gain > bar + EPS:
        if sure_z is not None and n - 1 < max_confirmations and zs is not None and zs <= sure_z + EPS:
            beyond = "" if math.isinf(sure_z) else f", not beyond z {sure_z:g}"
            return Decision("confirm", False, f"promising: better by {_amount(gain, dec)} ({score}){beyond}; "
                                              "re-running it with another seed before keeping it", **common)
        return Decision("keep", False, f"improved by {_amount(gain, dec)}{of_runs} ({score})", **common)
    simplify_band = max(band, simplify_tolerance)
    if lines_removed > lines_added and -gain <= simplify_band + EPS:
        return Decision("keep", True, f"simplification (-{lines_removed - lines_added} lines) within "
                                      f"{simplify_band:.{dec}f} of the best{of_runs} ({score})", **common)
    if gain > EPS:
        if n - 1 < max_confirmations and (zs is None or zs > confirm_min_z):
            return Decision("confirm", False, f"borderline: better by {_amount(gain, dec)} ({score}), inside the "
                                              f"bar {bar:.{dec}f}; re-running it with another seed", **common)
        if band >= min_delta:
            return Decision("discard", False, f"within noise{of_runs}: better by {_amount(gain, dec)} ({score})",
                            **common)
        return Decision("discard", False, f"better by {_amount(gain, dec)}{of_runs} ({score}), not more than "
                                          f"min_delta {min_delta:g}", **common)
    if gain >= -EPS:
        return Decision("discard", False, f"no change{of_runs} ({score})", **common)
    if -gain <= band + EPS:
        return Decision("discard", False, f"within noise{of_runs}: worse by {_amount(-gain, dec)} ({score})", **common)
    return Decision("discard", False, f"worse by {_amount(-gain, dec)}{of_runs} ({score})", **common)


def _score(zs: float | None, sigma: float) -> str:
    if zs is None:
        return "σ 0"
    return f"z {_z(zs)}, σ {format_sigma(sigma)}"


def _z(zs: float) -> str:
    return f"{zs:.1f}" if round(zs, 1) != 0 else "0.0"  # never "-0.0"


def _amount(x: float, dec: int) -> str:
    """A difference at the noise's resolution; one too small to show there reads '< 0.0001', not '0.0000'."""
    return f"{x:.{dec}f}" if round(x, dec) != 0 else f"< {10.0 ** -dec:.{dec}f}"


def confidence(decision: Decision) -> str:
    """A short confidence label for a results table: 'z 3.5', 'z 1.2 ×2' (mean of 2 runs), '' under plain."""
    if decision.z is None:
        return ""
    return f"z {_z(decision.z)}" + (f" ×{decision.runs}" if decision.runs > 1 else "")
