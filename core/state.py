"""engine.json (the engine's status snapshot) and engine.lock (one engine per workspace): writer and readers."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time

from .errors import UserError
from .workspace import Workspace, read_json

STATUSES = ("running", "paused", "stopping", "stopped")
PHASES = ("idle", "proposing", "validating", "training", "recording")


def pid_alive(pid) -> bool:
    """Is pid a live process? A zombie counts as dead (PID 1 in a container may never reap it)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2:][:1] not in (b"Z", b"X")
    except OSError:
        return True


def process_start_time(pid: int) -> int | None:
    """Start time of pid in clock ticks since boot (Linux), to tell a process from a later one with the same pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rfind(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class EngineLock:
    """fcntl.flock on .autoresearch/engine.lock; the kernel drops it when the engine dies, even on kill -9."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._fd: int | None = None

    def acquire(self, attempts: int = 5) -> "EngineLock":
        self.ws.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.ws.engine_lock, os.O_RDWR | os.O_CREAT, 0o644)
        for i in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # a status reader may hold it for a few microseconds (lock_held); retry briefly
                if i == attempts - 1:
                    os.close(fd)
                    pid = lock_holder_pid(self.ws)
                    who = f" (pid {pid})" if pid else ""
                    raise UserError(f"another engine is already running in this workspace{who}; watch it with "
                                    "`autoresearch status` or stop it with `autoresearch stop`.") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_holder_pid(ws: Workspace) -> int | None:
    try:
        return int(ws.engine_lock.read_text().strip())
    except (OSError, ValueError):
        return None


def lock_held(ws: Workspace) -> bool:
    """Is an engine holding the workspace lock right now?"""
    try:
        fd = os.open(ws.engine_lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class EngineState:
    """The engine's in-memory status, written atomically to engine.json on every change (thread-safe)."""

    def __init__(self, ws: Workspace, **fields):
        self.ws = ws
        self._lock = threading.Lock()
        self.data = {
            "pid": os.getpid(), "hostname": socket.gethostname(), "status": "running", "phase": "idle",
            "tag": None, "branch": None, "agent": None, "experiment": None, "best": None,
            "baseline_val_bpb": None, "experiments_done": 0, "max_experiments": None,
            "started_at": time.time(), "updated_at": time.time(), "child": None, "message": None,
        }
        self.data.update(fields)

    def update(self, **fields) -> dict:
        with self._lock:
            self.data.update(fields)
            self.data["updated_at"] = time.time()
            _write_snapshot(self.ws.engine_json, self.data)
            return dict(self.data)

    def update_experiment(self, **fields) -> None:
        with self._lock:
            if self.data.get("experiment") is not None:
                self.data["experiment"] = {**self.data["experiment"], **fields}
            self.data["updated_at"] = time.time()
            _write_snapshot(self.ws.engine_json, self.data)

    def get(self, key, default=None):
        with self._lock:
            return self.data.get(key, default)


def _write_snapshot(path, data: dict) -> None:
    """Replace engine.json atomically (temp file + os.replace). No fsync: it is rewritten a dozen times per
    experiment, and after a power loss the next engine rewrites it anyway; readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_status(ws: Workspace) -> dict:
    """engine.json plus `alive`. A snapshot left by an engine that is gone (kill -9, reboot) reads as stopped."""
    data = read_json(ws.engine_json, None)
    if not isinstance(data, dict):
        return {"status": "stopped", "phase": "idle", "alive": False, "pid": None, "experiment": None}
    data = dict(data)
    same_host = data.get("hostname") in (None, socket.gethostname())
    if same_host:
        alive = pid_alive(data.get("pid")) and lock_held(ws)
    else:
        alive = lock_held(ws)  # another machine sharing the folder: the lock is all we can see
    data["alive"] = alive
    if not alive and data.get("status") != "stopped":
        data["stale_status"] = data.get("status")
        data["status"] = "stopped"
        data["phase"] = "idle"
    return data


def running_engine(ws: Workspace) -> dict | None:
    """The live engine's status, or None when no engine runs in the workspace."""
    st = read_status(ws)
    return st if st.get("alive") else None
