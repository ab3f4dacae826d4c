"""Control commands (pause|resume|abort|stop) and the idea queue, exchanged through files in .autoresearch/."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .workspace import Workspace, atomic_write_text

COMMANDS = ("pause", "resume", "abort", "stop", "keep", "revert", "noise")
WITH_ID = ("abort", "keep")  # commands about one experiment


def _private_dir(path: Path) -> Path:
    """Create a 0700 folder: other users on a shared GPU box must not be able to steer this engine."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def send(ws: Workspace, command: str, exp_id: str | None = None) -> Path:
    """Write a command file atomically; the engine picks it up within a fraction of a second.

    exp_id: `abort` of one experiment (the others go on); without it, abort kills every run in flight."""
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r}")
    if exp_id is not None and (command not in WITH_ID or not exp_id.isdigit()):
        raise ValueError(f"only {' and '.join(WITH_ID)} take an experiment id, a number like 0007 (not {exp_id!r})")
    if command == "keep" and exp_id is None:
        raise ValueError("keep needs the experiment id")
    d = _private_dir(ws.control_dir)
    path = d / (command if exp_id is None else f"{command}-{exp_id}")
    atomic_write_text(path, json.dumps({"command": command, "id": exp_id, "ts": time.time(), "pid": os.getpid()})
                      + "\n", mode=0o600)
    return path


def take(ws: Workspace) -> list[tuple[str, str | None]]:
    """Consume pending command files (engine side) as (command, experiment id or None), in a fixed priority
    order: abort, stop, pause, resume, then a person's decisions (keep, revert) and noise."""
    d = ws.control_dir
    if not d.is_dir():
        return []
    try:
        names = os.listdir(d)
    except OSError:
        return []
    found = []
    for cmd in ("abort", "stop", "pause", "resume", "keep", "revert", "noise"):
        for name in sorted(n for n in names if n == cmd or (cmd in WITH_ID and n.startswith(cmd + "-"))):
            try:
                (d / name).unlink()
            except FileNotFoundError:
                continue
            exp_id = name.partition("-")[2] or None
            found.append((cmd, exp_id if exp_id and exp_id.isdigit() else None))
    return found


def queue_idea(ws: Workspace, text: str) -> Path:
    """Queue an idea for the agent's next proposal; each idea is offered to exactly one proposal."""
    text = " ".join(text.split())
    if not text:
        raise ValueError("empty idea")
    d = _private_dir(ws.ideas_dir)
    name = f"{time.time_ns():020d}-{os.getpid()}.txt"
    atomic_write_text(d / name, text + "\n", mode=0o600)
    return d / name


def pending_ideas(ws: Workspace) -> list[str]:
    d = ws.ideas_dir
    if not d.is_dir():
        return []
    ideas = []
    for p in sorted(d.glob("*.txt")):
        try:
            ideas.append(p.read_text(encoding="utf-8", errors="replace").strip())
        except OSError:  # taken by the engine meanwhile
            continue
    return [i for i in ideas if i]


def take_idea(ws: Workspace) -> str | None:
    """Pop the oldest queued idea (engine side). The file is removed so it is never offered twice."""
    d = ws.ideas_dir
    if not d.is_dir():
        return None
    for p in sorted(d.glob("*.txt")):
        try:
            text = p.read_text(encoding="utf-8", errors="replace").strip()  # a hand-written file may not be UTF-8
            p.unlink()
        except OSError:
            continue
        if text:
            return text
    return None


def program_pending_path(ws: Workspace) -> Path:
    return ws.state_dir / "program.pending.md"


def submit_program(ws: Workspace, text: str) -> Path:
    """Hand the engine new directives; it writes and commits program.md before its next proposal.

    Editing program.md in place is fine between proposals; this path is safe at any time (an edit that
    lands while the agent is proposing would otherwise be taken for the agent's and rejected)."""
    path = program_pending_path(ws)
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text, mode=0o600)
    return path


def pending_program(ws: Workspace) -> str | None:
    """Submitted directives the engine has not applied yet."""
    try:
        return program_pending_path(ws).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def take_program(ws: Workspace) -> str | None:
    """Pop submitted directives (engine side). Text older than program.md itself (someone edited the file
    after submitting, e.g. while no engine ran) is dropped: the newer edit wins."""
    path = program_pending_path(ws)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        submitted = path.stat().st_mtime_ns
        path.unlink()
    except OSError:
        return None
    try:
        if ws.program_md.stat().st_mtime_ns > submitted:
            return None
    except OSError:
        pass
    return text
