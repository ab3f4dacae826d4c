"""Reads a workspace (engine.json, results.tsv, events.jsonl, git HEAD) into an immutable Snapshot."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from core import ledger as ledger_mod
from core.errors import UserError
from core.ledger import ABORTED
from core.meta import number
from core.status import Current, EngineStatus, Proposal, SlotRun, clean_id, is_alive
from core.workspace import Workspace, read_json

WORKSPACE = "workspace"  # an autoresearch workspace: the dashboard can steer its engine
UPSTREAM = "upstream"  # a plain upstream-style repo (results.tsv + run.log + git): read-only


def classify(root: Path) -> str:
    """Which kind of folder this is; UserError (one sentence) if the dashboard cannot show it."""
    if not root.exists():
        raise UserError(f"{root} does not exist; pass the folder of an autoresearch workspace, or try --demo.")
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; pass the folder of an autoresearch workspace, or try --demo.")
    ws = Workspace(root)
    if ws.has_state() or (root / "constants.py").is_file():
        return WORKSPACE
    if ws.results_tsv.is_file() or ws.run_log.is_file() or (ws.train_py.is_file() and (root / ".git").exists()):
        return UPSTREAM
    raise UserError(f"{root} is not an autoresearch workspace (no .autoresearch/, results.tsv, run.log or train.py); "
                    "run `autoresearch setup` there first, or try `autoresearch-tui --demo`.")


# --- the snapshot ---

@dataclass(frozen=True)
class Experiment:
    """One results.tsv row as core.ledger.annotate sees it (the best it was decided against, the best after it),
    with its experiment id when the events tell it (upstream repos have none)."""

    entry: ledger_mod.Entry
    exp_id: str | None = None  # the entry's id, if it is safe to show and to use as a folder name

    @property
    def n(self) -> int:
        """1-based position in results.tsv."""
        return self.entry.n

    @property
    def commit(self) -> str:
        return self.entry.row.commit

    @property
    def status(self) -> str:
        return self.entry.row.status  # keep | discard | crash

    @property
    def description(self) -> str:
        return self.entry.row.description

    @property
    def val_bpb(self) -> float | None:
        return self.entry.val_bpb  # None for crashes

    @property
    def memory_gb(self) -> float | None:
        return None if self.status == "crash" else self.entry.row.memory_gb

    @property
    def reference(self) -> float | None:
        """The best val_bpb this run was decided against (None for the first run)."""
        return self.entry.reference

    @property
    def delta(self) -> float | None:
        """val_bpb minus the best it was decided against: the number the decision was made on (negative is better).
        It never changes after the fact, whatever is kept later."""
        return self.entry.delta

    @property
    def best_after(self) -> float | None:
        return self.entry.best_after

    @property
    def aborted(self) -> bool:
        """A crash row the person caused: results.tsv keeps upstream's crash status and the engine appends the
        reason, "(aborted by user)" (core.engine.ABORTED), to the description."""
        return self.status == "crash" and self.description.rstrip().endswith(f"({ABORTED})")

    @property
    def label(self) -> str:
        return self.exp_id or f"#{self.n}"


@dataclass(frozen=True)
class Snapshot:
    root: Path
    mode: str
    engine: EngineStatus | None = None
    rows: tuple[Experiment, ...] = ()
    warning: str | None = None
    best: float | None = None
    best_commit: str | None = None
    best_exp_id: str | None = None  # the experiment that holds the best (its train.log is the curve to beat)
    baseline: float | None = None
    branch: str | None = None
    counts: dict = field(default_factory=dict)
    pending_ideas: int = 0
    loaded_at: float = 0.0

    @property
    def controllable(self) -> bool:
        return self.mode == WORKSPACE

    @property
    def engine_alive(self) -> bool:
        return bool(self.engine and self.engine.alive)

    @property
    def current(self) -> Current | None:
        return self.engine.current() if self.engine_alive else None

    @property
    def slots(self) -> tuple[SlotRun, ...]:
        """The engine's slots while it lives (a dead engine's engine.json says nothing about now)."""
        return self.engine.slots if self.engine_alive else ()

    @property
    def proposals(self) -> tuple[Proposal, ...]:
        return self.engine.proposals if self.engine_alive else ()

    @property
    def running(self) -> tuple[SlotRun, ...]:
        """Slots with a run in them."""
        return tuple(s for s in self.slots if s.experiment)

    @property
    def parallel(self) -> bool:
        """Several slots, or proposals made ahead of the runs (the scheduler): the dashboard adds its Slots pane.
        One slot with lookahead 0 (milestone 1's loop) never shows it, so its dashboard looks as it always did."""
        e = self.engine
        if not self.engine_alive:
            return False
        lookahead = e.options.get("lookahead")
        ahead = isinstance(lookahead, int) and not isinstance(lookahead, bool) and lookahead > 0
        return len(e.slots) > 1 or ahead or len(self.running) + len(e.proposals) > 1


def parse_engine(data, ws: Workspace, now: float) -> EngineStatus | None:
    """engine.json as the typed model, with `alive` decided by the one rule in core.status."""
    st = EngineStatus.from_json(data)
    if st is None:
        return None
    return dataclasses.replace(st, alive=is_alive(st, ws, now))


def git_branch(root: Path) -> str | None:
    """The checked-out branch from .git/HEAD (no subprocess: this runs every poll)."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            target = git.read_text(encoding="utf-8").strip().removeprefix("gitdir:").strip()
            git = (root / target).resolve()
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if head.startswith("ref:"):
        return head[4:].strip().removeprefix("refs/heads/")
    return f"detached at {head[:7]}" if head else None


def build_rows(rows: list[ledger_mod.Row], finished: list[ledger_mod.Finished]) -> tuple[Experiment, ...]:
    """results.tsv rows joined with the engine's decisions (core.ledger.annotate): ids, and the best each row
    was decided against. An upstream ledger (no events) keeps ids None and upstream's running best."""
    return tuple(Experiment(e, clean_id(e.exp_id)) for e in ledger_mod.annotate(rows, finished))


def final_best(rows: tuple[Experiment, ...]) -> tuple[float | None, Experiment | None]:
    """The best after the last decision and the kept row that holds it, as `autoresearch results` says
    (core.report.summarize): the engine's best, which a revert can make differ from the lowest kept row."""
    if not rows:
        return None, None
    best = rows[-1].best_after
    if best is None:
        return None, None
    row = next((r for r in reversed(rows) if r.status == "keep" and r.val_bpb == best), None)
    return best, row


def _stat_key(path: Path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class StateReader:
    """Builds Snapshots of one workspace, re-reading only what changed (cheap enough to poll twice a second)."""

    def __init__(self, root: Path, mode: str | None = None, clock=time.time):
        self.ws = Workspace(Path(root))
        self.mode = mode or classify(self.ws.root)
        self.clock = clock
        self._ledger_key = None
        self._ledger: ledger_mod.Ledger = ledger_mod.Ledger()
        self._events_offset = 0
        self._events_ino = None
        self._events_partial = b""
        self._finished: list[ledger_mod.Finished] = []
        self._rows: tuple[Experiment, ...] = ()
        self._rows_key = None

    def signature(self) -> tuple:
        """Changes whenever anything the snapshot shows changes on disk (one stat per file)."""
        ws = self.ws
        return (_stat_key(ws.engine_json), _stat_key(ws.results_tsv), _stat_key(ws.events),
                _stat_key(ws.root / ".git" / "HEAD"), _stat_key(ws.ideas_dir))

    def load(self) -> Snapshot:
        ws = self.ws
        now = self.clock()
        engine = parse_engine(read_json(ws.engine_json), ws, now) if self.mode == WORKSPACE else None
        self._read_ledger()
        self._read_events()
        rows_key = (self._ledger_key, len(self._finished))
        if rows_key != self._rows_key:
            self._rows = build_rows(self._ledger.rows, self._finished)
            self._rows_key = rows_key
        rows = self._rows
        counts = {"keep": 0, "discard": 0, "crash": 0}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        best, best_row = final_best(rows)
        best_commit = best_row.commit if best_row else None
        best_exp_id = best_row.exp_id if best_row else None
        baseline = next((r.val_bpb for r in rows if r.val_bpb is not None), None)
        if engine is not None:
            # the engine knows its best/baseline even before results.tsv has a row for them
            if engine.best is not None and (best is None or engine.alive):
                # a live engine's best leads results.tsv by the moment between its decision and the row
                short = engine.best.commit[:7]
                if best_commit is None or short != best_commit[:7]:
                    best_row = next((r for r in reversed(rows) if r.status == "keep" and r.commit[:7] == short), None)
                    best_exp_id = best_row.exp_id if best_row else None
                best, best_commit = engine.best.val_bpb, short
            if baseline is None and engine.baseline_val_bpb is not None:
                baseline = engine.baseline_val_bpb
        ideas = 0
        if self.mode == WORKSPACE and ws.ideas_dir.is_dir():
            try:
                ideas = sum(1 for n in os.listdir(ws.ideas_dir) if n.endswith(".txt"))
            except OSError:
                ideas = 0
        return Snapshot(root=ws.root, mode=self.mode, engine=engine, rows=rows, warning=self._ledger.warning(),
                        best=best, best_commit=best_commit, best_exp_id=best_exp_id, baseline=baseline, branch=git_branch(ws.root),
                        counts=counts, pending_ideas=ideas, loaded_at=now)

    def _read_ledger(self) -> None:
        key = _stat_key(self.ws.results_tsv)
        if key == self._ledger_key:
            return
        self._ledger = ledger_mod.read(self.ws.results_tsv)
        self._ledger_key = key

    def _read_events(self) -> None:
        """Read only the new bytes of events.jsonl; a truncated or replaced file is read again from the start."""
        path = self.ws.events
        try:
            st = os.stat(path)
        except OSError:
            self._events_offset, self._events_ino, self._events_partial = 0, None, b""
            if self._finished:
                self._finished = []
            return
        if st.st_ino != self._events_ino or st.st_size < self._events_offset:
            self._events_offset, self._events_ino, self._events_partial = 0, st.st_ino, b""
            self._finished = []
        if st.st_size == self._events_offset:
            return
        try:
            with open(path, "rb") as f:
                f.seek(self._events_offset)
                data = f.read(st.st_size - self._events_offset)
        except OSError:
            return
        self._events_offset += len(data)
        data = self._events_partial + data
        lines = data.split(b"\n")
        self._events_partial = lines.pop()  # an event being written right now
        finished = list(self._finished)  # the list is shared with published snapshots' inputs: copy on write
        for line in lines:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if isinstance(ev, dict) and ev.get("type") == "experiment_finished":
                finished.append(ledger_mod.Finished.from_event(ev))
        self._finished = finished


# --- per-experiment files (detail screen) ---

@dataclass(frozen=True)
class ExperimentFiles:
    meta: dict
    metrics: dict
    diff: str | None
    train_log: Path | None
    agent_log: Path | None


def read_experiment(root: Path, exp_id: str | None) -> ExperimentFiles:
    if not exp_id or clean_id(exp_id) != exp_id:
        return ExperimentFiles({}, {}, None, None, None)
    d = Workspace(root).experiment_dir(exp_id)
    meta = read_json(d / "meta.json", {})
    metrics = read_json(d / "metrics.json", {})
    diff = None
    try:
        with open(d / "diff.patch", "rb") as f:
            diff = f.read(2_000_000).decode("utf-8", "replace")  # a runaway diff is cut, not loaded whole
    except OSError:
        pass
    return ExperimentFiles(meta if isinstance(meta, dict) else {}, metrics if isinstance(metrics, dict) else {},
                           diff, (d / "train.log") if (d / "train.log").is_file() else None,
                           (d / "agent.log") if (d / "agent.log").is_file() else None)


def noise_of(engine: EngineStatus | None) -> tuple[float, float] | None:
    """(σ, z) of engine.json's extra["noise"] once σ is measured; None otherwise (the header and the chart)."""
    noise = engine.extra.get("noise") if engine is not None else None
    if not isinstance(noise, dict):
        return None
    sigma, z = number(noise.get("sigma")), number(noise.get("z"))
    return (sigma, z) if sigma is not None and z is not None and sigma > 0 and z > 0 else None
