"""Live runs as data: each running experiment's train.log, read incrementally, becomes a loss curve and a stage."""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.progress import Progress, parse_line, read_curve

MAX_POINTS = 512  # points kept per curve: halved (every other one) whenever it grows past this
MAX_READ = 4 << 20  # bytes read per poll; a runaway log skips ahead instead of lagging behind
_SPLIT = re.compile(r"[\r\n]")
_EVAL = re.compile(r"^(?:---\s*$|val_bpb\b|eval)", re.IGNORECASE)

# stage -> what is going on, said under the run's line while its log has little to show
STAGES = {
    "starting": "Python imports torch, loads the data and builds the model; the trainer prints once that is done",
    "warm-up": "the first steps are not timed (on CUDA they compile the model): they do not count against the budget",
    "training": "",
    "evaluating": "the training budget is spent: prepare.py measures val_bpb on the validation data",
    "recording": "the engine records the result and decides keep or discard",
}

Curve = tuple[Progress, ...]  # progress updates that carry a fraction of the budget and a loss


def thin(points: list, limit: int = MAX_POINTS) -> list:
    """Every other point until at most `limit` remain (the last point always stays)."""
    while len(points) > limit:
        last = points[-1]
        points = points[::2]
        if points[-1] != last:
            points.append(last)
    return points


def curve_of(progress: list[Progress]) -> Curve:
    return tuple(thin([p for p in progress if p.fraction is not None and p.loss is not None]))


class LogProgress:
    """What one train.log has said so far: progress updates as a curve, the last update, and the stage markers.

    poll() reads only the bytes appended since the previous call (bounded per call), so following a run costs
    one stat() a second when nothing happens. A file that shrinks or is replaced starts over.
    """

    def __init__(self, path: Path, max_read: int = MAX_READ):
        self.path = Path(path)
        self.max_read = max_read
        self.reset()

    def reset(self) -> None:
        self.offset = 0
        self.ino = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self.points: list[Progress] = []
        self.last: Progress | None = None
        self.size = 0
        self.output = False  # the trainer printed something
        self.evaluating = False  # a line after the progress updates says the training loop ended
        self.skipped = 0

    def poll(self) -> bool:
        """Read what was appended; True if anything changed."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        if self.ino is not None and (st.st_ino != self.ino or st.st_size < self.offset):
            self.reset()
        self.ino = st.st_ino
        self.size = st.st_size
        if st.st_size <= self.offset:
            return False
        if st.st_size - self.offset > self.max_read:
            # a flood: keep the newest part (the curve gets a gap, the stage and the last loss stay right)
            self.skipped += st.st_size - self.max_read - self.offset
            self.offset = st.st_size - self.max_read
            self._partial = ""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(st.st_size - self.offset)
        except OSError:
            return False
        self.offset += len(data)
        self.feed(self._decoder.decode(data))
        return True

    def feed(self, text: str) -> None:
        if not text:
            return
        self.output = True
        pieces = _SPLIT.split(self._partial + text)
        self._partial = pieces.pop()[-4096:]  # an unfinished segment: read again with the next bytes
        for seg in pieces:
            self._segment(seg)
        # a `\r` progress update stays unfinished until the next one: the newest state counts already
        p = parse_line(self._partial) if self._partial else None
        if p is not None:
            self._progress(p)

    def _segment(self, seg: str) -> None:
        seg = seg.strip()
        if not seg:
            return
        p = parse_line(seg)
        if p is not None:
            self._progress(p)
        elif self.last is not None and _EVAL.match(seg):
            self.evaluating = True

    def _progress(self, p: Progress) -> None:
        if self.last == p:
            return
        self.last = p
        self.evaluating = False
        if p.fraction is not None and p.loss is not None:
            if self.points and self.points[-1].step == p.step:
                self.points[-1] = p  # the same step, read again (it was unfinished on the previous poll)
            else:
                self.points.append(p)
                if len(self.points) > 2 * MAX_POINTS:
                    self.points = thin(self.points)

    @property
    def curve(self) -> Curve:
        return tuple(thin(list(self.points)))

    def stage(self, slot_phase: str | None = None) -> str:
        """starting | warm-up | training | evaluating | recording, from the engine's phase and the log."""
        if slot_phase == "recording":
            return "recording"
        if slot_phase == "evaluating" or self.evaluating:
            return "evaluating"
        last = self.last
        if last is None:
            return "starting"
        if last.fraction is not None and last.fraction >= 1.0 or last.remaining_s == 0:
            return "evaluating"
        if last.fraction == 0.0:
            return "warm-up"  # the first steps (compilation on CUDA) are not timed: progress stays at 0
        return "training"


@dataclass(frozen=True)
class RunView:
    """One running experiment as the dashboard shows it."""

    exp_id: str
    slot_id: str | None
    label: str  # the slot's label ("GPU 0", "CPU 1/2"), "" for a one-slot engine that names none
    stage: str  # see STAGES
    elapsed_s: float | None  # wall time since the trainer started
    trained_s: float | None  # the trainer's own training time (its progress through the budget)
    budget_s: float | None
    last: Progress | None
    curve: Curve
    output: bool  # the trainer has printed anything at all

    @property
    def loss(self) -> float | None:
        return self.last.loss if self.last else None

    @property
    def fraction(self) -> float | None:
        return self.last.fraction if self.last else None


def trained_seconds(last: Progress | None, budget: float | None) -> float | None:
    """The trainer's own training time: its progress through the budget, else the budget minus its 'remaining'."""
    if last is None or not budget:
        return None
    if last.fraction is not None:
        return min(1.0, last.fraction) * budget
    if last.remaining_s is not None:
        return max(0.0, budget - last.remaining_s)
    return None


class RunWatcher:
    """Follows the train.log of every running slot and the best run's curve (called once a second from a thread)."""

    def __init__(self, experiments_dir: Path):
        self.dir = Path(experiments_dir)
        self._logs: dict[str, LogProgress] = {}
        self._best: tuple[str, int, Curve] | None = None  # (experiment id, train.log size, curve)

    def sample(self, slots, now: float) -> dict[str, RunView]:
        views = {}
        wanted = {s.experiment for s in slots if s.experiment}
        for exp_id in list(self._logs):
            if exp_id not in wanted:
                del self._logs[exp_id]
        for s in slots:
            if not s.experiment:
                continue
            log = self._logs.get(s.experiment)
            if log is None:
                log = self._logs[s.experiment] = LogProgress(self.dir / s.experiment / "train.log")
            log.poll()
            start = s.training_started_at or s.started_at
            views[s.experiment] = RunView(
                exp_id=s.experiment, slot_id=s.id, label=s.label, stage=log.stage(s.phase),
                elapsed_s=None if start is None else max(0.0, now - start),
                trained_s=trained_seconds(log.last, s.time_budget), budget_s=s.time_budget, last=log.last,
                curve=log.curve, output=log.output)
        return views

    def best_curve(self, exp_id: str | None) -> Curve:
        """The loss curve of the run that holds the best (its train.log), re-read only when that run changes."""
        if not exp_id:
            self._best = None
            return ()
        path = self.dir / exp_id / "train.log"
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1
        if self._best is None or self._best[:2] != (exp_id, size):
            self._best = (exp_id, size, curve_of(read_curve(path)) if size >= 0 else ())
        return self._best[2]
