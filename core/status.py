"""engine.json: the engine's status snapshot as one typed model, its writer, and the one rule for "is it alive".

The engine writes it (StatusWriter, atomically, on every change and as a heartbeat); the CLI and the dashboard
read it (read_status). from_json never raises: a hand-edited or half-written file reads as what it can say.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field, fields, replace

from .lock import lock_held
from .procs import ProcessId, pid_alive
from .workspace import Workspace, read_json

STATUSES = ("running", "paused", "stopping", "stopped")
PHASES = ("idle", "proposing", "validating", "training", "recording")
SLOT_PHASES = ("idle", "starting", "training", "evaluating", "recording")
PROPOSAL_STATES = ("proposing", "validating", "ready")
HEARTBEAT_S = 10.0  # the engine rewrites engine.json at least this often while it lives
STALE_AFTER_S = 6 * HEARTBEAT_S  # a dashboard on another host calls an engine dead after this long without news

# Ids become folder names (experiments/<id>/) and go on screen: anything but what the engine writes is dropped.
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")


def clean_id(v) -> str | None:
    if v is None or isinstance(v, bool):
        return None
    s = str(v)
    return s if SAFE_ID.fullmatch(s) and ".." not in s else None


def _f(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _i(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _s(v, limit: int = 500) -> str | None:
    return str(v)[:limit] if v is not None else None


def _d(v) -> dict:
    return v if isinstance(v, dict) else {}


@dataclass(frozen=True)
class Best:
    commit: str
    val_bpb: float

    def to_json(self) -> dict:
        return {"commit": self.commit, "val_bpb": self.val_bpb}

    @classmethod
    def from_json(cls, data) -> "Best | None":
        d = _d(data)
        commit, val = _s(d.get("commit"), 64), _f(d.get("val_bpb"))
        return cls(commit, val) if commit and val is not None else None


@dataclass(frozen=True)
class SlotRun:
    """One slot (a GPU, a share of the CPU cores, a Ray task) and the run it holds, if any."""

    id: str
    label: str = ""  # "GPU 0", "CPU 1/2", "node-a GPU 0"
    gpu: int | None = None
    node: str | None = None
    phase: str = "idle"  # SLOT_PHASES
    experiment: str | None = None  # id of the run in this slot
    commit: str | None = None
    description: str = ""
    confirms: str | None = None  # a confirmation run: the id of the run it confirms
    started_at: float | None = None
    training_started_at: float | None = None
    time_budget: float | None = None
    child: ProcessId | None = None

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["child"] = self.child.to_json() if self.child else None
        return d

    @classmethod
    def from_json(cls, data) -> "SlotRun | None":
        d = _d(data)
        sid = clean_id(d.get("id"))
        if sid is None:
            return None
        phase = str(d.get("phase") or "idle")
        return cls(id=sid, label=str(d.get("label") or "")[:80], gpu=_i(d.get("gpu")), node=_s(d.get("node"), 120),
                   phase=phase if phase in SLOT_PHASES else "idle", experiment=clean_id(d.get("experiment")),
                   commit=_s(d.get("commit"), 64), description=str(d.get("description") or ""),
                   confirms=clean_id(d.get("confirms")), started_at=_f(d.get("started_at")),
                   training_started_at=_f(d.get("training_started_at")), time_budget=_f(d.get("time_budget")),
                   child=ProcessId.from_json(d.get("child")))


@dataclass(frozen=True)
class Proposal:
    """A proposal in flight: an agent working in its worktree, or a validated change waiting for a slot."""

    id: str
    base: str | None = None  # the best commit it was made from
    state: str = "proposing"  # PROPOSAL_STATES
    description: str = ""
    idea: str | None = None
    started_at: float | None = None
    child: ProcessId | None = None

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["child"] = self.child.to_json() if self.child else None
        return d

    @classmethod
    def from_json(cls, data) -> "Proposal | None":
        d = _d(data)
        pid = clean_id(d.get("id"))
        if pid is None:
            return None
        state = str(d.get("state") or "proposing")
        return cls(id=pid, base=_s(d.get("base"), 64), state=state if state in PROPOSAL_STATES else "proposing",
                   description=str(d.get("description") or ""), idea=_s(d.get("idea"), 2000),
                   started_at=_f(d.get("started_at")), child=ProcessId.from_json(d.get("child")))


@dataclass(frozen=True)
class Current:
    """The one experiment a single-slot view shows: what runs, else what is being proposed."""

    id: str
    phase: str  # proposing | validating | training | evaluating | starting | ...
    description: str = ""
    commit: str | None = None
    started_at: float | None = None
    training_started_at: float | None = None
    time_budget: float | None = None


@dataclass(frozen=True)
class EngineStatus:
    pid: int | None = None
    hostname: str | None = None
    status: str = "stopped"  # STATUSES
    phase: str = "idle"  # PHASES: what the engine's main line is doing (one slot: the current experiment)
    tag: str | None = None
    branch: str | None = None
    agent: str | None = None
    best: Best | None = None
    baseline_val_bpb: float | None = None
    experiments_done: int = 0
    max_experiments: int | None = None
    started_at: float | None = None
    updated_at: float | None = None
    heartbeat_at: float | None = None
    message: str | None = None  # why the engine paused or stopped
    slots: tuple[SlotRun, ...] = ()
    proposals: tuple[Proposal, ...] = ()
    options: dict = field(default_factory=dict)  # slots, lookahead, agents, executor, ...
    extra: dict = field(default_factory=dict)  # sections other modules add (noise, cost, integrity)
    alive: bool = False  # computed by read_status, never written

    # --- views ---
    def current(self) -> Current | None:
        """The experiment a one-slot dashboard shows: the newest running one, else the oldest proposal."""
        running = [s for s in self.slots if s.experiment]
        if running:
            s = max(running, key=lambda s: s.started_at or 0.0)
            return Current(s.experiment, s.phase, s.description, s.commit, s.started_at, s.training_started_at,
                           s.time_budget)
        if self.proposals:
            p = min(self.proposals, key=lambda p: p.started_at or 0.0)
            return Current(p.id, p.state if p.state != "ready" else "validating", p.description, None, p.started_at)
        return None

    def children(self) -> list[ProcessId]:
        return [x.child for x in (*self.slots, *self.proposals) if x.child is not None]

    # --- JSON ---
    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("alive", "extra", "slots",
                                                                                   "proposals", "best")}
        d["best"] = self.best.to_json() if self.best else None
        d["slots"] = [s.to_json() for s in self.slots]
        d["proposals"] = [p.to_json() for p in self.proposals]
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, data) -> "EngineStatus | None":
        if not isinstance(data, dict):
            return None
        status = str(data.get("status") or "stopped")
        phase = str(data.get("phase") or "idle")
        known = {f.name for f in fields(cls)}
        slots = tuple(s for s in (SlotRun.from_json(x) for x in data.get("slots") or [] if isinstance(x, dict)) if s)
        props = tuple(p for p in (Proposal.from_json(x) for x in data.get("proposals") or []
                                  if isinstance(x, dict)) if p)
        return cls(pid=_i(data.get("pid")), hostname=_s(data.get("hostname"), 255),
                   status=status if status in STATUSES else "stopped", phase=phase if phase in PHASES else "idle",
                   tag=_s(data.get("tag"), 100), branch=_s(data.get("branch"), 200), agent=_s(data.get("agent"), 200),
                   best=Best.from_json(data.get("best")), baseline_val_bpb=_f(data.get("baseline_val_bpb")),
                   experiments_done=_i(data.get("experiments_done")) or 0,
                   max_experiments=_i(data.get("max_experiments")), started_at=_f(data.get("started_at")),
                   updated_at=_f(data.get("updated_at")), heartbeat_at=_f(data.get("heartbeat_at")),
                   message=_s(data.get("message"), 2000), slots=slots, proposals=props,
                   options=_d(data.get("options")),
                   extra={k: v for k, v in data.items() if k not in known})


def is_alive(st: EngineStatus | None, ws: Workspace, now: float | None = None) -> bool:
    """The one rule. Same host: the pid lives and holds the workspace lock. Another host sharing the folder
    (the lock and the pid mean nothing across machines): a heartbeat within STALE_AFTER_S."""
    if st is None or st.status == "stopped":
        return False
    if st.hostname in (None, socket.gethostname()):
        return pid_alive(st.pid) and lock_held(ws)
    now = time.time() if now is None else now
    beat = st.heartbeat_at or st.updated_at
    return beat is not None and now - beat < STALE_AFTER_S


def read_status(ws: Workspace, now: float | None = None) -> EngineStatus:
    """engine.json with `alive` set. A snapshot left by an engine that is gone (kill -9, reboot) reads as stopped
    (its last status kept in extra["stale_status"])."""
    st = EngineStatus.from_json(read_json(ws.engine_json, None))
    if st is None:
        return EngineStatus()
    alive = is_alive(st, ws, now)
    if alive:
        return replace(st, alive=True)
    if st.status != "stopped":
        return replace(st, status="stopped", phase="idle", alive=False,
                       extra={**st.extra, "stale_status": st.status})
    return st


def running_engine(ws: Workspace) -> EngineStatus | None:
    """The live engine's status, or None when no engine runs in the workspace."""
    st = read_status(ws)
    return st if st.alive else None


class StatusWriter:
    """The engine's status, written atomically to engine.json on every change (thread-safe)."""

    def __init__(self, ws: Workspace, **fields_):
        self.ws = ws
        self._lock = threading.Lock()
        now = time.time()
        base = {"pid": os.getpid(), "hostname": socket.gethostname(), "status": "running", "started_at": now,
                "updated_at": now, "heartbeat_at": now}
        self._st = EngineStatus(**{**base, **fields_})

    @property
    def status(self) -> EngineStatus:
        with self._lock:
            return self._st

    def update(self, **changes) -> EngineStatus:
        with self._lock:
            now = time.time()
            self._st = replace(self._st, updated_at=now, heartbeat_at=now, **changes)
            _write_atomic(self.ws.engine_json, self._st.to_json())
            return self._st

    def update_extra(self, **sections) -> EngineStatus:
        with self._lock:
            extra = {**self._st.extra, **sections}
        return self.update(extra=extra)

    def set_slot(self, slot: SlotRun) -> EngineStatus:
        with self._lock:
            slots = [s for s in self._st.slots if s.id != slot.id]
            slots.append(slot)
            slots.sort(key=lambda s: int(s.id) if s.id.isdigit() else 0)
        return self.update(slots=tuple(slots))

    def set_proposal(self, prop: Proposal) -> EngineStatus:
        with self._lock:
            props = [p for p in self._st.proposals if p.id != prop.id] + [prop]
        return self.update(proposals=tuple(props))

    def drop_proposal(self, prop_id: str) -> EngineStatus:
        with self._lock:
            props = tuple(p for p in self._st.proposals if p.id != prop_id)
        return self.update(proposals=props)

    def heartbeat(self) -> None:
        self.update()


def _write_atomic(path, data: dict) -> None:
    """Replace engine.json atomically (temp file + os.replace). No fsync: it is rewritten many times per
    experiment, and after a power loss the next engine rewrites it anyway; readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
