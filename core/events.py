"""events.jsonl: the append-only event log of the engine (one JSON object per line), its writer and reader."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from .ledger import Finished
from .workspace import Workspace

TYPES = ("engine_started", "engine_stopped", "experiment_started", "phase_changed", "proposal_ready",
         "rejected", "training_started", "experiment_finished", "paused", "resumed", "abort_requested",
         "idea_queued", "idea_taken", "program_committed", "recovered", "rebase_needed", "overruled",
         "overrule_refused", "noise_remeasure", "noise_measured")


def _line(type_: str, exp_id: str | None, fields: dict) -> tuple[dict, bytes]:
    ev = {"ts": time.time(), "type": type_, "id": exp_id}
    ev.update(fields)
    # one write of one whole line: readers never see half an event, concurrent writers never interleave
    return ev, (json.dumps(ev, ensure_ascii=False, default=str) + "\n").encode("utf-8")


class EventLog:
    """Appends events for one engine; each event is written (and flushed) as it happens."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def emit(self, type_: str, exp_id: str | None = None, **fields) -> dict:
        ev, data = _line(type_, exp_id, fields)
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, data)
        return ev

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def emit(ws: Workspace, type_: str, exp_id: str | None = None, **fields) -> dict:
    """Append one event from outside the engine (the CLI or the TUI, e.g. idea_queued)."""
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    ev, data = _line(type_, exp_id, fields)
    fd = os.open(ws.events, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return ev


def read_finished(path: Path) -> list[Finished]:
    """Every experiment_finished record of an events.jsonl, in order (a line that is not JSON is skipped)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return []
    out = []
    for raw in data.splitlines():
        if b'"experiment_finished"' not in raw:  # most lines are other events: skip them unparsed
            continue
        try:
            ev = json.loads(raw)
        except ValueError:
            continue
        if isinstance(ev, dict) and ev.get("type") == "experiment_finished":
            out.append(Finished.from_event(ev))
    return out
