"""The main dashboard screen: panes in a grid on large terminals, tabs on small ones; all the keys."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import Input, Tab, Tabs

from ..logstream import format_agent_line
from ..messages import ExperimentChosen, SlotSelected
from ..state import noise_of
from ..widgets.chart import BpbChart
from ..widgets.footer import KeyFooter
from ..widgets.gpugauge import GpuGauge
from ..widgets.header import DashboardHeader
from ..widgets.logpane import LogPane, LogView
from ..widgets.losscurve import RunPanel
from ..widgets.ratchet import RatchetHistory
from ..widgets.results import FILTERS, ResultsTable
from ..widgets.slots import SlotsPane, slot_name

# pane id -> (tab label, border title)
PANES = {
    "log-pane": ("Log", "Training log"),
    "slots-pane": ("Slots", "Slots"),
    "results-pane": ("Results", "Results"),
    "chart-pane": ("Chart", "val_bpb progress"),
    "ratchet-pane": ("Ratchet", "Ratchet · kept commits, Δ vs the best before"),
    "gpu-pane": ("GPU", "GPU"),
}
CONTROL_ACTIONS = {"pause", "resume", "abort", "start", "idea", "edit"}
# keys whose binding may not apply right now: pressed anyway, they say why (a notice) instead of nothing
KEY_ACTIONS = {"p": "pause", "r": "resume", "a": "abort", "s": "start", "i": "idea", "e": "edit", "n": "next_slot"}
FILTER_GROUP = Binding.Group("filter", compact=True)
PANE_GROUP = Binding.Group("pane", compact=True)


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
        Binding("n", "next_slot", "next slot"),
        Binding("slash", "search", "search"),
        Binding("escape", "clear_search", "clear search", show=False),
        # shown as one footer item, "1234 filter"; the results title names the active filter
        Binding("1", "filter('all')", "all", group=FILTER_GROUP),
        Binding("2", "filter('kept')", "kept", group=FILTER_GROUP),
        Binding("3", "filter('discarded')", "discarded", group=FILTER_GROUP),
        Binding("4", "filter('crashed')", "crashed", group=FILTER_GROUP),
        Binding("left_square_bracket", "pane(-1)", "prev pane", group=PANE_GROUP),
        Binding("right_square_bracket", "pane(1)", "next pane", group=PANE_GROUP),
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
        self.snapshot = None  # the newest state and sample, kept so that widgets composed later get them too
        self.sample = None
        self.selected_slot: str | None = None  # the slot the log pane follows (several slots)
        self._log_key = None
        self._parallel = False

    def compose(self):
        yield DashboardHeader(clock=self.clock, display_root=self.display_root, id="header")
        yield Tabs(*[Tab(label, id=f"tab-{pid}") for pid, (label, _) in PANES.items()], id="pane-tabs")
        with Container(id="panes"):
            with Vertical(id="slots-pane", classes="pane -hidden"):
                yield SlotsPane(id="slots")
            with Vertical(id="log-pane", classes="pane -active"):
                yield RunPanel(id="run-panel")
                yield LogPane(self.run_log, live=self.live, id="train-log")
                yield LogPane(self.agent_log, live=self.live, formatter=format_agent_line,
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
        yield KeyFooter()

    def on_mount(self) -> None:
        for pid, (_, title) in PANES.items():
            self.query_one(f"#{pid}").border_title = Text(title)
        self.query_one("#pane-tabs", Tabs).hide("tab-slots-pane")
        self._update_results_title()
        # state or a sample that arrived before the widgets existed
        if self.snapshot is not None:
            self.apply_snapshot(self.snapshot)
        if self.sample is not None:
            self.apply_sample(self.sample)

    def on_resize(self) -> None:
        # small terminals: the compact footer (less padding) keeps every key on one 80-column line
        self.query_one(KeyFooter).compact = self.is_tabbed

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
    # Snapshots and samples come from worker threads through messages: one may arrive before this screen is
    # composed or after its widgets are gone (quitting on a loaded box). The newest is kept and applied when the
    # widgets are there; a missing widget is never an error.
    def apply_snapshot(self, snap) -> None:
        self.snapshot = snap
        try:
            self._show_snapshot(snap)
        except NoMatches:
            pass  # not composed yet (on_mount shows it), or being taken down

    def apply_sample(self, sample) -> None:
        """Once a second: GPUs/CPU, the runs' progress and the header's clock, repainted in one frame."""
        self.sample = sample
        try:
            self._show_sample(sample)
        except NoMatches:
            pass

    def _show_snapshot(self, snap) -> None:
        header = self.query_one(DashboardHeader)
        header.set_snapshot(snap)
        self.query_one(ResultsTable).set_rows(snap.rows, snap.best, snap.best_commit)
        self.query_one(RatchetHistory).set_rows(snap.rows, snap.best_commit)
        self.query_one(BpbChart).set_rows(snap.rows, snap.best, snap.baseline, noise_of(snap.engine))
        self.query_one(GpuGauge).set_slots(snap.slots, () if snap.controllable else snap.rows[-4:])
        self._set_parallel(snap.parallel)
        slots = self.query_one(SlotsPane)
        slots.set_state(snap.slots, snap.proposals)
        if self._parallel:
            self.selected_slot = slots.selected
        self._follow_logs()
        self._update_results_title()
        self._update_log_title()
        # the footer is rebuilt on refresh_bindings: only when what check_action looks at has changed
        e = snap.engine
        key = (snap.controllable, snap.engine_alive, e.status if e else None, snap.current is not None,
               self._parallel)
        if key != self._bindings_key:
            self._bindings_key = key
            self.refresh_bindings()

    def _show_sample(self, sample) -> None:
        gauge = self.query_one(GpuGauge)
        gauge.update_sample(sample)
        available = sample.gpu is not None and sample.gpu.available
        title = "GPU" if available or sample.gpu is None else "CPU / RAM · no NVIDIA GPU"
        pane = self.query_one("#gpu-pane")
        if str(pane.border_title) != title:
            pane.border_title = Text(title)
            self.query_one("#tab-gpu-pane", Tab).label = "GPU" if available or sample.gpu is None else "CPU"
        self.query_one(DashboardHeader).set_runs(sample.runs)
        if self._parallel:
            self.query_one(SlotsPane).set_sample(sample)
        run = self._followed_run()
        self.query_one(RunPanel).set_run(run, sample.best_curve if run else (), sample.best_id)

    def refresh_clock(self) -> None:
        for header in self.query(DashboardHeader):
            header.refresh()

    def _followed_slot(self):
        snap = self.snapshot
        if snap is None:
            return None
        slots = snap.slots
        if self._parallel:
            return next((s for s in slots if s.id == self.selected_slot), None)
        cur = snap.current
        return next((s for s in slots if cur is not None and s.experiment == cur.id), None)

    def _followed_run(self):
        slot = self._followed_slot()
        if slot is None or not slot.experiment or self.sample is None:
            return None
        return self.sample.runs.get(slot.experiment)

    def _set_parallel(self, parallel: bool) -> None:
        if parallel == self._parallel:
            return
        self._parallel = parallel
        self.query_one("#slots-pane").set_class(not parallel, "-hidden")
        self.query_one("#panes").set_class(parallel, "-parallel")
        tabs = self.query_one("#pane-tabs", Tabs)
        if parallel:
            tabs.show("tab-slots-pane")
        else:
            tabs.hide("tab-slots-pane")
            if tabs.active == "tab-slots-pane":
                self._activate_pane("log-pane")

    def _follow_logs(self) -> None:
        """The training log follows run.log with one slot (the upstream file), the selected slot's train.log
        with several; the agent pane follows the proposal being made (else the followed run's transcript)."""
        snap = self.snapshot
        if snap is None or not snap.controllable:
            return
        exp_dir = snap.root / ".autoresearch" / "experiments"
        if self._parallel:
            slot = self._followed_slot()
            running = slot.experiment if slot is not None else None
            train_path = exp_dir / running / "train.log" if running else None  # None: keep the last one
            making = [p for p in snap.proposals if p.state == "proposing"]
            agent_id = making[0].id if making else running
        else:
            train_path = self.run_log
            agent_id = snap.current.id if snap.current is not None else None
        agent_path = exp_dir / agent_id / "agent.log" if agent_id else None
        key = (train_path, agent_path)
        if key == self._log_key:
            return
        self._log_key = key
        if train_path is not None:
            self.query_one("#train-log", LogPane).set_path(train_path)
        agent = self.query_one("#agent-log", LogPane)
        if agent_path is not None or agent.path is None:
            agent.set_path(agent_path)

    def on_slot_selected(self, message: SlotSelected) -> None:
        self.selected_slot = message.slot_id
        self._follow_logs()
        self._update_log_title()
        if self.sample is not None:
            run = self._followed_run()
            self.query_one(RunPanel).set_run(run, self.sample.best_curve if run else (), self.sample.best_id)

    # --- keys ---
    def unavailable(self, action: str) -> str | None:
        """Why a key does nothing right now (one short sentence), or None when it applies."""
        snap = self.app.snapshot
        if action == "next_slot":
            return None if self._parallel else "one slot: there is no other run to follow"
        if action not in CONTROL_ACTIONS:
            return None
        if snap is None:
            return "still reading the workspace"
        if not snap.controllable:
            return "read-only: an upstream repo has no engine to control (autoresearch setup makes it a workspace)"
        e = snap.engine
        alive = snap.engine_alive
        if action in ("pause", "resume", "abort") and not alive:
            return "no engine is running; s starts one"
        if action == "pause":
            return {"paused": "already paused; r resumes", "stopping": "the engine is stopping"}.get(e.status)
        if action == "resume":
            return None if e.status == "paused" else f"the engine is {e.status}, not paused"
        if action == "abort":
            if e.status == "stopping":
                return "the engine is stopping: the running run finishes"
            if self._parallel:
                slot = self._followed_slot()
                return None if slot is not None and slot.experiment else "the selected slot runs nothing to abort"
            return None if e.current() is not None else "nothing is running to abort"
        if action == "start":
            if alive:
                return "an engine is already running in this workspace"
            if self.app.starting:
                return "the engine is starting"
            if not self.app.demo_ready:
                return "the demo data is still being prepared"
            return None
        if action == "edit":
            return None if (snap.root / "program.md").is_file() else "this workspace has no program.md to edit"
        return None

    def check_action(self, action: str, parameters) -> bool | None:
        if action == "next_slot":
            return self._parallel  # only with several slots: the footer of a one-slot engine stays as it was
        if action not in CONTROL_ACTIONS:
            return True
        snap = self.app.snapshot
        if snap is None or not snap.controllable:
            return False  # read-only: the header says so; the keys leave the footer
        if action in ("pause", "resume", "start"):
            return self.unavailable(action) is None  # the footer shows p or r, and s only without an engine
        return True if self.unavailable(action) is None else None  # shown dimmed

    def action_pause(self) -> None:
        self.app.send_control("pause")

    def action_resume(self) -> None:
        self.app.send_control("resume")

    def action_next_slot(self) -> None:
        self.query_one(SlotsPane).cycle(1)

    def action_abort(self) -> None:
        from .modals import ConfirmScreen
        snap = self.app.snapshot
        exp_id = None  # one slot: abort the run (there is one)
        if self._parallel:
            slot = self._followed_slot()
            exp_id = slot.experiment if slot is not None else None
            where = f" on {slot_name(slot)}" if slot is not None else ""
            question = (f"Abort experiment {exp_id}{where}? Its run is killed now and recorded as a crash "
                        "(aborted); the other runs go on.")
        else:
            cur = snap.current if snap else None
            what = f"experiment {cur.id}" if cur else "the running experiment"
            question = (f"Abort {what}? The run is killed now, train.py is reverted, the experiment is recorded "
                        "as a crash (aborted), and the engine holds until you resume (r).")

        def done(yes: bool | None) -> None:
            if yes:
                self.app.send_control("abort", exp_id=exp_id)

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
        action = KEY_ACTIONS.get(event.key)
        if (action is not None and self._idea_typed is None and not self._search_typing
                and self.app.focused is not box):
            why = self.unavailable(action)
            if why is not None:
                event.stop()
                event.prevent_default()
                self.app.say(why, "warning")
                return
        if event.key == "slash" and not self._search_typing:
            event.stop()
            event.prevent_default()
            self.action_search()
        elif self._search_typing and event.is_printable and event.character and self.app.focused is not box:
            event.stop()
            event.prevent_default()
            box.insert_text_at_cursor(event.character)
        elif (event.key == "i" and self._idea_typed is None and not self._search_typing
              and self.app.focused is not box):
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
        ids = [p for p in PANES if p != "slots-pane" or self._parallel]
        tabs = self.query_one("#pane-tabs", Tabs)
        cur = (tabs.active or "tab-log-pane").removeprefix("tab-")
        self._activate_pane(ids[(ids.index(cur) + step) % len(ids)] if cur in ids else ids[0])

    def action_open_selected(self) -> None:
        table = self.query_one(ResultsTable)
        if table.selected is not None:
            self.post_message(ExperimentChosen(table.selected))

    def on_experiment_chosen(self, message: ExperimentChosen) -> None:
        from .detail import ExperimentScreen
        row = message.experiment
        if row is None and message.exp_id is not None and self.snapshot is not None:
            # a run in a slot: its row, if it has finished meanwhile, else its folder alone
            row = next((r for r in reversed(self.snapshot.rows) if r.exp_id == message.exp_id), None)
        self.app.push_screen(ExperimentScreen(row, self.app.root, exp_id=message.exp_id, live=self.live))

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
        target = {"results-pane": ResultsTable, "log-pane": LogView, "slots-pane": SlotsPane}.get(pane_id)
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
        keys = "  t: agent" if not self.showing_agent else "  t: training log"
        if self.showing_agent:
            path = self.query_one("#agent-log", LogPane).path
            title = f"Agent activity · {path.parent.name}" if path else "Agent activity (no experiment running)"
        elif self._parallel:
            slot = self._followed_slot()
            if slot is not None and slot.experiment:
                title = f"Training log · {slot.experiment} on {slot_name(slot)} (train.log)"
            else:  # a free slot: the log of the last run followed stays
                path = self.query_one("#train-log", LogPane).path
                free = f"{slot_name(slot)} is free" if slot is not None else "no slot"
                title = f"Training log · {free}" + (f", last: {path.parent.name} (train.log)" if path else "")
            keys += " · n: next slot"
        else:
            title = "Training log (run.log)"
        self.query_one("#log-pane").border_title = Text(title + keys)
