"""Messages that cross widgets (past-tense events); high-rate ones coalesce through can_replace."""

from __future__ import annotations

from textual.message import Message


class StateChanged(Message):
    """A new workspace snapshot was read; only the newest pending one matters."""

    def __init__(self, snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StateChanged)


class MonitorSampled(Message):
    """One monitor sample (tui.monitor.Sample: GPUs, CPU and memory, each slot's run); only the newest matters."""

    def __init__(self, sample) -> None:
        super().__init__()
        self.sample = sample

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, MonitorSampled)


class LogAppended(Message):
    """A tail worker has new lines waiting in its pane's buffer (the payload stays in the buffer, bounded)."""

    def __init__(self, pane) -> None:
        super().__init__()
        self.pane = pane

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LogAppended) and message.pane is self.pane


class ExperimentChosen(Message):
    """The user picked an experiment: a row of the results table (enter or double click), or a running one."""

    def __init__(self, experiment=None, exp_id: str | None = None) -> None:
        super().__init__()
        self.experiment = experiment
        self.exp_id = exp_id if exp_id is not None else getattr(experiment, "exp_id", None)


class EngineStartFinished(Message):
    """The detached start command returned: ok, or a one-sentence reason."""

    def __init__(self, ok: bool, detail: str = "") -> None:
        super().__init__()
        self.ok = ok
        self.detail = detail


class DemoPrepared(Message):
    """The demo workspace exists and its data is ready (or preparing it failed, with the reason)."""

    def __init__(self, ok: bool, detail: str = "") -> None:
        super().__init__()
        self.ok = ok
        self.detail = detail


class SlotSelected(Message):
    """The Slots pane's selection moved: the log pane follows this slot's run (None: no slot)."""

    def __init__(self, slot_id: str | None) -> None:
        super().__init__()
        self.slot_id = slot_id
