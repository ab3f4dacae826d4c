"""Small modal screens: confirm abort, queue an idea, and the `?` key help."""

from __future__ import annotations

from typing import Callable

from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

MODAL_CSS = """
{name} {{ align: center middle; background: $background 60%; }}
{name} > Vertical {{ width: 64; max-width: 100%; height: auto; max-height: 100%; border: thick $primary;
                    background: $surface; padding: 0 1; }}
{name} .buttons {{ height: auto; align-horizontal: right; margin-top: 1; }}
{name} Button {{ margin-left: 1; }}
{name} .keys-hint {{ color: $text-muted; margin-top: 1; }}
"""


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; y/enter confirms, n/escape cancels."""

    DEFAULT_CSS = MODAL_CSS.format(name="ConfirmScreen")
    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str, yes: str = "Yes", no: str = "No"):
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self):
        with Vertical():
            yield Static(Text(self.question))
            # the footer below belongs to the dashboard: say here which keys answer
            yield Static(Text(f"y: {self.yes} · n or escape: {self.no}", style="italic"), classes="keys-hint")
            with Horizontal(classes="buttons"):
                yield Button(self.no, id="no")
                yield Button(self.yes, id="yes", variant="error")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class IdeaScreen(ModalScreen[str | None]):
    """One line of text for the agent's next proposal; enter queues it, escape cancels."""

    DEFAULT_CSS = MODAL_CSS.format(name="IdeaScreen")
    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, typed_before: Callable[[], str] | None = None):
        super().__init__()
        self._typed_before = typed_before

    def compose(self):
        with Vertical():
            yield Static(Text("Idea for the agent's next proposal (enter queues it, escape cancels):"))
            yield Input(placeholder="e.g. try a cosine warm-down", id="idea")

    def on_mount(self) -> None:
        box = self.query_one("#idea", Input)
        if self._typed_before:
            box.insert_text_at_cursor(self._typed_before())
        box.focus()

    def on_key(self, event) -> None:
        """Keys that arrive before the box has the focus (one read of "ipause" over SSH) are typed into it."""
        box = self.query_one("#idea", Input)
        if self.focused is not box and event.is_printable and event.character:
            event.stop()
            event.prevent_default()
            box.insert_text_at_cursor(event.character)
            box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        self.dismiss(text or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


KEYS_HELP = [
    ("p", "pause the engine after the current step"),
    ("r", "resume a paused engine"),
    ("a", "abort the running experiment (asks first): kill, revert, record, hold; with several slots, the "
          "selected slot's run"),
    ("s", "start the engine, detached (same agent as last time)"),
    ("i", "queue an idea for the next proposal"),
    ("e", "edit program.md in $EDITOR (used from the next proposal)"),
    ("t", "switch the log pane between the training log and the agent's activity"),
    ("n", "several slots: the log pane follows the next slot's run (up/down in the Slots pane too)"),
    ("enter", "open the selected experiment (a results row, or a slot's run): diff, metrics, logs, transcript"),
    ("k", "in an experiment's detail: keep that discarded experiment (asks first; the engine keeps it, "
          "training its change on the current best first if needed; recorded as decided by a person)"),
    ("r", "in an experiment's detail: revert the last kept experiment (asks first; the branch goes back to "
          "the best before it)"),
    ("1 2 3 4", "show all / kept / discarded / crashed experiments (the results title shows the filter)"),
    ("/", "search id, commit and description in the results (enter keeps it, escape clears)"),
    ("[ ]", "previous / next pane (on small terminals panes are tabs)"),
    ("tab", "move the focus between panes; arrows, page up/down, home/end move inside"),
    ("?", "this help"),
    ("q", "quit (a detached engine keeps running; start the dashboard again to re-attach)"),
]


HEADER_HELP = ("Header: engine state and phase · the current experiment: what its trainer is doing (starting "
               "train.py, warm-up: its first, untimed steps, training, evaluating), the wall time since the "
               "trainer started ('elapsed') and the trainer's own training time against the budget (its first, "
               "warm-up steps do not count, so a run takes longer than its budget) · with several slots, the runs "
               "and proposals in flight · the best val_bpb and its gain over the baseline · the noise floor σ "
               "once measured (the chart draws best ± z·σ as a dotted band) · what the agent has spent, and per "
               "proposal · the integrity level runs are scored at (L2: sandboxed, L1: not). "
               "conf (results): the confidence of a decision under the noise rule (z), or person. "
               "Δ decided (results, ratchet, detail): val_bpb minus the best the run was decided against, the "
               "number its keep or discard was made on; it never changes when later runs are kept.")


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = MODAL_CSS.format(name="HelpScreen") + """
    HelpScreen > Vertical { width: 92; }
    HelpScreen VerticalScroll { height: auto; max-height: 70vh; }
    HelpScreen .help-title { margin-bottom: 1; }
    HelpScreen .help-note { margin-top: 1; color: $text-muted; }
    """
    BINDINGS = [Binding("escape,q,question_mark", "close", "close")]

    def compose(self):
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, what in KEYS_HELP:
            table.add_row(Text(key), Text(what))
        with Vertical():
            yield Static(Text("autoresearch-tui keys", style="bold"), classes="help-title")
            with VerticalScroll():
                yield Static(table)
                yield Static(Text(HEADER_HELP), classes="help-note")
            yield Static(Text("Keys that do not apply right now are dimmed or left out of the footer; pressed anyway, "
                              "they say why. The footer leaves out what does not fit (all keys are here). escape "
                              "closes.", style="italic"), classes="help-note")

    def action_close(self) -> None:
        self.dismiss(None)
