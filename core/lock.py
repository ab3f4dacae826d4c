"""engine.lock: one engine per workspace (fcntl.flock; the kernel drops it when the engine dies, even on kill -9)."""

from __future__ import annotations

import fcntl
import os
import time

from .errors import UserError
from .workspace import Workspace


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
