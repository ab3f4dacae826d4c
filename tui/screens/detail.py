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

from core.meta import number

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


def early_stop_text(meta: dict, finished) -> str | None:
    """Why the early-stop rule stopped this run, and where ('at 40 % of the budget'); None if it was not."""
    es = meta.get("early_stop")
    if not isinstance(es, dict) and not (finished is not None and finished.stopped_early):
        return None
    es = es if isinstance(es, dict) else {}
    reason = es.get("reason") or (finished.reason if finished is not None else None) or meta.get("reason")
    text = sanitize_line(str(reason), 600) if reason else "by the early-stop rule"
    frac = number(es.get("fraction"))
    if frac is not None and "%" not in text:
        text += f" (at {round(100 * frac)} % of the budget)"
    return text


def rule_text(meta: dict, finished) -> str | None:
    """'noise rule: z 3.5 (bar z 2 · σ 0.000600)' or 'plain rule', from meta.json's keep_rule / the ledger."""
    rule = meta.get("keep_rule") if isinstance(meta.get("keep_rule"), dict) else {}
    conf = rule.get("confidence") or (finished.confidence if finished is not None else None)
    if not rule and not conf:
        return None
    name = sanitize_line(str(rule.get("rule") or "noise"), 20)
    parts = [f"{name} rule"]
    if conf:
        parts.append(f"confidence {sanitize_line(str(conf), 40)}")
    bits = []
    if number(rule.get("z")) is not None:
        bits.append(f"bar z {_fmt(number(rule['z']))}")
    if number(rule.get("sigma")) is not None:
        bits.append(f"σ {number(rule['sigma']):.6f}")
    if isinstance(rule.get("runs"), int) and rule["runs"] > 1:
        bits.append(f"mean of {rule['runs']} runs")
    text = ": ".join(parts) if len(parts) > 1 else parts[0]
    return text + (f" ({' · '.join(bits)})" if bits else "")


def decided_by(meta: dict, finished) -> str | None:
    who = meta.get("decided_by") or (finished.decided_by if finished is not None else None)
    if not who:
        return None
    return "a person" if who == "person" else sanitize_line(str(who), 20)


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
        Binding("k", "keep", "keep it"),
        Binding("r", "revert", "revert last keep"),
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

    @property
    def finished(self):
        """The ledger's annotation of this run (core.ledger.Finished), if the engine recorded one."""
        return getattr(self.experiment.entry, "finished", None) if self.experiment is not None else None

    def _decision_line(self) -> str:
        """'decided by a person · noise rule: confidence z 3.5 (…) · integrity L2 (landlock ABI 7)'."""
        meta, f = self.files.meta, self.finished
        parts = []
        who = decided_by(meta, f)
        if who:
            parts.append(f"decided by {who}")
        rule = rule_text(meta, f)
        if rule:
            parts.append(rule)
        level = meta.get("integrity")
        if isinstance(level, str) and level.strip():
            parts.append(f"integrity {sanitize_line(level, 120)}")
        return " · ".join(parts)

    def compose(self):
        title = self._title()
        stopped = early_stop_text(self.files.meta, self.finished)
        reason = self.files.meta.get("reason")
        if stopped:  # the engine's reason starts "stopped early at 62 %: …"
            title.append("\n" if stopped.lower().startswith("stopped early") else "\nstopped early: ")
            title.append(stopped)
        elif reason:
            title.append("\nreason: ")
            title.append(sanitize_line(str(reason), 1000))
        decision = self._decision_line()
        if decision:
            title.append("\n")
            title.append(decision)
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
        row("stopped early", early_stop_text(meta, self.finished))
        row("decided by", decided_by(meta, self.finished))
        row("keep rule", rule_text(meta, self.finished))
        row("integrity", meta.get("integrity") if isinstance(meta.get("integrity"), str) else None)
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

    # --- a person's decisions: keep this discarded run, revert the last keep (sent to the engine) ---
    def unavailable(self, action: str) -> str | None:
        """Why k / r does nothing right now (one short sentence), or None when it applies."""
        snap = self.app.snapshot
        if snap is None or not snap.controllable:
            return "read-only: an upstream repo has no engine to decide"
        if not snap.engine_alive:
            return "no engine is running: a keep or a revert is carried out by the engine (s on the dashboard)"
        if action == "keep":
            r = self.experiment
            if r is None or not self.exp_id or not self.exp_id.isdigit():
                return "this run has not finished: only a measured discard can be kept"
            if r.status != "discard" or r.val_bpb is None:
                return f"experiment {self.exp_id} is {r.status}, not a measured discard; only those can be kept"
        if action == "revert" and self._last_kept() is None:
            return "nothing to revert: no experiment after the baseline is kept"
        return None

    def _last_kept(self):
        snap = self.app.snapshot
        kept = [r for r in (snap.rows if snap else ()) if r.status == "keep"]
        return kept[-1] if len(kept) > 1 else None  # the first keep is the baseline

    def check_action(self, action: str, parameters) -> bool | None:
        if action not in ("keep", "revert"):
            return True
        snap = self.app.snapshot
        if snap is None or not snap.controllable:
            return False
        if action == "keep" and (self.experiment is None or self.experiment.status != "discard"):
            return False  # a kept or crashed run: the key leaves the footer
        return True if self.unavailable(action) is None else None  # shown dimmed

    def on_key(self, event) -> None:
        action = {"k": "keep", "r": "revert"}.get(event.key)
        if action is None:
            return
        why = self.unavailable(action)
        if why is not None:
            event.stop()
            event.prevent_default()
            self.app.say(why, "warning")

    def action_keep(self) -> None:
        from .modals import ConfirmScreen
        if self.unavailable("keep") is not None:
            return
        exp_id, r = self.exp_id, self.experiment
        snap = self.app.snapshot
        best = f" (the best is {snap.best:.6f})" if snap is not None and snap.best is not None else ""
        question = (f"Keep experiment {exp_id} (val_bpb {r.val_bpb:.6f}){best}? The engine keeps it at once if it "
                    "was measured on the current best, otherwise it trains its change on the best first (a "
                    "confirmation run), then keeps it. Recorded as decided by a person.")

        def done(yes: bool | None) -> None:
            if yes:
                self.app.send_control("keep", exp_id=exp_id)

        self.app.push_screen(ConfirmScreen(question, yes="Keep"), done)

    def action_revert(self) -> None:
        from .modals import ConfirmScreen
        if self.unavailable("revert") is not None:
            return
        last = self._last_kept()
        what = f"experiment {last.label} ({last.commit[:7]}" + (f", val_bpb {last.val_bpb:.6f})"
                                                                  if last.val_bpb is not None else ")")
        question = (f"Revert the last keep, {what}? The branch goes back to the best before it; the revert is "
                    "recorded as decided by a person.")

        def done(yes: bool | None) -> None:
            if yes:
                self.app.send_control("revert")

        self.app.push_screen(ConfirmScreen(question, yes="Revert"), done)

    def action_tab(self, step: int) -> None:
        tabs = self.query_one(TabbedContent)
        i = self.TABS.index(tabs.active) if tabs.active in self.TABS else 0
        tabs.active = self.TABS[(i + step) % len(self.TABS)]
