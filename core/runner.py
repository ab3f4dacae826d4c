"""Run one subprocess in its own process group with streamed logs, a hard timeout and cancel; run the trainer."""

from __future__ import annotations

import ast
import codecs
import json
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TAIL_LINES = 50
KILL_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this many seconds
LOG_CAP_BYTES = 256 << 20  # per log file; the tail for the crash report keeps coming
POLL_S = 0.1  # how often the wait loop looks at timeout and cancel
STARTUP_GRACE_S = 120.0  # model build, torch.compile and the final evaluation are outside TIME_BUDGET
DEFAULT_TIME_BUDGET = 300.0
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

@dataclass
class RunResult:
    returncode: int | None
    timed_out: bool
    cancelled: bool
    duration_s: float
    tail: list[str]
    pid: int | None = None
    error: str | None = None  # the command could not be started at all (missing executable, ...)


def _group_alive(pgid: int) -> bool:
    """Does any non-zombie process remain in the group? (Zombies count as gone: PID 1 may never reap them.)"""
    if os.path.isdir("/proc/self"):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # fields after the command (which may hold spaces and parens): state ppid pgrp ...
            rest = stat[stat.rfind(b")") + 2:].split()
            if len(rest) > 2 and int(rest[2]) == pgid and rest[0] not in (b"Z", b"X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_group(pgid: int, proc: subprocess.Popen | None = None, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM the whole process group (children and grandchildren), then SIGKILL whatever is left after grace."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap the leader so it does not count as alive
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc is not None:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


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
    tail = LineTail()
    files = []
    for path in logs:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        files.append(open(path, "wb", buffering=0))

    echo = on_output
    written = 0

    def emit(data: bytes) -> None:
        nonlocal echo, written
        # a sink that fails (a full disk, `autoresearch run | head`) is dropped; the run itself goes on
        tail.feed(data)
        if written < LOG_CAP_BYTES:
            chunk = data[:LOG_CAP_BYTES - written]
            written += len(chunk)
            if written >= LOG_CAP_BYTES:  # a runaway print loop must not fill the disk before the timeout
                chunk += f"\n[autoresearch: log cut at {LOG_CAP_BYTES >> 20} MiB]\n".encode()
            for f in list(files):
                try:
                    f.write(chunk)
                except OSError:
                    files.remove(f)
                    f.close()
        if echo is not None:
            try:
                echo(data)
            except Exception:
                echo = None

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
        for f in files:
            f.close()


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
                if _group_alive(pgid):
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
    if _group_alive(pgid):
        kill_group(pgid, proc, grace=1.0)
    try:
        rc = proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        rc = None
    return RunResult(rc, timed_out, cancelled, time.monotonic() - t0, tail.lines(), pid=proc.pid)


# --- the trainer ----------------------------------------------------------------------------------

def _const_eval(node: ast.AST):
    """Evaluate a constant expression such as `5 * 60` without running any code."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _const_eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = _const_eval(node.left), _const_eval(node.right)
        ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
               ast.Div: lambda: a / b, ast.FloorDiv: lambda: a // b, ast.Pow: lambda: a ** b}
        for op, fn in ops.items():
            if isinstance(node.op, op):
                return fn()
    raise ValueError("not a constant expression")


def read_constants(path: Path) -> dict:
    """Top-level `NAME = <literal>` assignments of a Python file, by parsing it (never importing it)."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return {}
    values = {}
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets, expr = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, expr = [node.target], node.value
        for t in targets:
            if isinstance(t, ast.Name):
                try:
                    values[t.id] = ast.literal_eval(expr)
                except ValueError:
                    try:
                        values[t.id] = _const_eval(expr)
                    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
                        pass
    return values


def read_constant(path: Path, name: str, default=None):
    """One top-level constant of a Python file (see read_constants)."""
    return read_constants(path).get(name, default)


def read_time_budget(ws_root: Path) -> float:
    tb = read_constant(Path(ws_root) / "constants.py", "TIME_BUDGET", None)
    if isinstance(tb, (int, float)) and not isinstance(tb, bool) and tb > 0:
        return float(tb)
    return DEFAULT_TIME_BUDGET


def default_timeout(time_budget: float) -> float:
    """Hard trainer timeout: twice the budget plus a startup grace (compilation, evaluation)."""
    return 2 * time_budget + STARTUP_GRACE_S


@dataclass
class TrainResult:
    ok: bool
    val_bpb: float | None
    peak_vram_mb: float | None
    metrics: dict
    reason: str | None  # why it crashed; None when ok
    tail: list[str]
    duration_s: float
    returncode: int | None = None
    timed_out: bool = False
    cancelled: bool = False

    @property
    def memory_gb(self) -> float:
        return (self.peak_vram_mb or 0.0) / 1024


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# metrics.json key -> constants.py name: the evaluation must have run with the workspace's fixed constants
_EVAL_CONSTANTS = {"eval_tokens": "EVAL_TOKENS", "max_seq_len": "MAX_SEQ_LEN", "vocab_size": "VOCAB_SIZE",
                   "dataset": "DATASET"}


def expected_eval_constants(ws_root: Path) -> dict:
    """The evaluation constants of the workspace's constants.py (read by parsing, never imported)."""
    values = read_constants(Path(ws_root) / "constants.py")
    return {key: values[name] for key, name in _EVAL_CONSTANTS.items() if values.get(name) is not None}


def parse_metrics(text: str | None, expected: dict | None = None) -> tuple[dict, str | None]:
    """Validate the trusted metrics file's content: returns (metrics, None) or ({...}, reason it is invalid).

    `expected` holds the evaluation constants of constants.py: train.py runs in the same process as the
    evaluation, so a run that evaluated with other values (e.g. it reassigned prepare.EVAL_TOKENS) is refused.
    """
    if text is None:
        return {}, "no metrics were written (the run did not reach the evaluation)"
    try:
        metrics = json.loads(text)
    except ValueError:
        return {}, "the metrics file is not valid JSON"
    if not isinstance(metrics, dict):
        return {}, "the metrics file does not hold a JSON object"
    v = metrics.get("val_bpb")
    if not _finite(v) or v <= 0:
        return metrics, f"invalid val_bpb in the metrics file: {v!r}"
    mem = metrics.get("peak_vram_mb", 0.0)
    if mem is None:
        mem = 0.0
    if not _finite(mem) or mem < 0:
        return metrics, f"invalid peak_vram_mb in the metrics file: {mem!r}"
    for key, want in (expected or {}).items():
        if key in metrics and metrics[key] != want:
            return metrics, (f"the evaluation ran with {key}={metrics[key]!r} but constants.py says {want!r} "
                             "(train.py must not change the evaluation constants)")
    return metrics, None


_SECRET_NAME = re.compile(r"API_KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def trainer_env(environ) -> dict[str, str]:
    """The trainer runs code the agent wrote and its output lands in logs: it gets no API keys or tokens."""
    return {k: v for k, v in environ.items() if not _SECRET_NAME.search(k)}


@dataclass
class LocalRunner:
    """Where and how one training run executes: here, a local subprocess in the workspace.

    Multi-GPU workers later get the same `train()` with their own device and worktree.
    """

    ws_root: Path
    argv: list[str] = field(default_factory=lambda: [sys.executable, "train.py"])
    timeout: float | None = None  # None: 2 x TIME_BUDGET + grace
    extra_env: dict[str, str] = field(default_factory=dict)

    def effective_timeout(self) -> float:
        return self.timeout if self.timeout else default_timeout(read_time_budget(self.ws_root))

    def train(self, logs: list[Path], metrics_out: Path | None, cancel: threading.Event | None = None,
              on_output: Callable[[bytes], None] | None = None,
              on_start: Callable[[int], None] | None = None) -> TrainResult:
        """Run the trainer once; the verdict comes from the trusted metrics file, never from stdout.

        The metrics path handed to the trainer is a fresh file in a private temp folder, so train.py
        cannot guess it; its content is copied to metrics_out afterwards.
        """
        tmpdir = Path(tempfile.mkdtemp(prefix="autoresearch-metrics-"))
        metrics_file = tmpdir / "metrics.json"
        env = trainer_env(os.environ)
        env.update(self.extra_env)
        env["AUTORESEARCH_METRICS_FILE"] = str(metrics_file)
        env.setdefault("PYTHONUNBUFFERED", "1")
        timeout = self.effective_timeout()
        try:
            res = run(self.argv, cwd=self.ws_root, env=env, logs=logs, timeout=timeout, cancel=cancel,
                      on_output=on_output, on_start=on_start)
            try:
                text = metrics_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                text = None
        finally:
            for p in tmpdir.iterdir() if tmpdir.exists() else []:
                try:
                    p.unlink()
                except OSError:
                    pass
            try:
                tmpdir.rmdir()
            except OSError:
                pass
        if metrics_out is not None and text is not None:
            from .workspace import atomic_write_text
            atomic_write_text(metrics_out, text)
        metrics, invalid = parse_metrics(text, expected_eval_constants(self.ws_root))
        reason = None
        if res.error:
            reason = res.error
        elif res.cancelled:
            reason = "cancelled"
        elif res.timed_out:
            reason = f"timed out after {timeout:.0f} s (hard limit)"
        elif res.returncode != 0:
            reason = f"train.py exited with code {res.returncode}"
            if invalid is None:
                reason += " after writing its metrics"
        elif invalid:
            reason = invalid
        ok = reason is None
        return TrainResult(ok=ok, val_bpb=float(metrics["val_bpb"]) if ok else None,
                           peak_vram_mb=float(metrics.get("peak_vram_mb") or 0.0) if ok else None,
                           metrics=metrics, reason=reason, tail=res.tail, duration_s=res.duration_s,
                           returncode=res.returncode, timed_out=res.timed_out, cancelled=res.cancelled)
