"""The run launcher: a child subreaper that starts one command in a Landlock sandbox and leaves nothing behind.

Usage (run as a script, so that nothing of the project needs to be importable where it runs):

    python core/sandbox.py [--ro PATH]... [--rw PATH]... [--dev PATH]... [--landlock] [--cpus 0,1] -- CMD ARG...

The launcher makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), forks, and in the child drops
every capability (a root trainer is then an ordinary process), applies the Landlock ruleset and execs CMD.
Whatever CMD starts stays below the launcher, even through setsid and double forks: orphans are re-parented
to it. When CMD exits, or when the launcher gets SIGTERM/SIGINT/SIGHUP, every process left below it is
killed, and the launcher exits with CMD's status (128 + signal when it was killed).

The launcher itself stays outside the sandbox, and with Landlock's signal scoping (ABI 6) the sandboxed
command cannot signal or ptrace it, so it cannot be killed from below. Landlock is applied in the child
before exec, not through preexec_fn: the engine is threaded, and forking it to run Python code is unsafe.

The ruleset (see `restrict`): read-only access to the --ro paths, read-write to the --rw paths, device
access to the --dev paths, the child's own /proc/<pid> and nothing else in /proc (other processes'
environments hold secrets, and Landlock's ptrace scoping does not stop reading /proc/<pid>/environ), no TCP
bind or connect, no signals to or abstract-socket connections with processes outside the sandbox.

landlockpy (a small, dependency-free binding with best-effort support of every Landlock ABI) does the
syscalls; capabilities go through libc's prctl and capset, which no maintained package wraps.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import signal
import sys
import time

try:
    import landlockpy
    from landlockpy import AccessFS, AccessNet, Scope
except ImportError:  # not installed, or not Linux: the run is then at integrity level L1
    landlockpy = None

SANDBOX_EXIT = 126  # the command could not be started in its sandbox (as a shell does for "cannot execute")
SWEEP_GRACE_S = 2.0  # SIGTERM, then SIGKILL for whatever is left below the launcher
PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


# --- what this machine offers ------------------------------------------------------------------

def landlock_abi() -> tuple[int, str | None]:
    """(Landlock ABI of this kernel, None) or (0, why there is no sandbox), in one plain sentence."""
    if not sys.platform.startswith("linux"):
        return 0, f"{sys.platform} has no Landlock; the trainer runs without a sandbox"
    if landlockpy is None:
        return 0, "the landlockpy package is not installed; the trainer runs without a sandbox"
    try:
        abi = landlockpy.abi_version()
    except OSError as e:
        return 0, f"Landlock cannot be queried ({e.strerror or e}); the trainer runs without a sandbox"
    if abi < 1:
        return 0, "this kernel has no Landlock (needs Linux 5.13+ with landlock in the LSM list)"
    return abi, None


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    libc.prctl.restype = ctypes.c_int
    return libc


def become_subreaper() -> bool:
    """Orphaned descendants of this process are re-parented to it instead of init (Linux 3.4+)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return _libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Empty the bounding, ambient and inheritable sets, so that the exec'ed command has no capability even
    as root (root's CAP_DAC_READ_SEARCH, CAP_SYS_MODULE, CAP_SYS_RAWIO ... reach around a path sandbox)."""
    libc = _libc()
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.EPERM):
            raise OSError(ctypes.get_errno(), f"cannot drop capability {cap}")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget failed")
    for d in data:
        d.inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")


# --- the ruleset --------------------------------------------------------------------------------

def restrict(ro: list[str], rw: list[str], dev: list[str]) -> int:
    """Apply the Landlock ruleset to this process (and everything it execs or forks); returns the ABI."""
    read = AccessFS.READ_FILE | AccessFS.READ_DIR | AccessFS.EXECUTE
    file_rights = (AccessFS.READ_FILE | AccessFS.WRITE_FILE | AccessFS.EXECUTE | AccessFS.TRUNCATE
                   | AccessFS.IOCTL_DEV)
    with landlockpy.Ruleset(handled_net=AccessNet.BIND_TCP | AccessNet.CONNECT_TCP,
                            scoped=Scope.SIGNAL | Scope.ABSTRACT_UNIX_SOCKET) as rs:
        everything = rs.handled_fs

        def allow(path: str, access) -> None:
            if not os.path.exists(path):
                return
            if not os.path.isdir(path):
                access &= file_rights  # the kernel refuses directory rights on a file
            rs.allow_path(path, access)

        for path in ro:
            allow(path, read)
        for path in rw:
            allow(path, everything)
        for path in dev:
            allow(path, AccessFS.READ_FILE | AccessFS.WRITE_FILE | AccessFS.TRUNCATE | AccessFS.IOCTL_DEV
                  | (everything if os.path.isdir(path) else 0))
        # this process's own /proc entry (the pid survives exec) and nothing else of /proc below a pid
        allow(f"/proc/{os.getpid()}", read | AccessFS.WRITE_FILE)
        rs.restrict()
        return rs.abi_version


# --- supervising the command ----------------------------------------------------------------------

class _Stop(Exception):
    def __init__(self, signum: int):
        self.signum = signum


def _on_signal(signum, frame):
    raise _Stop(signum)


def _descendants():
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def sweep(grace: float = SWEEP_GRACE_S) -> int:
    """Kill every process below this one (SIGTERM, then SIGKILL after grace) and reap them; returns how many
    there were. Repeated until none is left, so that a process forking while it is killed is caught too."""
    import psutil

    found: set[int] = set()
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    for _ in range(100):
        _reap()
        procs = [p for p in _descendants() if _alive(p)]
        if not procs:
            break
        for p in procs:
            found.add(p.pid)
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        if sig == signal.SIGTERM:
            _gone, alive = psutil.wait_procs(procs, timeout=max(0.05, deadline - time.monotonic()))
            _reap()
            sig = signal.SIGKILL if alive or time.monotonic() >= deadline else signal.SIGTERM
        else:
            psutil.wait_procs(procs, timeout=0.5)
    _reap()
    return len(found)


def _alive(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _child(args) -> None:
    """In the forked child: drop capabilities, apply Landlock, exec. Never returns."""
    try:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores SIGPIPE; the command must get defaults
        if args.landlock:
            if os.geteuid() == 0:
                drop_capabilities()
            restrict(args.ro, args.rw, args.dev)
        os.execvp(args.cmd[0], args.cmd)
    except BaseException as e:  # the parent reports it through the exit status
        try:
            os.write(2, f"autoresearch: cannot start {args.cmd[0]} in its sandbox: {e}\n".encode())
        finally:
            os._exit(SANDBOX_EXIT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandbox.py", description="Run a command in a Landlock sandbox as a "
                                     "child subreaper; nothing it starts outlives it.")
    parser.add_argument("--ro", action="append", default=[], help="path the command may read")
    parser.add_argument("--rw", action="append", default=[], help="path the command may read and write")
    parser.add_argument("--dev", action="append", default=[], help="device node (or folder of them) it may use")
    parser.add_argument("--landlock", action="store_true", help="apply the Landlock ruleset (else only contain)")
    parser.add_argument("--grace", type=float, default=SWEEP_GRACE_S, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--cpus", default=None, help="CPU affinity of the command, e.g. 0,1 (Linux)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARG...")
    args = parser.parse_args(argv)
    if args.cmd[:1] == ["--"]:
        args.cmd = args.cmd[1:]
    if not args.cmd:
        parser.error("no command given after --")
    if args.landlock and landlock_abi()[0] < 1:
        print(f"autoresearch: {landlock_abi()[1]}", file=sys.stderr)
        return SANDBOX_EXIT
    if args.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",") if c.strip()})  # inherited by the fork
    become_subreaper()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _child(args)
    code = 1
    try:
        while True:
            try:
                done, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if done == pid:
                code = _exit_status(status)
                break
        stopped = False
    except _Stop as stop:
        code, stopped = 128 + stop.signum, True
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # already on the way out: a second signal must not cut the sweep
    left = sweep(args.grace)
    if left and not stopped:
        print(f"autoresearch: stopped {left} process{'es' if left > 1 else ''} that {os.path.basename(args.cmd[-1])} "
              "left running", file=sys.stderr, flush=True)
    return code

if __name__ == "__main__":
    sys.exit(main())
