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
from core.status import Current, EngineStatus, clean_id, is_alive
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
    """One results.tsv row, with its experiment id when the events tell it (upstream repos have none)."""

    n: int  # 1-based position in results.tsv
    commit: str
    val_bpb: float | None  # None for crashes
    memory_gb: float | None
    status: str  # keep | discard | crash
    description: str
    exp_id: str | None = None
    best_before: float | None = None  # running best before this row (the ratchet's reference)

    @property
    def gain(self) -> float | None:
        """val_bpb change against the best before it (negative is better)."""
        if self.val_bpb is None or self.best_before is None:
            return None
        return self.val_bpb - self.best_before

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
    baseline: float | None = None
    branch: str | None = None
    counts: dict = field(default_factory=dict)
    last_event: dict | None = None
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

    def row_by_id(self, exp_id: str) -> Experiment | None:
        for r in reversed(self.rows):
            if r.exp_id == exp_id:
                return r
        return None


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
    out = []
    for e in ledger_mod.annotate(rows, finished):
        r = e.row
        out.append(Experiment(n=e.n, commit=r.commit, val_bpb=e.val_bpb, memory_gb=r.memory_gb if r.status != "crash"
                              else None, status=r.status, description=r.description, exp_id=clean_id(e.exp_id),
                              best_before=e.reference))
    return tuple(out)


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
        self._events_key = None
        self._events_offset = 0
        self._events_ino = None
        self._events_partial = b""
        self._finished: list[ledger_mod.Finished] = []
        self._last_event: dict | None = None
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
        best = best_commit = None
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
            if r.status == "keep" and r.val_bpb is not None and (best is None or r.val_bpb < best):
                best, best_commit = r.val_bpb, r.commit
        baseline = next((r.val_bpb for r in rows if r.val_bpb is not None), None)
        if engine is not None:
            # the engine knows its best/baseline even before results.tsv has a row for them
            if best is None and engine.best is not None:
                best, best_commit = engine.best.val_bpb, engine.best.commit
            if baseline is None and engine.baseline_val_bpb is not None:
                baseline = engine.baseline_val_bpb
        ideas = 0
        if self.mode == WORKSPACE and ws.ideas_dir.is_dir():
            try:
                ideas = sum(1 for n in os.listdir(ws.ideas_dir) if n.endswith(".txt"))
            except OSError:
                ideas = 0
        return Snapshot(root=ws.root, mode=self.mode, engine=engine, rows=rows, warning=self._ledger.warning(),
                        best=best, best_commit=best_commit, baseline=baseline, branch=git_branch(ws.root),
                        counts=counts, last_event=self._last_event, pending_ideas=ideas, loaded_at=now)

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
            self._last_event = None
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
        last = self._last_event
        for line in lines:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            last = ev
            if ev.get("type") == "experiment_finished":
                finished.append(ledger_mod.Finished.from_event(ev))
        self._finished = finished
        self._last_event = last


def load_snapshot(root: Path, clock=time.time) -> Snapshot:
    return StateReader(root, clock=clock).load()


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


def tail_bytes(path: Path, limit: int = 512 * 1024) -> bytes:
    """The last `limit` bytes of a file, starting at a line boundary."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - limit)
            f.seek(start)
            data = f.read()
    except OSError:
        return b""
    if start > 0:
        nl = data.find(b"\n")
        data = data[nl + 1:] if nl >= 0 else data
    return data
