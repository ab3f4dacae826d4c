"""results.tsv: upstream's 5-column experiment ledger. Parse (bad lines reported, never lost) and append."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

HEADER = ("commit", "val_bpb", "memory_gb", "status", "description")
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

    def to_line(self) -> str:
        return format_row(self.commit, self.val_bpb, self.memory_gb, self.status, self.description)


@dataclass
class Ledger:
    rows: list[Row] = field(default_factory=list)
    bad_lines: list[tuple[int, str, str]] = field(default_factory=list)  # (line_no, text, reason)

    @property
    def best(self) -> Row | None:
        """The lowest val_bpb among kept rows (the branch head's result)."""
        kept = [r for r in self.rows if r.status == "keep" and r.val_bpb > 0]
        return min(kept, key=lambda r: r.val_bpb) if kept else None

    @property
    def baseline(self) -> Row | None:
        for r in self.rows:
            if r.status != "crash" and r.val_bpb > 0:
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
