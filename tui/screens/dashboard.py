"""The main dashboard screen: panes in a grid on large terminals, tabs on small ones; all the keys."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input, Tab, Tabs

from ..logstream import format_agent_line
from ..messages import ExperimentChosen, LiveLineChanged
from ..widgets.chart import BpbChart
from ..widgets.gpugauge import GpuGauge
from ..widgets.header import DashboardHeader
from ..widgets.logpane import LogPane, LogView
from ..widgets.ratchet import RatchetHistory
from ..widgets.results import FILTERS, ResultsTable

# pane id -> (tab label, border title)
PANES = {
    "log-pane": ("Log", "Training log"),
    "results-pane": ("Results", "Results"),
    "chart-pane": ("Chart", "val_bpb progress"),
    "ratchet-pane": ("Ratchet", "Ratchet (kept commits)"),
    "gpu-pane": ("GPU", "GPU"),
}
CONTROL_ACTIONS = {"pause", "resume", "abort", "start", "idea", "edit"}
FILTER_GROUP = Binding.Group("filter", compact=True)


class DashboardScreen(Screen):
    # below 110 columns or 30 rows the panes become tabs (80x24 over SSH stays usable)
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]

    AUTO_FOCUS = ""  # chosen in on_screen_resume: the table on large terminals, the active tab on small ones

    BINDINGS = [
        Binding("p", "pause", "pause"),
        Binding("r", "resume", "resume"),
        Binding("a", "abort", "abort"),
        Binding("s", "start", "start"),
        Binding("i", "idea", "idea"),
        Binding("e", "edit", "edit"),
        Binding("t", "toggle_log", "agent"),
        Binding("slash", "search", "search"),
        Binding("escape", "clear_search", "clear search", show=False),
        # shown as one footer item, "1234 filter"; the results title names the active filter
        Binding("1", "filter('all')", "all", group=FILTER_GROUP),
        Binding("2", "filter('kept')", "kept", group=FILTER_GROUP),
        Binding("3", "filter('discarded')", "discarded", group=FILTER_GROUP),
        Binding("4", "filter('crashed')", "crashed", group=FILTER_GROUP),
        Binding("left_square_bracket", "pane(-1)", "prev pane", show=False),
        Binding("right_square_bracket", "pane(1)", "next pane", show=False),
        Binding("enter", "open_selected", "open", show=False),
        Binding("question_mark", "app.help", "help"),
    ]

    def __init__(self, *, clock, display_root: str | None, live: bool, run_log, agent_log=None):
        super().__init__()
        self.clock = clock
        self.display_root = display_root
        self.live = live
        self.run_log = run_log
        self.agent_log = agent_log
        self.filter_name = "all"
        self.showing_agent = False
        self._bindings_key = None
        self._idea_typed: list[str] | None = None  # keys typed before the idea box was up
        self._search_typing = False  # between "/" and enter/escape: printable keys belong to the search box
        self._results_title_key = None

    def compose(self):
        yield DashboardHeader(clock=self.clock, display_root=self.display_root, id="header")
        yield Tabs(*[Tab(label, id=f"tab-{pid}") for pid, (label, _) in PANES.items()], id="pane-tabs")
        with Container(id="panes"):
            with Vertical(id="log-pane", classes="pane -active"):
                yield LogPane("run.log", self.run_log, live=self.live, id="train-log")
                yield LogPane("agent.log", self.agent_log, live=self.live, formatter=format_agent_line,
                              id="agent-log", classes="-hidden")
            with Vertical(id="gpu-pane", classes="pane"):
                yield GpuGauge(id="gpu")
            with Vertical(id="ratchet-pane", classes="pane"):
                yield RatchetHistory(id="ratchet")
            with Vertical(id="results-pane", classes="pane"):
                yield Input(placeholder="search id, commit, description (enter keeps, escape clears)",
                            id="search", compact=True, classes="-hidden")
                yield ResultsTable(id="results")
            with Vertical(id="chart-pane", classes="pane"):
                yield BpbChart(id="chart")
        yield Footer()

    def on_mount(self) -> None:
        for pid, (_, title) in PANES.items():
            self.query_one(f"#{pid}").border_title = Text(title)
        self._update_results_title()

    def on_resize(self) -> None:
        # small terminals: the compact footer (less padding) keeps every key on one 80-column line
        self.query_one(Footer).compact = self.is_tabbed

    def on_screen_resume(self) -> None:
        if self.app.focused is not None and self.app.focused.screen is self:
            return
        if self.is_tabbed:
            tabs = self.query_one("#pane-tabs", Tabs)
            self._show_pane((tabs.active or "tab-log-pane").removeprefix("tab-"))
        else:
            self.query_one(ResultsTable).focus()

    @property
    def is_tabbed(self) -> bool:
        """Small terminal: one pane at a time (same thresholds as the breakpoints)."""
        w, h = self.app.size
        return w < self.HORIZONTAL_BREAKPOINTS[1][0] or h < self.VERTICAL_BREAKPOINTS[1][0]

    # --- data in ---
    def apply_snapshot(self, snap) -> None:
        self.query_one(DashboardHeader).set_snapshot(snap)
        self.query_one(ResultsTable).set_rows(snap.rows, snap.best, snap.best_commit)
        self.query_one(RatchetHistory).set_rows(snap.rows, snap.best_commit)
        self.query_one(BpbChart).set_rows(snap.rows, snap.best)
        # the agent pane follows the current experiment's agent.log
        cur = snap.current
        if snap.controllable:
            path = snap.root / ".autoresearch" / "experiments" / cur.id / "agent.log" if cur else None
            if path is not None or self.query_one("#agent-log", LogPane).path is None:
                self.query_one("#agent-log", LogPane).set_path(path)
        self._update_results_title()
        self._update_log_title()
        # the footer is rebuilt on refresh_bindings: only when what check_action looks at has changed
        e = snap.engine
        key = (snap.controllable, snap.engine_alive, e.status if e else None, snap.current is not None)
        if key != self._bindings_key:
            self._bindings_key = key
            self.refresh_bindings()

    def on_live_line_changed(self, message: LiveLineChanged) -> None:
        if message.pane.id == "train-log":
            self.query_one(DashboardHeader).set_trainer_line(message.text)

    def apply_gpu(self, message) -> None:
        self.query_one(GpuGauge).update_sample(message.sample, message.trainer_rss_mb, message.engine_rss_mb)

    # --- keys ---
    def check_action(self, action: str, parameters) -> bool | None:
        if action not in CONTROL_ACTIONS:
            return True
        snap = self.app.snapshot
        if snap is None or not snap.controllable:
            return False  # read-only: the header says so; the keys leave the footer
        e = snap.engine
        alive = snap.engine_alive
        if action == "pause":
            return alive and e.status == "running"
        if action == "resume":
            return alive and e.status == "paused"
        if action == "abort":
            return True if alive and e.current() is not None and e.status != "stopping" else None
        if action == "start":
            return not alive and not self.app.starting and self.app.demo_ready
        if action == "edit":
            return True if (snap.root / "program.md").is_file() else None
        return True

    def action_pause(self) -> None:
        self.app.send_control("pause")

    def action_resume(self) -> None:
        self.app.send_control("resume")

    def action_abort(self) -> None:
        from .modals import ConfirmScreen
        snap = self.app.snapshot
        cur = snap.current if snap else None
        what = f"experiment {cur.id}" if cur else "the running experiment"
        question = (f"Abort {what}? The run is killed now, train.py is reverted, the experiment is recorded "
                    "as a crash, and the engine holds until you resume (r).")

        def done(yes: bool | None) -> None:
            if yes:
                self.app.send_control("abort")

        self.app.push_screen(ConfirmScreen(question, yes="Abort"), done)

    def action_start(self) -> None:
        self.app.start_engine()

    def action_idea(self) -> None:
        from .modals import IdeaScreen

        def done(text: str | None) -> None:
            if text:
                self.app.queue_idea(text)

        # keys that come in the same read as "i" reach this screen before the modal is up (see on_key)
        self._idea_typed = []
        self.app.push_screen(IdeaScreen(self._take_idea_typed), done)

    def _take_idea_typed(self) -> str:
        typed, self._idea_typed = "".join(self._idea_typed or ()), None
        return typed

    def action_edit(self) -> None:
        self.app.edit_program()

    def action_toggle_log(self) -> None:
        self.showing_agent = not self.showing_agent
        self.query_one("#train-log").set_class(self.showing_agent, "-hidden")
        self.query_one("#agent-log").set_class(not self.showing_agent, "-hidden")
        self.query_one("#tab-log-pane", Tab).label = "Agent" if self.showing_agent else "Log"
        self._update_log_title()

    def action_search(self) -> None:
        self._activate_pane("results-pane")
        box = self.query_one("#search", Input)
        box.remove_class("-hidden")
        box.focus()
        self._search_typing = True

    def on_key(self, event) -> None:
        """Keys that arrive with the "/" in one read (a paste, a laggy SSH link) are already on their way
        through the table when the focus moves to the search box; as bindings they would act ("/pause"
        would pause the engine). Keys bubble here in order, before any binding runs: so "/" opens the search
        here, and printable keys that still come from another widget are typed into the box."""
        box = self.query_one("#search", Input)
        if event.key == "slash" and not self._search_typing:
            event.stop()
            event.prevent_default()
            self.action_search()
        elif self._search_typing and event.is_printable and event.character and self.app.focused is not box:
            event.stop()
            event.prevent_default()
            box.insert_text_at_cursor(event.character)
        elif (event.key == "i" and self._idea_typed is None and not self._search_typing
              and self.check_action("idea", ()) and self.app.focused is not box):
            # like "/": open the idea box here, so that the keys behind it in the same read are caught below
            event.stop()
            event.prevent_default()
            self.action_idea()
        elif self._idea_typed is not None and event.is_printable and event.character:
            event.stop()
            event.prevent_default()
            self._idea_typed.append(event.character)

    def action_clear_search(self) -> None:
        self._search_typing = False
        box = self.query_one("#search", Input)
        if box.has_class("-hidden") and not box.value:
            return
        box.value = ""
        box.add_class("-hidden")
        self.query_one(ResultsTable).set_search("")
        self.query_one(ResultsTable).focus()
        self._update_results_title()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "search":
            self.query_one(ResultsTable).set_search(event.value)
            self._update_results_title()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":
            self._search_typing = False
            if not event.value:
                event.input.add_class("-hidden")
            self.query_one(ResultsTable).focus()

    def action_filter(self, name: str) -> None:
        self.filter_name = name
        self.query_one(ResultsTable).set_filter(FILTERS[name])
        self._update_results_title()

    def action_pane(self, step: int) -> None:
        ids = list(PANES)
        tabs = self.query_one("#pane-tabs", Tabs)
        cur = (tabs.active or "tab-log-pane").removeprefix("tab-")
        self._activate_pane(ids[(ids.index(cur) + step) % len(ids)] if cur in ids else ids[0])

    def action_open_selected(self) -> None:
        table = self.query_one(ResultsTable)
        if table.selected is not None:
            self.post_message(ExperimentChosen(table.selected))

    def on_experiment_chosen(self, message: ExperimentChosen) -> None:
        from .detail import ExperimentScreen
        self.app.push_screen(ExperimentScreen(message.experiment, self.app.root))

    # --- panes ---
    def _activate_pane(self, pane_id: str) -> None:
        tabs = self.query_one("#pane-tabs", Tabs)
        if tabs.active != f"tab-{pane_id}":
            tabs.active = f"tab-{pane_id}"
        self._show_pane(pane_id, focus=True)

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        if event.tabs.id == "pane-tabs" and event.tab is not None:
            # in the grid every pane is visible: a tab change there must not steal the focus
            self._show_pane(event.tab.id.removeprefix("tab-"), focus=self.is_tabbed)

    def _show_pane(self, pane_id: str, focus: bool = True) -> None:
        for pid in PANES:
            self.query_one(f"#{pid}").set_class(pid == pane_id, "-active")
        if not focus:
            return
        target = {"results-pane": ResultsTable, "log-pane": LogView}.get(pane_id)
        if target is not None:
            widgets = [w for w in self.query_one(f"#{pane_id}").query(target) if w.display and
                       not any(a.has_class("-hidden") for a in w.ancestors_with_self)]
            if widgets:
                widgets[0].focus()

    def _update_results_title(self) -> None:
        table = self.query_one(ResultsTable)
        key = (self.filter_name, table.search, len(table.view), len(table.rows))
        if key == self._results_title_key:
            return
        self._results_title_key = key
        title = "Results"
        if self.filter_name != "all":
            title += f" · {self.filter_name}"
        if table.search:
            title += f" · “{table.search}”"
        title += f" · {len(table.view)} of {len(table.rows)}" if table.rows else ""
        title += "  (1 all 2 kept 3 disc 4 crash, / search)"
        self.query_one("#results-pane").border_title = Text(title)

    def _update_log_title(self) -> None:
        if self.showing_agent:
            snap = self.app.snapshot
            cur = snap.current if snap else None
            title = f"Agent activity · {cur.id}" if cur else "Agent activity (no experiment running)"
        else:
            title = "Training log (run.log)"
        self.query_one("#log-pane").border_title = Text(title + "  t: switch")
