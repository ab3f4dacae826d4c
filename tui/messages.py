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


class GpuSampled(Message):
    """One GPU poll (core.gpu.GpuSample) plus the trainer's resident memory for the no-GPU state."""

    def __init__(self, sample, trainer_rss_mb: float | None = None, engine_rss_mb: float | None = None) -> None:
        super().__init__()
        self.sample = sample
        self.trainer_rss_mb = trainer_rss_mb
        self.engine_rss_mb = engine_rss_mb

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, GpuSampled)


class LogAppended(Message):
    """A tail worker has new lines waiting in its pane's buffer (the payload stays in the buffer, bounded)."""

    def __init__(self, pane) -> None:
        super().__init__()
        self.pane = pane

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LogAppended) and message.pane is self.pane


class LiveLineChanged(Message):
    """A log pane's live (`\r` progress) line changed; the header reads the trainer's own countdown from it."""

    def __init__(self, pane, text: str) -> None:
        super().__init__()
        self.pane = pane
        self.text = text

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, LiveLineChanged) and message.pane is self.pane


class ExperimentChosen(Message):
    """The user picked a row of the results table (enter or double click)."""

    def __init__(self, experiment) -> None:
        super().__init__()
        self.experiment = experiment


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
