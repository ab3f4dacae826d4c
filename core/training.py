"""One training run of the workspace's trainer: the subprocess, the trusted metrics file, the verdict."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import pyconst
from .runner import run

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
