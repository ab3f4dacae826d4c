"""Experiment detail: the diff (syntax-highlighted), metrics, training log and agent transcript, in tabs."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane

from ..logstream import format_agent_line, sanitize_block, sanitize_line
from ..state import read_experiment
from ..widgets.logpane import LogPane

MAX_DIFF_LINES = 5000


def _fmt(v) -> str:
    if isinstance(v, float):
        text = f"{v:.6f}" if abs(v) < 10 else f"{v:.2f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(v)


def _when(ts) -> str:
    try:
        return dt.datetime.fromtimestamp(float(ts)).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def git_show(root: Path, commit: str) -> str | None:
    """The patch of one commit (upstream repos keep no diff.patch); None if git does not know it."""
    try:
        out = subprocess.run(["git", "-C", str(root), "show", "--no-color", "--format=commit %H%n%n    %s%n",
                              commit, "--"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout[:2_000_000].decode("utf-8", "replace")


def diff_renderable(diff: str) -> Syntax:
    text = sanitize_block(diff)
    lines = text.split("\n")
    if len(lines) > MAX_DIFF_LINES:
        text = "\n".join(lines[:MAX_DIFF_LINES] + [f"… {len(lines) - MAX_DIFF_LINES} more lines not shown"])
    # ansi_dark maps to the terminal's own palette, so it degrades cleanly on 256/16-colour terminals
    return Syntax(text, "diff", theme="ansi_dark", word_wrap=False, background_color="default")


class ExperimentScreen(Screen):
    DEFAULT_CSS = """
    ExperimentScreen #detail-title { height: auto; background: $panel; padding: 0 1; }
    ExperimentScreen #detail-tabs { height: 1fr; }
    ExperimentScreen ContentSwitcher { height: 1fr; }
    ExperimentScreen TabPane { padding: 0; height: 1fr; }
    ExperimentScreen VerticalScroll { height: 1fr; }
    """

    BINDINGS = [
        Binding("escape,q", "app.pop_screen", "back"),
        Binding("right_square_bracket", "tab(1)", "next tab"),
        Binding("left_square_bracket", "tab(-1)", "prev tab"),
    ]

    TABS = ("diff", "metrics", "trainlog", "agentlog")

    def __init__(self, experiment, root: Path, exp_id: str | None = None, live: bool = False):
        """experiment: a results row (state.Experiment), or None for a run that has no row yet (exp_id)."""
        super().__init__()
        self.experiment = experiment
        self.exp_id = experiment.exp_id if experiment is not None else exp_id
        self.root = Path(root)
        self.live = live and experiment is None  # a run still in its slot: its log keeps growing
        self.files = read_experiment(self.root, self.exp_id)

    def _title(self) -> Text:
        r, meta = self.experiment, self.files.meta
        title = Text(no_wrap=True, overflow="ellipsis")
        if r is None:
            commit = str(meta.get("commit") or "")[:7]
            title.append(f"Experiment {self.exp_id}", style="bold")
            title.append(f" · {sanitize_line(str(meta.get('status') or 'running'), 20)}")
            title.append(f" · {commit}\n" if commit else "\n")
            title.append(sanitize_line(str(meta.get("description") or "(no description yet)"), 1000))
            return title
        title.append(f"Experiment {r.label}", style="bold")
        title.append(f" · {'aborted (crash)' if r.aborted else r.status} · ")
        title.append(f"{r.val_bpb:.6f}" if r.val_bpb is not None else "no val_bpb")
        title.append(f" · {r.commit[:7]}")
        if r.delta is not None:
            title.append(f" · Δ {r.delta:+.6f} vs the best before ({r.reference:.6f})".replace("-", "−"))
        title.append("\n")
        title.append(sanitize_line(r.description, 1000))
        return title

    def compose(self):
        title = self._title()
        reason = self.files.meta.get("reason")
        if reason:
            title.append("\nreason: ")
            title.append(sanitize_line(str(reason), 1000))
        yield Static(title, id="detail-title")
        with TabbedContent(id="detail-tabs"):
            with TabPane("Diff", id="diff"):
                with VerticalScroll():
                    yield Static(Text("loading diff…"), id="diff-view")
            with TabPane("Metrics", id="metrics"):
                with VerticalScroll():
                    yield Static(self._metrics_table(), id="metrics-view")
            with TabPane("Training log", id="trainlog"):
                if self.files.train_log:
                    yield LogPane(self.files.train_log, live=self.live, id="detail-train")
                else:
                    yield Static(Text("no train.log for this experiment" if self.exp_id else
                                      "upstream repo: per-experiment logs are not kept (see run.log)"))
            with TabPane("Agent", id="agentlog"):
                if self.files.agent_log:
                    yield LogPane(self.files.agent_log, live=False, formatter=format_agent_line,
                                  id="detail-agent")
                else:
                    yield Static(Text("no agent transcript for this experiment"))
        yield Footer()

    def on_mount(self) -> None:
        if self.files.diff is not None:
            self._show_diff(self.files.diff)
        else:
            commit = self.files.meta.get("commit") or (self.experiment.commit if self.experiment else None)
            ref = f"refs/autoresearch/experiments/{self.exp_id}" if self.exp_id else None
            if commit or ref:
                self._load_git_diff(str(commit or ref), ref)
            else:
                self._show_diff(None)

    @work(thread=True, exclusive=True, exit_on_error=False, group="detail-diff")
    def _load_git_diff(self, commit: str, ref: str | None) -> None:
        text = git_show(self.root, ref) if ref else None
        if text is None:
            text = git_show(self.root, commit)
        self.app.call_from_thread(self._show_diff, text)

    def _show_diff(self, diff: str | None) -> None:
        view = self.query_one("#diff-view", Static)
        if diff is None:
            commit = self.experiment.commit[:7] if self.experiment else str(self.files.meta.get("commit") or "")[:7]
            view.update(Text(f"no diff: commit {commit} is not in this repository" if commit else
                             "no diff yet: the proposal is not committed"))
        elif not diff.strip():
            view.update(Text("empty diff"))
        else:
            view.update(diff_renderable(diff))

    def _metrics_table(self) -> Table:
        r, meta, metrics = self.experiment, self.files.meta, self.files.metrics
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold", no_wrap=True)
        t.add_column()

        def row(key, value):
            if value is None or value == "" or value == {}:
                return
            t.add_row(Text(key), Text(sanitize_line(_fmt(value), 1000)))

        row("experiment", self.exp_id)
        if r is not None:
            row("status", "aborted (recorded as crash)" if r.aborted else r.status)
            row("val_bpb", r.val_bpb)
            row("peak memory", f"{r.memory_gb:.1f} GB" if r.memory_gb is not None else None)
            row("decided against", f"{r.reference:.6f} (the best before this run)" if r.reference is not None
                else None)
            row("Δ vs the best before", f"{r.delta:+.6f}" if r.delta is not None else None)
            row("commit", meta.get("commit") or r.commit)
        else:
            row("status", meta.get("status") or "running")
            row("commit", meta.get("commit"))
        row("parent commit", meta.get("parent"))
        if meta.get("simplification"):
            row("kept as", "a simplification (fewer lines, val_bpb within the tolerance)")
        added, removed = meta.get("lines_added"), meta.get("lines_removed")
        if isinstance(added, int) or isinstance(removed, int):
            row("train.py change", f"+{added or 0} / −{removed or 0} lines")
        row("idea it was given", meta.get("idea"))
        agent = meta.get("agent")
        if isinstance(agent, dict):
            row("agent", " · ".join(str(agent[k]) for k in ("name", "model") if agent.get(k)))
            tokens = [f"{agent[k]:,} {k.split('_')[0]}" for k in ("input_tokens", "output_tokens")
                      if isinstance(agent.get(k), int) and agent.get(k)]
            row("agent tokens", " · ".join(tokens) if tokens else None)
            cost = agent.get("cost_usd")
            row("agent cost", f"${cost:.4f}" if isinstance(cost, (int, float)) and cost else None)
        for key, label in (("started_at", "started"), ("training_started_at", "training started"),
                           ("finished_at", "finished")):
            if meta.get(key) is not None:
                row(label, _when(meta.get(key)))
        timings = meta.get("timings")
        names = {"propose_s": "time proposing", "validate_s": "time validating", "train_s": "time training",
                 "record_s": "time recording"}
        if isinstance(timings, dict):
            for key, v in timings.items():
                row(names.get(key, f"time {key}"), f"{v:.1f} s" if isinstance(v, (int, float)) else v)
        for key, v in metrics.items():
            row(f"metric {key}", v)
        if not self.exp_id:
            t.add_row(Text("note"), Text("upstream repo: only the results.tsv columns are known"))
        return t

    def action_tab(self, step: int) -> None:
        tabs = self.query_one(TabbedContent)
        i = self.TABS.index(tabs.active) if tabs.active in self.TABS else 0
        tabs.active = self.TABS[(i + step) % len(self.TABS)]
