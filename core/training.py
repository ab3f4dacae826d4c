"""One training run of the workspace's trainer: the subprocess, the trusted metrics file, the verdict."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from . import pyconst
from .progress import parse_line
from .runner import LineTail, run
from .workspace import STATE_DIR, atomic_write_text

STARTUP_GRACE_S = 120.0  # model build, torch.compile and the final evaluation are outside TIME_BUDGET
DEFAULT_TIME_BUDGET = 300.0


def read_time_budget(ws_root: Path) -> float:
    tb = pyconst.read_one(Path(ws_root) / "constants.py", "TIME_BUDGET")
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
    values = pyconst.read(Path(ws_root) / "constants.py")
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


TRAINER_FILES = ("train.py", "prepare.py", "constants.py")  # what a run folder holds


def trainer_files(ws_root: Path, train_py: str | None = None) -> dict[str, str]:
    """The files one run needs, as data: the workspace's trusted prepare.py and constants.py, and train.py
    (the given text, else the workspace's)."""
    root = Path(ws_root)
    files = {name: (root / name).read_text(encoding="utf-8") for name in ("prepare.py", "constants.py")
             if (root / name).is_file()}
    files["train.py"] = train_py if train_py is not None else (root / "train.py").read_text(encoding="utf-8")
    return files


def _constants_of(files: dict[str, str]) -> dict:
    try:
        return {k: c.value for k, c in pyconst.parse(files.get("constants.py", "")).items()}
    except (SyntaxError, ValueError):
        return {}


def budget_of(files: dict[str, str]) -> float:
    tb = _constants_of(files).get("TIME_BUDGET")
    if isinstance(tb, (int, float)) and not isinstance(tb, bool) and tb > 0:
        return float(tb)
    return DEFAULT_TIME_BUDGET


def run_training(files: dict[str, str], run_dir: Path, *, logs: list[Path], metrics_out: Path | None,
                 timeout: float | None = None, env: dict[str, str] | None = None,
                 cancel: threading.Event | None = None, on_start: Callable[[int], None] | None = None,
                 on_phase: Callable[[str], None] | None = None,
                 on_output: Callable[[bytes], None] | None = None, cpus: tuple[int, ...] | None = None,
                 argv: list[str] | None = None) -> TrainResult:
    """One training run in its own folder: write the files there, run the trainer, read the trusted metrics.

    The verdict comes from the metrics file, never from stdout. Its path is a fresh file in a private temp
    folder, so train.py cannot guess it; its content is copied to metrics_out afterwards. run_dir is
    created fresh and removed at the end (the experiment folder keeps the logs and the metrics).
    """
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    for name, text in files.items():
        (run_dir / name).write_text(text, encoding="utf-8")
    tmpdir = Path(tempfile.mkdtemp(prefix="autoresearch-metrics-"))
    metrics_file = tmpdir / "metrics.json"
    full_env = trainer_env(os.environ)
    full_env.update(env or {})
    full_env["AUTORESEARCH_METRICS_FILE"] = str(metrics_file)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    timeout = timeout or default_timeout(budget_of(files))
    phase = {"now": "starting"}
    if on_phase:
        on_phase("starting")

    def started(pid: int) -> None:
        if cpus:
            try:
                psutil.Process(pid).cpu_affinity(list(cpus))
            except (psutil.Error, OSError, AttributeError):  # macOS has no affinity: threads are capped instead
                pass
        if on_start:
            on_start(pid)

    tail = LineTail(2)

    def output(data: bytes) -> None:
        if on_phase and phase["now"] == "starting":
            tail.feed(data)
            if any(parse_line(x) for x in tail.lines()):
                phase["now"] = "training"
                on_phase("training")
        if on_output:
            on_output(data)

    try:
        res = run(argv or [sys.executable, "train.py"], cwd=run_dir, env=full_env, logs=logs, timeout=timeout,
                  cancel=cancel, on_output=output, on_start=started)
        try:
            text = metrics_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
        tampered = [name for name in files if name != "train.py" and _read(run_dir / name) != files[name]]
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    if metrics_out is not None and text is not None:
        atomic_write_text(metrics_out, text)
    consts = _constants_of(files)
    expected = {key: consts[name] for key, name in _EVAL_CONSTANTS.items() if consts.get(name) is not None}
    metrics, invalid = parse_metrics(text, expected)
    reason = None
    if res.error:
        reason = res.error
    elif res.cancelled:
        reason = "cancelled"
    elif tampered:  # the evaluation lives in prepare.py: a run that rewrote it is not measured
        reason = f"rejected: {', '.join(tampered)} changed during training"
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


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


@dataclass
class LocalRunner:
    """One training run of the workspace's current train.py in a run folder under .autoresearch/runs/
    (`autoresearch run`)."""

    ws_root: Path
    argv: list[str] = field(default_factory=lambda: [sys.executable, "train.py"])
    timeout: float | None = None  # None: 2 x TIME_BUDGET + grace
    extra_env: dict[str, str] = field(default_factory=dict)

    def train(self, logs: list[Path], metrics_out: Path | None, cancel: threading.Event | None = None,
              on_output: Callable[[bytes], None] | None = None,
              on_start: Callable[[int], None] | None = None, run_id: str = "manual") -> TrainResult:
        root = Path(self.ws_root)
        return run_training(trainer_files(root), root / STATE_DIR / "runs" / run_id, logs=logs,
                            metrics_out=metrics_out, timeout=self.timeout, env=self.extra_env, cancel=cancel,
                            on_start=on_start, on_output=on_output, argv=self.argv)
