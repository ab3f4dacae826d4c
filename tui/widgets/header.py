"""Dashboard header: workspace, tag, branch, engine state and phase, current experiment with countdown, best."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from rich.text import Text
from textual.widget import Widget

from ..logstream import sanitize_line


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def short_path(path: Path) -> str:
    home = os.path.expanduser("~")
    p = str(path)
    return "~" + p[len(home):] if home and home != "/" and (p == home or p.startswith(home + os.sep)) else p


REMAINING = re.compile(r"remaining: ?(\d+(?:\.\d+)?) ?s\b")


def trainer_remaining(line: str) -> float | None:
    """The trainer's own 'remaining: 42s' from its progress line (ours and upstream's print it), else None."""
    m = REMAINING.search(line)
    return float(m.group(1)) if m else None


def countdown(cur, phase: str, now: float, reported: float | None = None, progressing: bool = False) -> str:
    """What the current experiment is doing, with a time.

    While training: the trainer's own 'remaining' when it has reported one for this experiment (exact: it
    excludes the first, compiling steps), 'evaluating' once its progress line has ended or reached 0;
    before it reports, an estimate from training_started_at + time_budget, which reads 'finishing' (never
    a negative time) once the budget has passed. Other phases: the phase and the time spent so far.
    """
    if cur is None:
        return ""
    if phase == "training":
        if reported is not None:
            return f"{fmt_duration(reported)} left" if progressing and reported > 0 else "evaluating"
        if cur.training_started_at and cur.time_budget:
            left = cur.training_started_at + cur.time_budget - now
            if left >= 0:
                return f"{fmt_duration(left)} left"
            return f"finishing +{fmt_duration(-left)}"
    if cur.started_at:
        return f"{phase} {fmt_duration(now - cur.started_at)}"
    return phase


class DashboardHeader(Widget):
    """Attributes down: the screen sets snapshot/notice; a 1 Hz timer calls refresh() for the countdown."""

    DEFAULT_CSS = """
    DashboardHeader { height: 1; background: $panel; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    DashboardHeader > .header--title { text-style: bold; }
    DashboardHeader > .header--running { color: $success; text-style: bold; }
    DashboardHeader > .header--paused { color: $warning; text-style: bold; }
    DashboardHeader > .header--stopped { color: $text-muted; text-style: bold; }
    DashboardHeader > .header--readonly { color: $warning; text-style: bold; }
    DashboardHeader > .header--dim { color: $text-muted; }
    DashboardHeader > .header--best { color: $success; }
    DashboardHeader > .header--warn { color: $error; }
    DashboardHeader > .header--exp { text-style: bold; }
    """

    COMPONENT_CLASSES = {"header--title", "header--running", "header--paused", "header--stopped", "header--dim",
                         "header--best", "header--warn", "header--readonly", "header--exp"}

    def __init__(self, clock=time.time, display_root: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.clock = clock
        self.display_root = display_root
        self.snapshot = None
        self.notice: str = ""  # e.g. demo location or "preparing data"
        self.starting = False
        self.preparing = False  # --demo: the workspace and its data are being built
        # the trainer's progress line (run.log's live line) and what it said for which experiment
        self.trainer_line = ""
        self._reported: tuple[str, float] | None = None  # (experiment id, seconds remaining)

    def set_snapshot(self, snapshot) -> None:
        first = self.snapshot is None
        self.snapshot = snapshot
        if first:  # the progress line read before the first snapshot (later ones may be a past run's line)
            self._note_report()
        self._fit()

    def set_trainer_line(self, line: str) -> None:
        """run.log's live line changed (at most ~10 times a second)."""
        before = (trainer_remaining(self.trainer_line), self._reported)
        self.trainer_line = line
        self._note_report()
        if (trainer_remaining(line), self._reported) != before:  # otherwise the 1 Hz tick repaints the clock
            self.refresh()

    def _note_report(self) -> None:
        remaining = trainer_remaining(self.trainer_line)
        s = self.snapshot
        cur = s.current if s is not None else None
        if remaining is not None and cur is not None and s.engine.phase == "training":
            self._reported = (cur.id, remaining)

    def reported_remaining(self, cur) -> tuple[float | None, bool]:
        """(the trainer's last 'remaining' for this experiment or None, whether its progress line is still live)."""
        if cur is None or self._reported is None or self._reported[0] != cur.id:
            return None, False
        live = trainer_remaining(self.trainer_line)
        return (live if live is not None else self._reported[1]), live is not None

    def set_notice(self, notice: str) -> None:
        self.notice = notice
        self._fit()

    def _fit(self) -> None:
        # An explicit height: Textual caches an `auto` height measured while the header still said
        # "loading…" (seen at 80x24), which cut the header to one line.
        lines = 1 if self.snapshot is None else 3 + bool(self.notice or self.snapshot.warning)
        if self.styles.height is None or self.styles.height.value != lines:
            self.styles.height = lines
        self.refresh(layout=True)

    def _st(self, name: str):
        return self.get_component_rich_style(f"header--{name}", partial=True)

    def engine_label(self) -> tuple[str, str]:
        """(text, style name) of the engine state shown first in the header."""
        s = self.snapshot
        if s is None:
            return "loading…", "dim"
        if not s.controllable:
            return "read-only: upstream repo (no .autoresearch/), control keys disabled", "readonly"
        if self.preparing:
            return "preparing demo data…", "paused"
        if self.starting:
            return "starting engine…", "paused"
        e = s.engine
        if e is None:
            return "no engine running · s starts one", "stopped"
        if not e.alive:
            was = "" if e.status == "stopped" else f" (exited while {e.status})"
            why = f" ({sanitize_line(e.message, 200)})" if e.message and e.status == "stopped" else ""
            return f"○ engine not running{was}{why} · s starts it", "stopped"
        if e.status == "paused":
            return f"‖ paused · {e.phase}", "paused"
        if e.status == "stopping":
            return f"■ stopping · {e.phase}", "paused"
        return f"● {e.status} · {e.phase}", "running"

    def render(self) -> Text:
        s = self.snapshot
        now = self.clock()
        out = Text(no_wrap=True, overflow="ellipsis")
        label, style = self.engine_label()
        out.append(label, style=self._st(style))
        if s is None:
            return out
        e = s.engine
        cur = s.current
        if cur is not None:
            out.append("  │  ", style=self._st("dim"))
            out.append(f"exp {sanitize_line(cur.id, 12)}", style=self._st("exp"))
            reported, progressing = self.reported_remaining(cur)
            cd = countdown(cur, e.phase if e else "", now, reported, progressing)
            if cd:
                out.append(f" · {cd}")
        if s.best is not None:
            out.append("  │  ", style=self._st("dim"))
            out.append(f"best {s.best:.6f}", style=self._st("best"))
            if s.baseline is not None and s.baseline > 0 and s.best != s.baseline:
                gain = s.best - s.baseline
                out.append(f" ({gain:+.6f}, {100 * gain / s.baseline:+.2f}% vs baseline)".replace("-", "−"))
        # line 2: what the current experiment tries (untrusted text)
        out.append("\n")
        if cur is not None:
            out.append(sanitize_line(cur.description or "(proposing…)", 500))
        elif s.rows:
            last = s.rows[-1]
            out.append(f"last: {last.label} {last.status} ", style=self._st("dim"))
            out.append(sanitize_line(last.description, 500), style=self._st("dim"))
        else:
            out.append("no experiments yet", style=self._st("dim"))
        # line 3: where
        out.append("\n")
        root = self.display_root or short_path(s.root)
        out.append(root, style=self._st("title"))
        tag = e.tag if e and e.tag else None
        if tag:
            out.append(f" · tag {sanitize_line(tag, 40)}")
        if s.branch:
            out.append(f" · branch {sanitize_line(s.branch, 80)}")
        c = s.counts
        out.append(f" · {len(s.rows)} runs: {c.get('keep', 0)} kept, {c.get('discard', 0)} discarded, "
                   f"{c.get('crash', 0)} crashed", style=self._st("dim"))
        if e and e.agent:
            out.append(f" · agent {sanitize_line(e.agent, 40)}", style=self._st("dim"))
        if s.pending_ideas:
            out.append(f" · {s.pending_ideas} idea{'s' if s.pending_ideas != 1 else ''} queued", style=self._st("dim"))
        # line 4 (only when there is something to say): warnings and notices
        extra = [x for x in (self.notice, s.warning) if x]
        if extra:
            out.append("\n")
            out.append(" · ".join(sanitize_line(x, 400) for x in extra), style=self._st("warn"))
        return out
