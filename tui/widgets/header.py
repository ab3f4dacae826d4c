"""Dashboard header: engine state, the current run (stage, elapsed and training time) or the runs in flight, best."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.text import Text
from textual.widget import Widget

from core.meta import number

from ..logstream import sanitize_line
from ..state import noise_of
from .styles import ComponentStyles


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def short_path(path: Path) -> str:
    home = os.path.expanduser("~")
    p = str(path)
    return "~" + p[len(home):] if home and home != "/" and (p == home or p.startswith(home + os.sep)) else p


STAGE_WORDS = {"starting": "starting train.py", "warm-up": "warm-up (untimed steps)", "training": "training",
               "evaluating": "evaluating", "recording": "recording"}


def run_clock(run) -> str:
    """'1:12 elapsed · training 0:08 / 0:20': wall time since the trainer started, and its own training time
    (its progress through the budget; the first, untimed warm-up steps do not count) against the budget."""
    parts = []
    if run.elapsed_s is not None:
        parts.append(f"{fmt_duration(run.elapsed_s)} elapsed")
    if run.budget_s and (run.trained_s is not None or run.last is None):
        parts.append(f"training {fmt_duration(run.trained_s or 0.0)} / {fmt_duration(run.budget_s)}")
    elif run.budget_s:  # progress lines that say nothing about the budget (another train.py's format)
        parts.append(f"budget {fmt_duration(run.budget_s)}")
    return " · ".join(parts)


def run_status(cur, run, now: float) -> str:
    """What the current experiment is doing, with its times: the stage its log shows and run_clock while the
    trainer runs; otherwise the engine's phase and the time spent so far."""
    if cur is None:
        return ""
    if run is not None:
        clock = run_clock(run)
        return f"{STAGE_WORDS.get(run.stage, run.stage)} · {clock}" if clock else STAGE_WORDS.get(run.stage, run.stage)
    if cur.started_at:
        return f"{cur.phase} {fmt_duration(now - cur.started_at)}"
    return cur.phase


def in_flight(snap, runs) -> str:
    """'3 runs (2 training, 1 evaluating) · 2 proposals': what the scheduler has in flight."""
    running = snap.running
    stages: dict[str, int] = {}
    for s in running:
        run = runs.get(s.experiment)
        stage = run.stage if run is not None else s.phase
        stages[stage] = stages.get(stage, 0) + 1
    text = f"{len(running)} run{'s' if len(running) != 1 else ''}"
    if stages:
        text += " (" + ", ".join(f"{n} {k}" for k, n in stages.items()) + ")"
    props = snap.proposals
    text += f" · {len(props)} proposal{'s' if len(props) != 1 else ''}"
    ready = sum(1 for p in props if p.state == "ready")
    if ready:
        text += f" ({ready} ready)"
    return text


def noise_text(engine) -> str | None:
    """'σ 0.0006 from 3 runs': the engine's measured noise floor (engine.json extra["noise"]), if known."""
    measured = noise_of(engine)
    if measured is None:
        return None
    noise = engine.extra["noise"]
    text = noise.get("text")
    if isinstance(text, str) and text.strip():
        # the first line is full: "σ 0.0006 from 3 runs" next to the best it qualifies (the help says noise)
        return sanitize_line(text.strip().removeprefix("noise "), 80)
    runs = noise.get("runs")
    return f"σ {measured[0]:.4f}" + (f" from {runs} runs" if isinstance(runs, int) else "")


def cost_text(engine) -> str | None:
    """'$0.42 spent · $0.060/proposal': what the agent has cost (engine.json extra["cost"]), once anything is."""
    cost = engine.extra.get("cost") if engine is not None else None
    if not isinstance(cost, dict):
        return None
    usd = number(cost.get("usd"))
    if not usd:
        return None
    est = "~" if cost.get("estimated") is True else ""
    text = f"{est}${usd:.2f} spent"
    cap = number(cost.get("max_usd"))
    if cap:
        text += f" of ${cap:.2f}"
    n = cost.get("proposals")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        text += f" · {est}${usd / n:.3f}/proposal"
    return text


def integrity_short(engine) -> str | None:
    """'L2': the integrity level runs are scored at (engine.json extra["integrity"], e.g. "L2 (landlock ABI 7)")."""
    level = engine.extra.get("integrity") if engine is not None else None
    if not isinstance(level, str) or not level.strip():
        return None
    return sanitize_line(level.split()[0], 8)


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
        self.runs: dict = {}  # experiment id -> tui.runs.RunView (from the monitor's sample)
        self.notice: str = ""  # e.g. demo location or "preparing data"
        self.starting = False
        self.preparing = False  # --demo: the workspace and its data are being built
        self._styles = ComponentStyles(self, "header--")
        self._flight: str | None = None  # what the header last said about the runs in flight

    def set_snapshot(self, snapshot) -> None:
        self.snapshot = snapshot
        self._flight = None
        self._fit()

    def set_runs(self, runs: dict) -> None:
        """The runs' live views (once a second, with the clock): repaints only this one widget, and with several
        runs in flight (no clock in the header, the Slots pane has the times) only when their count changes."""
        self.runs = runs
        s = self.snapshot
        if s is not None and s.parallel:
            key = in_flight(s, runs)
            if key == self._flight:
                return
            self._flight = key
        self.refresh()

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
        return self._styles(name)

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
        # several runs in flight have no one phase: the runs are counted next to it
        phase = "" if s.parallel else f" · {e.phase}"
        if e.status == "paused":
            return f"‖ paused{phase}", "paused"
        if e.status == "stopping":
            return f"■ stopping{phase}", "paused"
        return f"● {e.status}{phase}", "running"

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
        if s.parallel:
            out.append("  │  ", style=self._st("dim"))
            out.append(in_flight(s, self.runs), style=self._st("exp"))
        elif cur is not None:
            out.append("  │  ", style=self._st("dim"))
            out.append(f"exp {sanitize_line(cur.id, 12)}", style=self._st("exp"))
            status = run_status(cur, self.runs.get(cur.id), now)
            if status:
                out.append(f" · {status}")
        if s.best is not None:
            out.append("  │  ", style=self._st("dim"))
            out.append(f"best {s.best:.6f}", style=self._st("best"))
            if s.baseline is not None and s.baseline > 0 and s.best != s.baseline:
                gain = s.best - s.baseline
                out.append(f" ({gain:+.6f}, {100 * gain / s.baseline:+.2f}% vs baseline)".replace("-", "−"))
        noise = noise_text(e)
        if noise:
            out.append("  │  ", style=self._st("dim"))
            out.append(noise)
        # line 2: what the current experiment tries (untrusted text); with several in flight, the Slots pane
        # says that, and this line the latest result
        out.append("\n")
        if cur is not None and not s.parallel:
            out.append(sanitize_line(cur.description or "(proposing…)", 500))
        elif s.rows:
            last = s.rows[-1]
            status = "aborted" if last.aborted else last.status
            out.append(f"last: {last.label} {status} ", style=self._st("dim"))
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
        level = integrity_short(e)
        if level:
            out.append(f" · integrity {level}", style=self._st("warn" if level == "L1" else "dim"))
        cost = cost_text(e)
        if cost:
            out.append(f" · {cost}")
        if s.pending_ideas:
            out.append(f" · {s.pending_ideas} idea{'s' if s.pending_ideas != 1 else ''} queued", style=self._st("dim"))
        # line 4 (only when there is something to say): warnings and notices
        extra = [x for x in (self.notice, s.warning) if x]
        if extra:
            out.append("\n")
            out.append(" · ".join(sanitize_line(x, 400) for x in extra), style=self._st("warn"))
        return out
