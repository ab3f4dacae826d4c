"""experiments/NNNN/meta.json: one experiment's record as one typed model (the engine writes it, recovery and the
dashboard read it). from_json never raises: a hand-edited or half-written file reads as what it can say."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .workspace import atomic_write_json, read_json

KINDS = ("baseline", "proposal", "confirmation", "noise", "revert")
# in flight: written before each step, so that recovery after kill -9 knows how far it got
ACTIVE = ("proposing", "ready", "queued", "training", "recording")
FINAL = ("keep", "discard", "crash", "skipped")
STATUSES = ACTIVE + FINAL + ("running",)  # "running": what milestone-1 engines wrote while in flight


def number(v) -> float | None:
    """A finite JSON number as float (never a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v, limit: int = 4000) -> str | None:
    return str(v)[:limit] if v is not None else None


@dataclass
class AgentUsage:
    """What the agent reported about its proposal (through $AUTORESEARCH_USAGE_FILE)."""

    name: str | None = None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    cost_estimated: bool = False  # a price from core.agents.pricing, not the vendor's own figure
    turns: int | None = None
    error: str | None = None  # the agent's own one-sentence error (bad key, rate limit...)
    error_kind: str | None = None  # auth | rate_limit | network | version | other

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data) -> "AgentUsage":
        d = data if isinstance(data, dict) else {}
        return cls(name=_str(d.get("name"), 100), model=_str(d.get("model"), 100),
                   input_tokens=_int(d.get("input_tokens")), output_tokens=_int(d.get("output_tokens")),
                   cost_usd=number(d.get("cost_usd")), cost_estimated=d.get("cost_estimated") is True,
                   turns=_int(d.get("turns")),
                   error=_str(d.get("error"), 500), error_kind=_str(d.get("error_kind"), 20))


@dataclass
class ExperimentMeta:
    id: str
    tag: str | None = None
    branch: str | None = None
    kind: str = "proposal"  # KINDS
    status: str = "proposing"  # ACTIVE while in flight, FINAL once recorded
    description: str | None = None
    commit: str | None = None  # the commit that was trained (or the snapshot of a rejected proposal)
    parent: str | None = None  # the commit it was trained on top of: the best when it started
    base: str | None = None  # the best commit its proposal was made from (its worktree's commit)
    reference_val_bpb: float | None = None  # the best val_bpb this run is decided against
    reference_id: str | None = None  # the experiment that measured that best
    confirms: str | None = None  # a confirmation run: the experiment whose change it trains again
    confirmed_by: str | None = None
    slot: dict | None = None  # {id, label, gpu, node}
    seed: int | None = None
    val_bpb: float | None = None
    memory_gb: float | None = None
    metrics: dict = field(default_factory=dict)
    reason: str | None = None
    decided_by: str = "engine"  # engine | person
    simplification: bool = False
    lines_added: int = 0
    lines_removed: int = 0
    idea: str | None = None
    agent: AgentUsage | None = None
    started_at: float | None = None
    training_started_at: float | None = None
    finished_at: float | None = None
    timings: dict = field(default_factory=dict)  # propose_s, validate_s, queue_s, train_s, record_s
    tsv_offset: int = 0  # size of results.tsv when it started: its row, if any, comes after
    extra: dict = field(default_factory=dict)  # sections other modules add (noise, integrity, ...)

    @property
    def baseline(self) -> bool:
        return self.kind == "baseline"

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "agent")}
        d["agent"] = self.agent.to_json() if self.agent else None
        d["baseline"] = self.baseline  # milestone-1 readers look for it
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, data) -> "ExperimentMeta | None":
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            return None
        known = {f.name for f in fields(cls)} | {"baseline"}
        kind = data.get("kind") if data.get("kind") in KINDS else ("baseline" if data.get("baseline") else "proposal")
        status = data.get("status") if data.get("status") in STATUSES else "crash"
        return cls(
            id=data["id"][:40], tag=_str(data.get("tag"), 100), branch=_str(data.get("branch"), 200), kind=kind,
            status=status, description=_str(data.get("description"), 2000), commit=_str(data.get("commit"), 64),
            parent=_str(data.get("parent"), 64), base=_str(data.get("base"), 64),
            reference_val_bpb=number(data.get("reference_val_bpb")), reference_id=_str(data.get("reference_id"), 40),
            confirms=_str(data.get("confirms"), 40), confirmed_by=_str(data.get("confirmed_by"), 40),
            slot=data.get("slot") if isinstance(data.get("slot"), dict) else None, seed=_int(data.get("seed")),
            val_bpb=number(data.get("val_bpb")), memory_gb=number(data.get("memory_gb")),
            metrics=data.get("metrics") if isinstance(data.get("metrics"), dict) else {},
            reason=_str(data.get("reason")), decided_by=str(data.get("decided_by") or "engine")[:20],
            simplification=data.get("simplification") is True, lines_added=_int(data.get("lines_added")) or 0,
            lines_removed=_int(data.get("lines_removed")) or 0, idea=_str(data.get("idea")),
            agent=AgentUsage.from_json(data["agent"]) if isinstance(data.get("agent"), dict) else None,
            started_at=number(data.get("started_at")), training_started_at=number(data.get("training_started_at")),
            finished_at=number(data.get("finished_at")),
            timings=data.get("timings") if isinstance(data.get("timings"), dict) else {},
            tsv_offset=_int(data.get("tsv_offset")) or 0,
            extra={k: v for k, v in data.items() if k not in known})

    def with_(self, **changes) -> "ExperimentMeta":
        return replace(self, **changes)


def meta_path(exp_dir: Path) -> Path:
    return Path(exp_dir) / "meta.json"


def read_meta(exp_dir: Path) -> ExperimentMeta | None:
    return ExperimentMeta.from_json(read_json(meta_path(exp_dir), None))


def write_meta(exp_dir: Path, meta: ExperimentMeta) -> None:
    """Atomic (temp file + rename, fsynced): recovery relies on each step being on disk before the next."""
    atomic_write_json(meta_path(exp_dir), meta.to_json())


@dataclass(frozen=True)
class Spending:
    """What the agent cost, summed over experiments' meta.json (rejected and crashed proposals count too)."""

    usd: float = 0.0
    estimated: bool = False  # some figure came from a price table, not from the vendor
    proposals: int = 0  # proposals that reported a cost
    input_tokens: int = 0
    output_tokens: int = 0


def spending(experiments_dir: Path, tag: str | None = None) -> Spending:
    usd, est, n, tin, tout = 0.0, False, 0, 0, 0
    d = Path(experiments_dir)
    for p in (d.iterdir() if d.is_dir() else []):
        m = read_meta(p) if p.name.isdigit() else None
        if m is None or m.agent is None or (tag is not None and m.tag != tag):
            continue
        tin += m.agent.input_tokens or 0
        tout += m.agent.output_tokens or 0
        if m.agent.cost_usd:
            usd += m.agent.cost_usd
            n += 1
            est |= m.agent.cost_estimated
    return Spending(usd, est, n, tin, tout)
