"""`autoresearch results`: the human-readable (or JSON) report of results.tsv, like the seed's show-results.sh."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass

from . import ledger as ledger_mod
from .errors import UserError
from .events import read_finished
from .ledger import Entry, Finished, Ledger, Row, annotate
from .meta import Spending, spending
from .workspace import Workspace

TOP_N = 10
RECENT_N = 20


@dataclass
class Summary:
    entries: list[Entry]
    kept: int
    discarded: int
    crashed: int
    baseline: Row | None
    best: Row | None
    spent: Spending | None = None

    @property
    def rows(self) -> list[Row]:
        return [e.row for e in self.entries]

    @property
    def deltas(self) -> list[float | None]:
        """Per row: val_bpb minus the best it was decided against (core.ledger.annotate)."""
        return [e.delta for e in self.entries]

    @property
    def total(self) -> int:
        return len(self.entries)

    @property
    def keep_rate(self) -> float:
        return self.kept / self.total if self.total else 0.0

    @property
    def improvements(self) -> list[tuple[Row, float]]:
        """Kept rows that lowered the best, with their delta (negative), best first."""
        out = [(e.row, e.delta) for e in self.entries if e.improved and e.delta is not None]
        return sorted(out, key=lambda x: x[1])


def summarize(ledger: Ledger, finished: list[Finished] = ()) -> Summary:
    """Counts, baseline, best and per-row deltas against the best each row was decided on."""
    entries = annotate(ledger.rows, finished)
    rows = ledger.rows
    best = ledger.best
    final = entries[-1].best_after if entries else None
    if final is not None:  # the engine's best (a revert or a confirmed mean can differ from the lowest keep)
        best = next((e.row for e in reversed(entries) if e.row.status == "keep" and e.val_bpb == final), best)
    return Summary(entries=entries, kept=sum(r.status == "keep" for r in rows),
                   discarded=sum(r.status == "discard" for r in rows),
                   crashed=sum(r.status == "crash" for r in rows),
                   baseline=ledger.baseline, best=best)


_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


def printable(text: str) -> str:
    """Descriptions come from agents: drop escape sequences whole (not just their ESC, which would leave "[31m"
    behind) and control characters, so they cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else " " for ch in _ANSI.sub("", text))


def load_summary(ws: Workspace) -> Summary:
    """results.tsv annotated with the engine's decisions (events.jsonl), for the report and the plot."""
    s = summarize(load(ws), read_finished(ws.events))
    s.spent = spending(ws.experiments_dir)
    return s


def load(ws: Workspace) -> Ledger:
    """Read results.tsv; UserError if it does not exist; malformed lines are warned about on stderr."""
    if not ws.results_tsv.is_file():
        raise UserError(f"there is no results.tsv in {ws.root} yet; run `autoresearch loop` "
                        "(or `autoresearch run`) first.")
    ledger = ledger_mod.read(ws.results_tsv)
    warning = ledger.warning()
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return ledger


def _row_json(r: Row, delta: float | None, index: int, f: Finished | None = None) -> dict:
    out = {"n": index, "commit": r.commit, "val_bpb": r.val_bpb, "memory_gb": r.memory_gb, "status": r.status,
           "description": r.description, "delta": None if delta is None else round(delta, 6)}
    if f is not None:
        out.update(id=f.exp_id, kind=f.kind, confidence=f.confidence, decided_by=f.decided_by)
    return out


def to_json(s: Summary, kept_only: bool, bad_lines: list) -> dict:
    improvement = None
    if s.baseline and s.best:
        improvement = s.baseline.val_bpb - s.best.val_bpb
    rows = [_row_json(e.row, e.delta, e.n, e.finished) for e in s.entries if not kept_only or e.row.status == "keep"]
    return {
        "experiments": s.total, "kept": s.kept, "discarded": s.discarded, "crashed": s.crashed,
        "keep_rate": round(s.keep_rate, 4),
        "baseline": _row_json(s.baseline, None, s.rows.index(s.baseline) + 1) if s.baseline else None,
        "best": _row_json(s.best, None, s.rows.index(s.best) + 1) if s.best else None,
        "improvement": None if improvement is None else round(improvement, 6),
        "improvement_pct": (round(100 * improvement / s.baseline.val_bpb, 3)
                            if improvement is not None and s.baseline.val_bpb else None),
        "top_improvements": [{"commit": r.commit, "val_bpb": r.val_bpb, "delta": round(d, 6),
                              "description": r.description} for r, d in s.improvements[:TOP_N]],
        "rows": rows,
        "malformed_lines": [{"line": n, "reason": why} for n, _text, why in bad_lines],
        "agent_cost": None if s.spent is None else {
            "usd": round(s.spent.usd, 4), "estimated": s.spent.estimated, "proposals": s.spent.proposals,
            "usd_per_experiment": round(s.spent.usd / s.total, 4) if s.total else None,
            "input_tokens": s.spent.input_tokens, "output_tokens": s.spent.output_tokens},
    }


def _table(s: Summary, indices: list[int]) -> list[str]:
    """Δ is against the best each row was decided on; conf is the noise rule's z-score (blank under plain)."""
    conf = any(e.finished and e.finished.confidence for e in s.entries)
    head = f"  {'#':>4}  {'commit':<7}  {'val_bpb':>8}  {'delta':>9}  {'mem_gb':>6}  {'status':<7}  "
    out = [head + (f"{'conf':<9}  " if conf else "") + "description"]
    for i in indices:
        e = s.entries[i]
        r, d = e.row, e.delta
        bpb = f"{r.val_bpb:.6f}" if r.status != "crash" else "-"
        delta = f"{d:+.6f}" if d is not None else ("baseline" if r is s.baseline else "")
        c = f"{printable((e.finished.confidence if e.finished else None) or ''):<9}  " if conf else ""
        out.append(f"  {i + 1:>4}  {r.commit[:7]:<7}  {bpb:>8}  {delta:>9}  {r.memory_gb:>6.1f}  {r.status:<7}  {c}"
                   f"{printable(r.description)}")
    return out


def spending_line(spent: Spending, experiments: int) -> str | None:
    """Agent spending for the report: total, per experiment, tokens ("~" marks price-table estimates)."""
    if not spent.usd and not spent.input_tokens:
        return None
    mark = "~" if spent.estimated else ""
    per = f", {mark}${spent.usd / experiments:.3f} per experiment" if experiments and spent.usd else ""
    line = f"Agent spending: {mark}${spent.usd:.2f}{per}; tokens {spent.input_tokens:,} in, {spent.output_tokens:,} out"
    return line + (" (~: estimated from list prices)" if spent.estimated else "")


def render(s: Summary, kept_only: bool) -> str:
    lines = [f"Session summary: {s.total} experiment{'s' if s.total != 1 else ''}, "
             f"{len(s.improvements)} improvement{'s' if len(s.improvements) != 1 else ''}",
             f"  kept {s.kept}, discarded {s.discarded}, crashed {s.crashed} (keep rate {100 * s.keep_rate:.1f}%)"]
    if s.best and s.baseline:
        gain = s.baseline.val_bpb - s.best.val_bpb
        pct = 100 * gain / s.baseline.val_bpb if s.baseline.val_bpb else 0.0
        lines.append(f"Best val_bpb: {s.best.val_bpb:.6f} (started: {s.baseline.val_bpb:.6f}), "
                     f"improvement {gain:.6f} ({pct:.2f}%), commit {s.best.commit[:7]}")
    elif s.baseline:
        lines.append(f"Baseline val_bpb: {s.baseline.val_bpb:.6f} (no kept result yet)")
    else:
        lines.append("No successful run yet.")
    if s.spent is not None and (line := spending_line(s.spent, s.total)):
        lines.append(line)
    if kept_only:
        idx = [i for i, r in enumerate(s.rows) if r.status == "keep"]
        lines += ["", f"Kept experiments ({len(idx)}):"]
        lines += _table(s, idx) if idx else ["  (none)"]
        return "\n".join(lines)
    imps = s.improvements[:TOP_N]
    if imps:
        lines += ["", "Top improvements:"]
        lines += [f"  - {printable(r.description)}: {d:+.6f} val_bpb ({r.commit[:7]})" for r, d in imps]
    recent = list(range(max(0, s.total - RECENT_N), s.total))
    if recent:
        title = "All experiments:" if len(recent) == s.total else f"Last {len(recent)} experiments:"
        lines += ["", title] + _table(s, recent)
    return "\n".join(lines)


def _emit(text: str) -> None:
    """Print, tolerating a reader that went away (`autoresearch results | head`)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # stdout is gone; point it at devnull so the interpreter's final flush does not raise again
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_results(ws: Workspace, args) -> int:
    """Entry point of `autoresearch results [--kept-only] [--json]`."""
    ledger = load(ws)
    s = summarize(ledger, read_finished(ws.events))
    s.spent = spending(ws.experiments_dir)
    kept_only = bool(getattr(args, "kept_only", False))
    if getattr(args, "json", False):
        _emit(json.dumps(to_json(s, kept_only, ledger.bad_lines), indent=2))
        return 0
    if not s.rows:
        _emit("results.tsv has no experiments yet.")
        return 0
    _emit(render(s, kept_only))
    return 0
