"""The engine's control state (pause, stop, signals), shared by the main loop, the control watcher and signal
handlers."""

from __future__ import annotations

import signal
import threading


class Controls:
    """Flags behind one condition variable. Signal handlers only set plain attributes (the main thread may hold
    any lock when a signal arrives)."""

    def __init__(self):
        self.cv = threading.Condition()
        self.paused = False
        self.pause_reason: str | None = None
        self.stop_requested = False
        self.signalled: str | None = None  # SIGTERM, SIGINT or SIGHUP: kill what runs, record, exit

    # --- written by the watcher thread and the engine -------------------------------------------------
    def pause(self, reason: str | None = None) -> bool:
        """True when this call paused a running engine."""
        with self.cv:
            if self.paused:
                return False
            self.paused, self.pause_reason = True, reason
            self.cv.notify_all()
            return True

    def resume(self) -> bool:
        with self.cv:
            if not self.paused:
                return False
            self.paused, self.pause_reason = False, None
            self.cv.notify_all()
            return True

    def request_stop(self) -> None:
        with self.cv:
            self.stop_requested = True
            self.cv.notify_all()

    def on_signal(self, signum, frame) -> None:
        self.signalled = signal.Signals(signum).name

    # --- read by the engine -----------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.stop_requested or self.signalled is not None

    def status(self) -> str:
        """engine.json's status word."""
        return "stopping" if self.stopping else "paused" if self.paused else "running"
