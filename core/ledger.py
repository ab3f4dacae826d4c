"""results.tsv: upstream's 5-column experiment ledger. Parse (bad lines reported, never lost) and append."""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

HEADER = ("commit", "val_bpb", "memory_gb", "status", "description")
ABORTED = "aborted by user"  # the reason of a run a person aborted (a crash row ends with it in parentheses)
HEADER_LINE = "\t".join(HEADER)
STATUSES = ("keep", "discard", "crash")


@dataclass(frozen=True)
class Row:
    commit: str  # 7-char short sha
    val_bpb: float  # 0.0 for crashes
    memory_gb: float  # 0.0 for crashes
    status: str  # keep | discard | crash
    description: str
    line_no: int = 0  # 1-based line in the file (the header is line 1)

    @property
    def measured(self) -> bool:
        """A run that produced a val_bpb (crash rows carry 0.0)."""
        return self.status != "crash" and self.val_bpb > 0


@dataclass
class Ledger:
    rows: list[Row] = field(default_factory=list)
    bad_lines: list[tuple[int, str, str]] = field(default_factory=list)  # (line_no, text, reason)

    @property
    def best(self) -> Row | None:
        """The lowest val_bpb among kept rows (the file alone cannot see a revert; the engine's best is
        the one on its branch, see core.engine.find_best)."""
        kept = [r for r in self.rows if r.status == "keep" and r.measured]
        return min(kept, key=lambda r: r.val_bpb) if kept else None

    @property
    def baseline(self) -> Row | None:
        for r in self.rows:
            if r.measured:
                return r
        return None

    def warning(self) -> str | None:
        if not self.bad_lines:
            return None
        n = len(self.bad_lines)
        first = self.bad_lines[0]
        return (f"results.tsv has {n} malformed line{'s' if n != 1 else ''} (first: line {first[0]}, {first[2]}); "
                "they were skipped and left untouched in the file.")


def clean_description(text: str) -> str:
    """Descriptions are one line without tabs (the TSV format cannot hold them)."""
    return " ".join(str(text).replace("\t", " ").split())[:300] or "(no description)"


def format_row(commit: str, val_bpb: float, memory_gb: float, status: str, description: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    if status == "crash":
        val_bpb, memory_gb = 0.0, 0.0
    return f"{commit[:7]}\t{val_bpb:.6f}\t{memory_gb:.1f}\t{status}\t{clean_description(description)}"


def parse_line(line: str, line_no: int) -> Row:
    """Parse one data line; raises ValueError with a short reason."""
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) != 5:
        raise ValueError(f"expected 5 tab-separated columns, found {len(parts)}")
    commit, bpb, mem, status, desc = parts
    if not commit or not all(c in "0123456789abcdef" for c in commit.lower()):
        raise ValueError(f"commit {commit!r} is not a hex sha")
    try:
        val = float(bpb)
    except ValueError:
        # upstream's crash rows sometimes carry a dash or blank instead of 0.000000
        if status == "crash" and bpb.strip() in ("", "-", "—", "nan"):
            val = 0.0
        else:
            raise ValueError(f"val_bpb {bpb!r} is not a number") from None
    try:
        memory = float(mem)
    except ValueError:
        if status == "crash" and mem.strip() in ("", "-", "—", "nan"):
            memory = 0.0
        else:
            raise ValueError(f"memory_gb {mem!r} is not a number") from None
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not keep, discard or crash")
    if not (math.isfinite(val) and math.isfinite(memory)):
        if status != "crash":
            raise ValueError(f"val_bpb {bpb!r} or memory_gb {mem!r} is not a finite number")
        val, memory = 0.0, 0.0
    return Row(commit, val, memory, status, desc, line_no)


def parse(text: str) -> Ledger:
    ledger = Ledger()
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if i == 1 and line.split("\t")[:2] == ["commit", "val_bpb"]:
            continue
        try:
            ledger.rows.append(parse_line(line, i))
        except ValueError as e:
            ledger.bad_lines.append((i, line, str(e)))
    return ledger


def read(path: Path) -> Ledger:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return Ledger()
    return parse(text)


def append(path: Path, commit: str, val_bpb: float, memory_gb: float, status: str, description: str) -> Row:
    """Append one whole line and fsync; a crash can never leave a half-written line behind.

    The header is written first when the file is new. If the file does not end with a newline
    (a hand edit), one is added so the new row starts on its own line and no old text is lost.
    """
    line = format_row(commit, val_bpb, memory_gb, status, description)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        prefix = ""
        if size == 0:
            prefix = HEADER_LINE + "\n"
        else:
            last = os.pread(fd, 1, size - 1)
            if last != b"\n":
                prefix = "\n"
        os.write(fd, (prefix + line + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return parse_line(line, 0)


# --- annotations: the number each decision was made on -------------------------------------------------

@dataclass(frozen=True)
class Finished:
    """What the engine said when it recorded a row (its experiment_finished event)."""

    exp_id: str | None
    commit: str
    status: str
    reference: float | None = None  # the best val_bpb the run was decided against
    best: float | None = None  # the engine's best after the decision
    kind: str | None = None  # baseline | proposal | confirmation | noise | revert
    confidence: str | None = None  # under the noise rule: "z 3.5", "z 2.4 ×2"
    decided_by: str | None = None  # engine | person
    stopped_early: bool = False  # stopped by the early-stop rule (its reason says where and why)
    reason: str | None = None

    @classmethod
    def from_event(cls, ev: dict) -> "Finished":
        def num(v):
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

        def text(v, limit=300):
            return str(v)[:limit] if isinstance(v, str) else None
        exp_id = ev.get("id")
        return cls(exp_id if isinstance(exp_id, str) else None, str(ev.get("commit") or "")[:40],
                   str(ev.get("status") or ""), num(ev.get("reference")), num(ev.get("best")), text(ev.get("kind"), 20),
                   text(ev.get("confidence"), 40), text(ev.get("decided_by"), 20), ev.get("stopped_early") is True,
                   text(ev.get("reason")))


@dataclass(frozen=True)
class Entry:
    """One results.tsv row with what it was decided on. `reference` is the best before this run as the engine
    saw it (for a run that trained while another was kept, the best it started from), not today's best, so
    a row's delta never changes after the fact."""

    n: int  # 1-based position in results.tsv
    row: Row
    exp_id: str | None
    reference: float | None
    best_after: float | None
    finished: Finished | None = None  # the engine's record of it (None: an upstream ledger or a hand-added row)

    @property
    def val_bpb(self) -> float | None:
        return self.row.val_bpb if self.row.measured else None

    @property
    def delta(self) -> float | None:
        """val_bpb minus the best it was decided against (negative is better); None for crashes and the first."""
        v = self.val_bpb
        return None if v is None or self.reference is None else v - self.reference

    @property
    def improved(self) -> bool:
        """A kept row that lowered the best (the ratchet's steps; a kept simplification may not)."""
        return self.row.status == "keep" and self.val_bpb is not None and (
            self.reference is None or self.val_bpb < self.reference)


def annotate(rows: list[Row], finished: Iterable[Finished] = ()) -> list[Entry]:
    """The one place that says what each row was compared with and what the best was after it.

    finished: the engine's experiment_finished records, matched to rows by (commit, status) in order; where
    they carry the reference and the best (engine workspaces) those are used, otherwise (upstream ledgers,
    rows added by hand) the running best of kept rows, which is upstream's rule."""
    queues: dict[tuple[str, str], deque] = {}
    for f in finished:
        queues.setdefault((f.commit[:7], f.status), deque()).append(f)
    out: list[Entry] = []
    best: float | None = None
    for i, r in enumerate(rows, start=1):
        q = queues.get((r.commit[:7], r.status))
        f = q.popleft() if q else None
        reference = f.reference if f is not None and f.reference is not None else best
        if f is not None and f.best is not None:
            best = f.best
        elif r.status == "keep" and r.measured and (best is None or r.val_bpb < best):
            best = r.val_bpb
        out.append(Entry(i, r, f.exp_id if f else None, reference, best, f))
    return out
