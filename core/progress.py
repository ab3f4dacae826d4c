"""The trainer's progress lines (`step 00012 (34.5%) | loss: 3.210000 | ... | remaining: 26s`) as data.

train.py is the agent's: its line format may change at any time. Everything here is best effort and never
raises; a line it cannot read is None, and callers then show or decide nothing from it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

_STEP = re.compile(r"\bstep[ :]*(\d+)")
_PCT = re.compile(r"\((\d+(?:\.\d+)?)%\)")
_LOSS = re.compile(r"\bloss[ :=]*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
_REMAINING = re.compile(r"remaining: ?(\d+(?:\.\d+)?) ?s\b")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colour codes a train.py may add around its status line
MAX_CURVE_BYTES = 64 << 20  # a runaway log is read only this far for its curve


@dataclass(frozen=True)
class Progress:
    step: int
    fraction: float | None  # progress through the time budget, 0..1 (None if the line does not say)
    loss: float | None
    remaining_s: float | None = None


def parse_line(line: str) -> Progress | None:
    """One progress line, or None if it is not one (or a train.py printed it in another format)."""
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    m = _STEP.search(line)
    if not m:
        return None
    try:
        step = int(m.group(1))
        pct = _PCT.search(line)
        frac = float(pct.group(1)) / 100 if pct else None
        lm = _LOSS.search(line)
        loss = float(lm.group(1)) if lm else None
        rm = _REMAINING.search(line)
        remaining = float(rm.group(1)) if rm else None
    except (ValueError, OverflowError):
        return None
    if loss is not None and not math.isfinite(loss):
        loss = None
    if frac is not None and not (0.0 <= frac <= 1.5):
        frac = None
    return Progress(step, frac, loss, remaining)


def parse_text(text: str) -> list[Progress]:
    """Every progress update in a log (a `\\r`-rewritten line holds many), in order."""
    out = []
    for seg in re.split(r"[\r\n]", text):
        p = parse_line(seg) if seg else None
        if p is not None:
            out.append(p)
    return out


def read_curve(path: Path) -> list[Progress]:
    """The progress updates of a train.log (empty when it is missing or says nothing readable)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CURVE_BYTES)
    except OSError:
        return []
    return parse_text(data.decode("utf-8", errors="replace"))


def loss_at(curve: list[Progress], fraction: float) -> float | None:
    """The curve's loss at a progress fraction (the last update at or before it), None if it never got there."""
    best = None
    for p in curve:
        if p.fraction is None or p.loss is None:
            continue
        if p.fraction <= fraction + 1e-9:
            best = p.loss
        else:
            break
    return best
