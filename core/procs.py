"""Process facts through psutil (alive, start time, descendants, memory) and killing a process tree."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import psutil

KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this many seconds
MB = 1024 * 1024


@dataclass(frozen=True)
class ProcessId:
    """A pid plus its start time: a later process that reuses the pid is not the same process."""

    pid: int
    start_time: float | None

    def to_json(self) -> dict:
        return {"pid": self.pid, "start_time": self.start_time}

    @classmethod
    def from_json(cls, data) -> "ProcessId | None":
        if not isinstance(data, dict):
            return None
        pid = data.get("pid")
        start = data.get("start_time")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
            return None
        return cls(pid, float(start) if isinstance(start, (int, float)) and not isinstance(start, bool) else None)

    @classmethod
    def of(cls, pid: int) -> "ProcessId":
        return cls(pid, start_time(pid))

    def alive(self) -> bool:
        """Still the same live process (a zombie counts as dead: PID 1 in a container may never reap it)."""
        if not pid_alive(self.pid):
            return False
        return self.start_time is None or start_time(self.pid) == self.start_time


def pid_alive(pid) -> bool:
    """Is pid a live process? A zombie counts as dead."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def start_time(pid: int) -> float | None:
    """The process's creation time (epoch seconds), to tell it from a later process with the same pid."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process in MiB; None if it is gone or unreadable."""
    try:
        return psutil.Process(pid).memory_info().rss / MB
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (children, grandchildren, ...)."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return []


def tree_rss_mb(pids: list[int]) -> float:
    """Summed resident memory of these processes in MiB (gone ones count 0)."""
    return sum(rss_mb(p) or 0.0 for p in pids)


@dataclass(frozen=True)
class MachineMemory:
    used_mb: float
    total_mb: float


def machine_memory() -> MachineMemory | None:
    try:
        vm = psutil.virtual_memory()
    except (OSError, RuntimeError):
        return None
    return MachineMemory(used_mb=(vm.total - vm.available) / MB, total_mb=vm.total / MB)


def cpu_percent() -> float | None:
    """Machine-wide CPU use since the previous call (0-100); None on the first call."""
    try:
        return psutil.cpu_percent(interval=None)
    except (OSError, RuntimeError):
        return None


def cpu_count() -> int:
    """CPU cores this process may run on (its affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError, OSError):
            continue
    return out


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def kill_group(pgid: int, proc=None, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM the whole process group (children and grandchildren), then SIGKILL whatever is left after grace.

    proc: the group leader's subprocess.Popen, reaped here so that it does not linger as a zombie."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        try:
            proc.wait(timeout=grace)
        except Exception:  # subprocess.TimeoutExpired: an unkillable (D-state) process; nothing more to do
            pass


def kill_processes(procs: list[psutil.Process], grace: float = KILL_GRACE_S) -> int:
    """SIGTERM these processes, SIGKILL the ones still alive after grace; returns how many were found alive."""
    alive = []
    for p in procs:
        try:
            p.terminate()
            alive.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    _gone, left = psutil.wait_procs(alive, timeout=grace)
    for p in left:
        try:
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    psutil.wait_procs(left, timeout=grace)
    return len(alive)
