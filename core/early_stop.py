"""Early stop of clear losers: the running loss against the best run's loss at the same progress, beyond a margin.

The rule (pure; the engine feeds it the trainer's output and acts on a stop):
- at each check point c (DEFAULT_CHECKPOINTS: 40 %, 60 %, 80 % of the time budget), on the first progress
  line at or past c (progress f), the gap = loss(f) - best_loss(f) is compared with the margin
      margin(c) = max(k · spread(c), r · remaining(c))
  spread(c): the sample σ of the loss at c across repeated runs of the unmodified baseline (the noise
  runs, Calibration); remaining(c): how much the best run's own loss still fell from f to its end.
- a run stops only when gap > margin. The second term is the warm-down allowance: the lr decays over the
  last half of the budget and a change that trains differently (a larger lr, a later warm-down, a bigger
  model) may be behind mid-run and ahead at the end; a run that is behind by more than the best still gains
  until its end would have to gain twice as much as the best to catch up.
- anything unreadable (a train.py that prints another progress format, a best run without a curve, too few
  noise curves) means no stop and a note saying why, never an exception.
"""

from __future__ import annotations

import codecs
import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .progress import Progress, loss_at, parse_line

DEFAULT_CHECKPOINTS = (0.4, 0.6, 0.8)
# The gap between two runs of one train.py has σ·sqrt(2): 3σ is ~2.1 of its σ (1.7 % per check). On recorded
# CPU runs (bench/early_stop_backtest.py) k = 3 stopped no run that was later kept; k = 2 stopped one.
NOISE_K = 3.0
WARMDOWN_R = 1.0  # behind by more than the best's own remaining gain (see the module docstring)
MIN_NOISE_CURVES = 2  # the baseline's curve and one noise run's
UNREADABLE_AFTER = 50  # output segments without a usable progress line before the format is called unreadable
FORMAT_HINT = "expected lines like `step 00012 (34.5%) | loss: 3.210000 | ...`"


def _curve_points(curve: Iterable[Progress]) -> list[Progress]:
    return [p for p in curve if p.fraction is not None and p.loss is not None]


def _loss_reached(points: Sequence[Progress], fraction: float) -> float | None:
    """The loss at `fraction` of a curve that got there (a log that ends earlier says nothing about it)."""
    if not points or points[-1].fraction + 1e-9 < fraction:
        return None
    return loss_at(points, fraction)


@dataclass(frozen=True)
class Calibration:
    """The loss spread across repeated runs of the unmodified baseline at each check point (from the noise runs)."""

    checkpoints: tuple[float, ...]
    spreads: tuple[float | None, ...]  # sample σ of the loss at each check point; None: fewer than 2 curves got there
    runs: int  # curves used
    k: float = NOISE_K
    r: float = WARMDOWN_R

    def to_json(self) -> dict:
        return {"checkpoints": list(self.checkpoints), "spreads": list(self.spreads), "runs": self.runs,
                "k": self.k, "r": self.r}

    @classmethod
    def from_json(cls, data) -> "Calibration":
        """Inverse of to_json; raises ValueError with what is wrong."""
        try:
            cps = tuple(float(c) for c in data["checkpoints"])
            spreads = tuple(None if s is None else float(s) for s in data["spreads"])
            cal = cls(cps, spreads, int(data["runs"]), float(data.get("k", NOISE_K)), float(data.get("r", WARMDOWN_R)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"an early-stop calibration lacks or mangles a field ({e})") from None
        if len(cps) != len(spreads):
            raise ValueError("an early-stop calibration needs one spread per check point")
        return cal


def calibrate(noise_curves: Sequence[Sequence[Progress]], checkpoints: Sequence[float] = DEFAULT_CHECKPOINTS,
              k: float = NOISE_K, r: float = WARMDOWN_R) -> Calibration:
    """Spread of the loss at each check point across the curves of repeated runs of one train.py.

    noise_curves: core.progress curves (read_curve of each train.log) of the baseline and its noise runs;
    curves without readable progress lines are left out.
    """
    cps = tuple(sorted(float(c) for c in checkpoints))
    usable = [_curve_points(c) for c in noise_curves]
    usable = [c for c in usable if c]
    spreads: list[float | None] = []
    for c in cps:
        vals = [v for v in (_loss_reached(curve, c) for curve in usable) if v is not None]
        if len(vals) < MIN_NOISE_CURVES:
            spreads.append(None)
            continue
        m = math.fsum(vals) / len(vals)
        spreads.append(math.sqrt(math.fsum((v - m) ** 2 for v in vals) / (len(vals) - 1)))
    return Calibration(cps, tuple(spreads), len(usable), k, r)


@dataclass(frozen=True)
class Verdict:
    """One check's outcome. stop: end the run now and record it as a discard with `reason`."""

    stop: bool
    reason: str | None = None  # "stopped early at 62 %: loss 3.41 vs 3.20 for the best at 62 % (margin 0.08)"
    note: str | None = None  # why no stop can be decided for this run (unreadable curve, no calibration)
    checkpoint: float | None = None
    fraction: float | None = None
    loss: float | None = None
    best_loss: float | None = None
    margin: float | None = None

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in ("stop", "reason", "note", "checkpoint", "fraction", "loss",
                                             "best_loss", "margin")}


def margin_at(cal: Calibration, index: int, best_points: Sequence[Progress], fraction: float) -> float | None:
    """The margin at check point `index` for a run at progress `fraction` (None: no spread measured there)."""
    spread = cal.spreads[index]
    if spread is None:
        return None
    here = _loss_reached(best_points, fraction)
    remaining = max(0.0, here - best_points[-1].loss) if here is not None else 0.0
    return max(cal.k * spread, cal.r * remaining)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.0f} %"


def _loss_decimals(margin: float) -> int:
    if margin <= 0 or not math.isfinite(margin):
        return 4
    return min(6, max(2, 1 - math.floor(math.log10(margin))))


class Monitor:
    """Watches one running experiment's progress lines and says when it should stop (at most once).

    Feed it the trainer's raw output (feed_bytes, as it streams) or parsed updates (feed). A call returns a
    Verdict when something happened (a stop, or a note that early stop is off for this run), else None.
    """

    def __init__(self, best_curve: Sequence[Progress], calibration: Calibration | None):
        self.best = _curve_points(best_curve)
        self.cal = calibration
        self.note: str | None = None
        self.verdict: Verdict | None = None  # the stop, once decided
        self.checked: list[Verdict] = []  # every check made (for meta.json and the backtest)
        self._next = 0  # index of the next check point
        self._last_fraction: float | None = None
        self._unreadable = 0
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        if calibration is None or calibration.runs < MIN_NOISE_CURVES:
            self.note = ("early stop is off for this run: it needs the loss curves of at least "
                         f"{MIN_NOISE_CURVES} runs of the baseline to calibrate its margin")
        elif not self.best:
            self.note = ("early stop is off for this run: the best run's train.log has no readable progress "
                         f"lines ({FORMAT_HINT})")
        self._note_given = False

    @property
    def active(self) -> bool:
        """False once the run was stopped or early stop is off for it."""
        return self.verdict is None and self.note is None

    def _give_note(self) -> Verdict | None:
        if self._note_given:
            return None
        self._note_given = True
        return Verdict(False, note=self.note)

    def feed_bytes(self, data: bytes) -> Verdict | None:
        """Raw trainer output, in any chunks (`\\r`-rewritten progress lines included)."""
        return self.feed_text(self._decoder.decode(data))

    def feed_text(self, text: str) -> Verdict | None:
        if not self.active:
            return self._give_note() if self.note else None
        parts = re.split(r"[\r\n]", self._partial + text)
        self._partial = parts.pop()  # the unfinished segment waits for its end
        if len(self._partial) > 4096:
            self._partial = self._partial[-4096:]  # a runaway line without breaks: only its tail matters
        out = None
        for seg in parts:
            if not seg.strip():
                continue
            p = parse_line(seg)
            v = self.feed(p) if p is not None else self._count_unreadable()
            if v is not None:
                out = v
                if not self.active:
                    break
        return out

    def _count_unreadable(self) -> Verdict | None:
        self._unreadable += 1
        if self._unreadable >= UNREADABLE_AFTER and self._last_fraction is None and self.note is None:
            self.note = f"early stop is off for this run: its output has no readable progress lines ({FORMAT_HINT})"
            return self._give_note()
        return None

    def feed(self, p: Progress) -> Verdict | None:
        """One progress update of the running experiment."""
        if not self.active:
            return self._give_note() if self.note else None
        if p.fraction is None or p.loss is None:
            return self._count_unreadable()
        if self._last_fraction is not None and p.fraction < self._last_fraction - 1e-9:
            # progress went backwards: the line means something else than the format says
            self.note = "early stop is off for this run: its progress went backwards (train.py changed its format?)"
            return self._give_note()
        self._last_fraction = p.fraction
        assert self.cal is not None  # active implies a calibration
        cps = self.cal.checkpoints
        # a coarse curve may jump over several check points in one step: only the last one passed is checked
        passed = self._next
        while passed < len(cps) and p.fraction + 1e-9 >= cps[passed]:
            passed += 1
        if passed == self._next:
            return None
        self._next = passed
        index = passed - 1
        best_loss = _loss_reached(self.best, p.fraction)
        margin = margin_at(self.cal, index, self.best, p.fraction)
        check = dict(checkpoint=cps[index], fraction=p.fraction, loss=p.loss, best_loss=best_loss, margin=margin)
        if best_loss is None or margin is None or p.loss - best_loss <= margin:
            self.checked.append(Verdict(False, **check))
            return None
        dec = _loss_decimals(margin)
        self.verdict = Verdict(True, reason=(f"stopped early at {_pct(p.fraction)}: loss {p.loss:.{dec}f} vs "
                                             f"{best_loss:.{dec}f} for the best at {_pct(p.fraction)} "
                                             f"(margin {margin:.{dec}f})"), **check)
        self.checked.append(self.verdict)
        return self.verdict

    def finish(self) -> Verdict:
        """The run ended (or the log was read to its end): the stop if there was one, else no stop with a note
        where the curve could not be read."""
        if self.verdict is not None:
            return self.verdict
        if self.note is None and self._last_fraction is None:
            self.note = f"early stop did not check this run: no readable progress lines ({FORMAT_HINT})"
        return Verdict(False, note=self.note)


def replay(best_curve: Sequence[Progress], curve: Sequence[Progress], calibration: Calibration | None) -> Verdict:
    """A finished run's curve replayed through the rule: the stop it would have made, or no stop (with a note)."""
    mon = Monitor(best_curve, calibration)
    for p in curve:
        mon.feed(p)
        if not mon.active:
            break
    return mon.finish()
