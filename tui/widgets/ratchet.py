"""Ratchet history: the chain of kept commits (val_bpb and gain), discarded/crashed runs as side marks."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

from ..logstream import sanitize_line


@dataclass(frozen=True)
class Step:
    kept: object  # state.Experiment, or None for runs before the first kept one
    discarded: int
    crashed: int


def ratchet_steps(rows) -> list[Step]:
    """Kept rows newest first, each with the discards/crashes that came after it (before the next keep)."""
    steps: list[Step] = []
    cur, disc, crash = None, 0, 0
    for r in rows:
        if r.status == "keep":
            if cur is not None or disc or crash:
                steps.append(Step(cur, disc, crash))
            cur, disc, crash = r, 0, 0
        elif r.status == "crash":
            crash += 1
        else:
            disc += 1
    if cur is not None or disc or crash:
        steps.append(Step(cur, disc, crash))
    steps.reverse()
    return steps


def format_delta(d: float | None) -> str:
    if d is None:
        return ""
    return f"{d:+.6f}".replace("-", "−")


class RatchetHistory(Widget):
    """Only the newest steps that fit are drawn: the table has the rest."""

    DEFAULT_CSS = """
    RatchetHistory { height: 1fr; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    RatchetHistory > .ratchet--node { color: $success; }
    RatchetHistory > .ratchet--best { color: $success; text-style: bold; }
    RatchetHistory > .ratchet--commit { color: $text-accent; }
    RatchetHistory > .ratchet--gain { color: $success; }
    RatchetHistory > .ratchet--discard { color: $text-muted; }
    RatchetHistory > .ratchet--crash { color: $error; }
    RatchetHistory > .ratchet--dim { color: $text-muted; }
    """

    COMPONENT_CLASSES = {"ratchet--node", "ratchet--best", "ratchet--commit", "ratchet--gain", "ratchet--discard",
                         "ratchet--crash", "ratchet--dim"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows = ()
        self.best_commit = None

    def set_rows(self, rows, best_commit=None) -> None:
        if rows is self.rows and best_commit == self.best_commit:
            return
        self.rows, self.best_commit = rows, best_commit
        self.refresh()

    def render(self) -> Text:
        st = {n: self.get_component_rich_style(f"ratchet--{n}", partial=True)
              for n in ("node", "best", "commit", "gain", "discard", "crash", "dim")}
        height = self.content_region.height or self.size.height or 10
        out = Text(no_wrap=True, overflow="ellipsis")
        steps = ratchet_steps(self.rows)
        if not steps:
            out.append("no experiments yet", style=st["dim"])
            return out
        lines = 0
        for step in steps:
            if lines >= height:
                break
            if step.discarded or step.crashed:
                if lines:
                    out.append("\n")
                out.append("│ ", style=st["dim"])
                marks = "·" * min(step.discarded, 12) + ("…" if step.discarded > 12 else "")
                out.append(marks, style=st["discard"])
                xs = "✗" * min(step.crashed, 6) + ("…" if step.crashed > 6 else "")
                out.append(xs, style=st["crash"])
                parts = []
                if step.discarded:
                    parts.append(f"{step.discarded} discarded")
                if step.crashed:
                    parts.append(f"{step.crashed} crashed")
                out.append("  " + ", ".join(parts), style=st["dim"])
                lines += 1
            if step.kept is None or lines >= height:
                continue
            r = step.kept
            if lines:
                out.append("\n")
            is_best = self.best_commit is not None and r.commit[:7] == self.best_commit[:7]
            out.append("◆ " if is_best else "● ", style=st["best"] if is_best else st["node"])
            out.append(f"{r.commit[:7]} ", style=st["commit"])
            out.append(f"{r.val_bpb:.6f}" if r.val_bpb is not None else "   —    ")
            gain = r.delta  # against the best before it: the number it was kept on
            out.append(f" {format_delta(gain):>10}" if gain is not None else "  baseline ", style=st["gain"])
            if gain is not None or r.description.strip() != "baseline":  # not "baseline baseline"
                out.append(" " + sanitize_line(r.description, 300))
            lines += 1
        return out
