"""Run one subprocess in its own process group with streamed logs, a hard timeout and cancel."""

from __future__ import annotations

import codecs
import os
import selectors
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .procs import KILL_GRACE_S, group_alive, kill_group

TAIL_LINES = 50
LOG_CAP_BYTES = 256 << 20  # per log file; the tail for the crash report keeps coming
POLL_S = 0.1  # how often the wait loop looks at timeout and cancel
_MAX_LIVE_CHARS = 65536  # a progress line that never ends must not grow without bound


# --- progress lines -----------------------------------------------------------------------------

def split_progress(text: str) -> tuple[list[str], str]:
    """Split decoded output into (finished lines, pending text).

    A finished line is what a terminal would show after its `\\n`: the part after the last `\\r`
    (progress bars rewrite one line with `\\r`). Pending text is everything after the last `\\n`.
    """
    *done, pending = text.split("\n")
    lines = [_last_segment(line) for line in done]
    return lines, pending


def _last_segment(line: str) -> str:
    """The text a terminal shows for a line rewritten with `\\r` (a trailing `\\r` of `\\r\\n` is ignored)."""
    parts = [p for p in line.split("\r") if p]
    return parts[-1] if parts else ""


class LineTail:
    """Keeps the last N finished lines plus the live (`\\r`-rewritten) line of a byte stream, in bounded memory."""

    def __init__(self, n: int = TAIL_LINES):
        self.n = n
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._lines: list[str] = []
        self._pending = ""

    def feed(self, data: bytes) -> None:
        lines, self._pending = split_progress(self._pending + self._decoder.decode(data))
        if lines:
            self._lines.extend(lines)
            del self._lines[: -self.n]
        if len(self._pending) > _MAX_LIVE_CHARS:
            self._pending = _last_segment(self._pending)[-_MAX_LIVE_CHARS:]

    @property
    def live(self) -> str:
        return _last_segment(self._pending)

    def lines(self) -> list[str]:
        """Last n lines, the unfinished live line included (it is often the most telling one)."""
        out = list(self._lines)
        if self.live:
            out.append(self.live)
        return out[-self.n:]


# --- one subprocess -----------------------------------------------------------------------------

class LogSink:
    """A run's output into its log files (truncated first, cut at LOG_CAP_BYTES: a runaway print loop must not
    fill the disk before the timeout) and to an echo callback; a sink that fails (a full disk, `autoresearch
    run | head`) is dropped and the run goes on. `tail` keeps the last lines for the crash report."""

    def __init__(self, paths, on_output: Callable[[bytes], None] | None = None):
        self.tail = LineTail()
        self._echo = on_output
        self._written = 0
        self._files = []
        for path in paths:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._files.append(open(path, "wb", buffering=0))

    def write(self, data: bytes) -> None:
        self.tail.feed(data)
        if self._written < LOG_CAP_BYTES:
            chunk = data[:LOG_CAP_BYTES - self._written]
            self._written += len(chunk)
            if self._written >= LOG_CAP_BYTES:
                chunk += f"\n[autoresearch: log cut at {LOG_CAP_BYTES >> 20} MiB]\n".encode()
            for f in list(self._files):
                try:
                    f.write(chunk)
                except OSError:
                    self._files.remove(f)
                    f.close()
        if self._echo is not None:
            try:
                self._echo(data)
            except Exception:
                self._echo = None

    def close(self) -> None:
        for f in self._files:
            f.close()

@dataclass
class RunResult:
    returncode: int | None
    timed_out: bool
    cancelled: bool
    duration_s: float
    tail: list[str]
    pid: int | None = None
    error: str | None = None  # the command could not be started at all (missing executable, ...)


def run(argv: list[str], *, cwd: Path | str, env: dict[str, str] | None, logs: list[Path],
        timeout: float | None, cancel: threading.Event | None,
        on_output: Callable[[bytes], None] | None = None,
        on_start: Callable[[int], None] | None = None) -> RunResult:
    """Run argv in a new session, streaming its raw bytes (stdout and stderr together) to every log path.

    Every log is truncated first. On timeout or cancel the whole process group gets SIGTERM, then
    SIGKILL after 5 s. When the command itself exits, helpers it left behind in its group are
    killed too (a stray data-loader process must not keep holding the GPU).
    """
    t0 = time.monotonic()
    sink = LogSink(logs, on_output)
    tail, emit = sink.tail, sink.write
    try:
        try:
            proc = subprocess.Popen(argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        except OSError as e:
            msg = f"could not start {argv[0]}: {e.strerror or e}"
            emit((msg + "\n").encode())
            return RunResult(None, False, False, time.monotonic() - t0, tail.lines(), error=msg)
        pgid = proc.pid  # start_new_session makes the child the leader of its own group
        try:
            return _follow(proc, pgid, emit, tail, t0, timeout, cancel, on_start)
        except BaseException:
            # whatever went wrong here (KeyboardInterrupt, a failing callback), the group must not outlive us
            kill_group(pgid, proc, grace=1.0)
            raise
    finally:
        sink.close()


def _follow(proc: subprocess.Popen, pgid: int, emit: Callable[[bytes], None], tail: LineTail, t0: float,
            timeout: float | None, cancel: threading.Event | None,
            on_start: Callable[[int], None] | None) -> RunResult:
    """Stream the group's output until it exits, times out or is cancelled; then make sure it is gone."""
    if on_start is not None:
        on_start(proc.pid)
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    timed_out = cancelled = False
    eof = False
    deadline = None if timeout is None else t0 + timeout
    exited_at = None
    while True:
        for _ in sel.select(POLL_S):
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if not data:
                    eof = True
                    sel.unregister(fd)
                    break
                emit(data)
            if eof:
                break
        if proc.poll() is not None:
            if eof:
                break
            # the leader is gone but something still holds the pipe: a helper left in the group
            if exited_at is None:
                exited_at = time.monotonic()
                if group_alive(pgid):
                    kill_group(pgid, proc, grace=1.0)
            elif time.monotonic() - exited_at > 2.0:
                break  # a process that left the group (setsid) holds the pipe; stop reading
            continue
        if cancel is not None and cancel.is_set():
            cancelled = True
        elif deadline is not None and time.monotonic() > deadline:
            timed_out = True
        if cancelled or timed_out:
            kill_group(pgid, proc)
            # keep whatever the group printed while dying
            try:
                while (data := os.read(fd, 65536)):
                    emit(data)
            except (BlockingIOError, OSError):
                pass
            break
    sel.close()
    proc.stdout.close()
    if group_alive(pgid):
        kill_group(pgid, proc, grace=1.0)
    try:
        rc = proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        rc = None
    return RunResult(rc, timed_out, cancelled, time.monotonic() - t0, tail.lines(), pid=proc.pid)
