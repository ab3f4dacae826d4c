"""Nothing a run starts outlives it, and no secret sits where it can read: run markers, subreapers, leftovers.

Three lines of defence, from the strongest:
1. every run executes below its own launcher (core/sandbox.py), a child subreaper outside the sandbox that
   kills whatever is left below it when the command ends or when it is told to stop; setsid and double
   forks cannot leave it, since orphans are re-parented to it;
2. every process of a run inherits AUTORESEARCH_RUN=<workspace key>/<run id> in its environment, so that
   the end of a run (`sweep_run`) and the next engine after a kill -9 (`kill_orphans`) find what a dead
   launcher left, wherever it was re-parented;
3. the engine itself can be a child subreaper (`become_subreaper`), so that orphans of a launcher that was
   killed (possible only without a sandbox) come to the engine instead of init.
A process that both escaped its launcher and exec'ed with a cleared environment is out of reach of 2; on
Linux with Landlock the trainer cannot kill its launcher, so 1 holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Callable

import psutil

from . import sandbox
from .procs import KILL_GRACE_S, kill_processes

RUN_ENV = "AUTORESEARCH_RUN"
SECRETS_FD_ENV = "AUTORESEARCH_SECRETS_FD"
SECRET_NAME = re.compile(r"API_KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY|ACCESS_KEY|AUTH",
                         re.IGNORECASE)


def workspace_key(ws_root: str | os.PathLike) -> str:
    """A short stable name of a workspace for run markers: this machine's name and the folder, hashed (runs of
    two engines on a shared Ray cluster never carry the same marker)."""
    where = f"{socket.gethostname()}:{Path(ws_root).resolve()}"
    return hashlib.sha1(where.encode()).hexdigest()[:16]


def run_marker(owner: str, run_id: str) -> str:
    return f"{owner}/{run_id}"


def become_subreaper() -> bool:
    """Make this process (the engine) the child subreaper of everything it starts; False where the OS has none
    (macOS: orphans go to launchd, and only the run marker finds them)."""
    return sandbox.become_subreaper()


def _marker_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(RUN_ENV)
    except (psutil.Error, OSError):  # gone, a zombie, or another user's process
        return None


def marked(predicate: Callable[[str], bool]) -> list[psutil.Process]:
    """Live processes whose environment holds a run marker that predicate accepts (this process excluded)."""
    me = os.getpid()
    out = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        marker = _marker_of(proc)
        if marker is not None and predicate(marker):
            try:
                if proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc)
            except psutil.Error:
                continue
    return out


def _with_descendants(procs: list[psutil.Process]) -> list[psutil.Process]:
    seen: dict[int, psutil.Process] = {}
    for proc in procs:
        seen.setdefault(proc.pid, proc)
        try:
            for child in proc.children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(seen.values())


def _kill(procs: list[psutil.Process], grace: float) -> int:
    procs = _with_descendants(procs)
    if not procs:
        return 0
    n = kill_processes(procs, grace=grace)
    reap_children([p.pid for p in procs])
    return n


def reap_children(pids: list[int]) -> None:
    """Collect the exit status of those of pids that are (adopted) children of this process, so that no
    zombie stays behind; other pids are left alone (their own parent waits for them)."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            continue


def sweep_run(marker: str, grace: float = 1.0) -> int:
    """Kill every process (and its descendants) that carries this run's marker; returns how many were alive.
    Called at the end of every run, also after a timeout, a cancel or an abort."""
    return _kill(marked(lambda m: m == marker), grace)


def kill_orphans(ws_root: str | os.PathLike, log: Callable[[str], None] | None = None,
                 grace: float = KILL_GRACE_S) -> int:
    """Recovery after the engine died: kill every process left by a run of this workspace. Call it only when
    no engine of this workspace is alive (the engine lock is held), or it would kill that engine's runs."""
    prefix = workspace_key(ws_root) + "/"
    procs = marked(lambda m: m.startswith(prefix))
    if not procs:
        return 0
    n = _kill(procs, grace)
    if log:
        log(f"autoresearch: stopped {n} process{'es' if n != 1 else ''} left running by an interrupted run.")
    return n


def reexec_without_secrets() -> bool:
    """Call first thing in the engine's process (before any thread starts): if its exec-time environment holds
    secrets (variables named like API keys and tokens), re-exec the same command with them moved out of the
    environment into an anonymous memory file, then put them back into os.environ.

    The kernel shows a process's exec-time environment in /proc/<pid>/environ to every process of the same
    user (root: to all); os.environ changes after exec do not appear there. So after this, a trainer that
    finds the engine's pid reads no key from it, while the agents the engine starts still get their keys.
    Returns True in the re-exec'ed process when secrets were restored; False when there was nothing to do.
    """
    fd = os.environ.pop(SECRETS_FD_ENV, None)
    if fd is not None:
        try:
            with os.fdopen(int(fd), "rb") as f:
                os.environ.update(json.loads(f.read() or b"{}"))
        except (OSError, ValueError):
            return False
        return True
    secrets = {k: v for k, v in os.environ.items() if SECRET_NAME.search(k)}
    payload = json.dumps(secrets).encode()
    if not secrets or len(payload) > 16384:  # a pipe holds 16 KiB everywhere without a reader
        return False
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("autoresearch-secrets", 0)  # no path; inherited only through this exec
        os.write(fd, payload)
        os.lseek(fd, 0, os.SEEK_SET)
    else:  # macOS: a pipe, written whole before the exec
        fd, w = os.pipe()
        os.write(w, payload)
        os.close(w)
    os.set_inheritable(fd, True)
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    env[SECRETS_FD_ENV] = str(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    return False  # not reached
