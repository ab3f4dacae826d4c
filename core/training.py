"""One training run: the sandboxed trainer, the hand-over of its model, the separate evaluator, the verdict.

A run (run_training) is, in order:
1. the trainer: train.py in a fresh run folder, started by the launcher (core/sandbox.py) in a Landlock
   sandbox where the OS has one, with an environment built from an allow-list, HOME in the run folder;
2. the hand-over: train.py exports its model (prepare.hand_over) into $AUTORESEARCH_HANDOFF (.handoff/ of
   the run folder); the engine takes it the moment it appears, which ends the trainer's training time:
   TIME_BUDGET + STARTUP_ALLOWANCE (both of constants.py) is the limit, measured here, whatever train.py counts;
3. containment: the trainer and everything it started are gone before anything is measured;
4. the evaluator: a trusted copy of prepare.py (`--evaluate`), run by the same launcher in its own
   sandbox, loads the exported graph without running any of train.py's code and computes val_bpb.
The verdict comes from the evaluator's metrics file only; nothing train.py prints or writes is believed,
except the figures it reports about itself (training_seconds, num_steps, ...), kept as information.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import containment, pyconst, sandbox
from .progress import parse_line
from .runner import LineTail, run
from .workspace import STATE_DIR, atomic_write_text

STARTUP_GRACE_S = 120.0  # kept for callers: the default of STARTUP_ALLOWANCE
DEFAULT_STARTUP_ALLOWANCE = STARTUP_GRACE_S  # seconds beyond TIME_BUDGET for imports, model build, compile, export
DEFAULT_TIME_BUDGET = 300.0
HANDOVER_EXIT_S = 10.0  # after handing over its model the trainer has this long to exit, then it is stopped
EVAL_MIN_S = 60.0  # the default hard limit leaves the evaluator at least this long (or TIME_BUDGET if longer)
POLL_S = 0.1
SANDBOX_ENV = "AUTORESEARCH_SANDBOX"  # "off": run without Landlock (integrity level L1)
KEEP_HOME_ENV = "AUTORESEARCH_KEEP_HOME"  # "1": the trainer gets the real HOME, readable in its sandbox
# paths (os.pathsep-separated) the person grants the trainer besides its own: read-only, and read-write
EXTRA_RO_ENV, EXTRA_RW_ENV = "AUTORESEARCH_TRAINER_RO", "AUTORESEARCH_TRAINER_RW"
MODEL_FILE, REPORT_FILE, HANDOFF_ENV = "model.pt2", "report.json", "AUTORESEARCH_HANDOFF"  # prepare.py's names
REPORT_KEYS = ("training_seconds", "total_seconds", "mfu_percent", "total_tokens_M", "num_steps", "num_params_M",
               "depth", "peak_vram_mb")
LAUNCHER = str(Path(sandbox.__file__).resolve())


def read_time_budget(ws_root: Path) -> float:
    tb = pyconst.read_one(Path(ws_root) / "constants.py", "TIME_BUDGET")
    if isinstance(tb, (int, float)) and not isinstance(tb, bool) and tb > 0:
        return float(tb)
    return DEFAULT_TIME_BUDGET


def default_timeout(time_budget: float, allowance: float = DEFAULT_STARTUP_ALLOWANCE) -> float:
    """Hard limit of a whole run: the trainer's TIME_BUDGET + STARTUP_ALLOWANCE, then the evaluation."""
    return time_budget + allowance + max(time_budget, EVAL_MIN_S)


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
    integrity: str = ""  # the level the score was obtained at, e.g. "L2 (landlock ABI 7)"
    timings: dict = field(default_factory=dict)  # training_wall_s, handover_s, eval_s, ... (measured here)

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
    """Validate the evaluator's metrics file: returns (metrics, None) or ({...}, reason it is invalid).

    `expected` holds the evaluation constants of constants.py, which the evaluator must have used.
    """
    if text is None:
        return {}, "no metrics were written (the run did not reach the evaluation)"
    try:
        metrics = json.loads(text)
    except ValueError:
        return {}, "the metrics file is not valid JSON"
    if not isinstance(metrics, dict):
        return {}, "the metrics file does not hold a JSON object"
    if isinstance(metrics.get("error"), str) and "val_bpb" not in metrics:
        return metrics, metrics["error"]
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


# --- the trainer's environment ------------------------------------------------------------------

SECRET_NAME = containment.SECRET_NAME
# what a trainer needs from the engine's environment; everything else (keys, tokens, SSH agents, cloud
# profiles, the person's shell settings) stays out
ENV_ALLOWED = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TERM", "USER", "LOGNAME", "LD_LIBRARY_PATH",
                         "VIRTUAL_ENV", "PYTHONHASHSEED", "AUTORESEARCH_CACHE", "AUTORESEARCH_SEED", "CUDA_HOME",
                         "CUDA_PATH", "CC", "CXX"})
ENV_ALLOWED_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "PYTORCH_", "TORCH_",
                        "TORCHINDUCTOR_", "TRITON_", "NCCL_", "HIP_", "ROCM_", "HSA_")


def trainer_env(environ) -> dict[str, str]:
    """The trainer runs code the agent wrote and its output lands in logs: it gets only allow-listed variables,
    never one whose name says it is a secret."""
    return {k: v for k, v in environ.items()
            if (k in ENV_ALLOWED or k.startswith(ENV_ALLOWED_PREFIXES)) and not SECRET_NAME.search(k)}


# --- files ---------------------------------------------------------------------------------------

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


def _seconds(value, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value):
        return float(value)
    return default


def budget_of(files: dict[str, str]) -> float:
    return _seconds(_constants_of(files).get("TIME_BUDGET"), DEFAULT_TIME_BUDGET)


def allowance_of(files: dict[str, str]) -> float:
    """STARTUP_ALLOWANCE of constants.py: the seconds beyond TIME_BUDGET a trainer may take to hand over."""
    return _seconds(_constants_of(files).get("STARTUP_ALLOWANCE"), DEFAULT_STARTUP_ALLOWANCE)


BUILTIN_DATASETS = ("climbmix", "fineweb-edu", "tinystories", "pystdlib")


def cache_root(environ=None) -> Path:
    """$AUTORESEARCH_CACHE or ~/.cache/autoresearch (as prepare.cache_root)."""
    env = (os.environ if environ is None else environ).get("AUTORESEARCH_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch").resolve()


def dataset_dir(dataset, cache: Path) -> Path:
    """<cache>/<dataset>, computed as prepare.dataset_dir does, without importing torch (a test keeps the two
    equal): a built-in name, else a folder path gets a slug of its name and a hash of its absolute path."""
    name = str(dataset or "climbmix")
    if name in BUILTIN_DATASETS or not (os.sep in name or "/" in name or name.startswith((".", "~"))
                                        or Path(name).is_dir()):
        return cache / name
    folder = Path(name).expanduser().resolve()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-.") or "folder"
    return cache / f"local-{slug}-{hashlib.sha1(str(folder).encode()).hexdigest()[:8]}"


# --- the sandbox ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Integrity:
    """The integrity level a run's score is obtained at (DESIGN.md section 11)."""

    level: str  # "L2" or "L1"
    abi: int  # Landlock ABI, 0 without a sandbox
    detail: str  # what is enforced, or which protections are off

    def __str__(self) -> str:
        return f"{self.level} ({self.detail})"

    @property
    def sandboxed(self) -> bool:
        return self.abi > 0


_L1_OFF = ("the trainer can read the validation data, other processes' environments and HOME, and can write "
           "outside its run folder")


def integrity() -> Integrity:
    """What this machine enforces for a run; said once, plainly, where a protection is off."""
    if os.environ.get(SANDBOX_ENV, "").lower() in ("off", "0", "no"):
        return Integrity("L1", 0, f"no sandbox: turned off by {SANDBOX_ENV}=off; {_L1_OFF}")
    abi, why = sandbox.landlock_abi()
    if abi < 1:
        return Integrity("L1", 0, f"no sandbox: {why}; {_L1_OFF}")
    return Integrity("L2", abi, f"landlock ABI {abi}")


_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "passwd", "group", "nsswitch.conf",
        "hosts", "host.conf", "resolv.conf", "gai.conf", "ssl", "ca-certificates", "pki", "os-release",
        "mime.types", "protocols", "services", "alternatives", "fonts", "gcrypt")
_PROC = ("cpuinfo", "meminfo", "stat", "loadavg", "uptime", "version", "filesystems", "devices", "sys", "driver")
_DEV = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/shm", "/dev/dri",
        "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset", "/dev/nvidia-caps")


def system_read_paths() -> list[str]:
    """What any Python + PyTorch process reads: this interpreter and its libraries, system libraries and
    compilers, a few files of /etc, /sys, and /proc's machine-wide files (not other processes' entries)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             str(Path(sys.executable).resolve().parent.parent)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if sysconfig.get_paths().get(key):
            paths.add(sysconfig.get_paths()[key])
    # site-packages entries only: sys.path may also hold the project folder (an editable install),
    # which is the workspace with the engine's state
    paths.update(p for p in sys.path if p and ("site-packages" in p or "dist-packages" in p))
    paths.update(("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/opt", "/sys"))
    paths.update(f"/etc/{name}" for name in _ETC)
    paths.update(f"/proc/{name}" for name in _PROC)
    return sorted({str(Path(p).resolve()) for p in paths if p and os.path.exists(p)})


def device_paths() -> list[str]:
    return sorted(p for p in set(_DEV) | set(glob.glob("/dev/nvidia[0-9]*")) if os.path.exists(p))


def launcher_argv(cmd: list[str], level: Integrity, ro: list[str], rw: list[str],
                  cpus: tuple[int, ...] | None = None) -> list[str]:
    """The launcher command line around cmd: contained always, sandboxed where the OS offers it."""
    argv = [sys.executable, "-I", LAUNCHER]
    if cpus:
        argv += ["--cpus", ",".join(str(c) for c in cpus)]
    if level.sandboxed:
        argv.append("--landlock")
        for p in ro + system_read_paths():
            argv += ["--ro", p]
        for p in rw:
            argv += ["--rw", p]
        for p in device_paths():
            argv += ["--dev", p]
    return argv + ["--", *cmd]


# --- the hand-over ------------------------------------------------------------------------------------

class _Handover:
    """Watches the run folder for the trainer's model; takes it the moment it appears (that is the end of
    training), and tells the runner to stop the trainer when it runs over budget or does not exit."""

    def __init__(self, handoff: Path, dest: Path, limit_s: float, cancel: threading.Event | None):
        self.handoff, self.dest, self.limit_s, self.external = handoff, dest, limit_s, cancel
        self.stop = threading.Event()  # passed to run(): set = stop the trainer now
        self.t0: float | None = None
        self.at: float | None = None  # seconds from the trainer's start to the hand-over
        self.report: bytes | None = None
        self.sha256: str | None = None
        self.error: str | None = None
        self.over_budget = self.kept_running = self.cancelled = False
        self._quit = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="handover", daemon=True)

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread.start()

    def close(self) -> None:
        self._quit.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.at is None and not self.error:
            self._take()  # a model written in the last poll interval before the trainer exited

    @property
    def taken(self) -> bool:
        return self.at is not None

    def _watch(self) -> None:
        while not self._quit.wait(POLL_S):
            now = time.monotonic() - self.t0
            if self.external is not None and self.external.is_set():
                self.cancelled = True
                self.stop.set()
            elif self.at is None:
                if not self._take() and now > self.limit_s:
                    self.over_budget = True
                    self.stop.set()
            elif now - self.at > HANDOVER_EXIT_S and not self.stop.is_set():
                self.kept_running = True
                self.stop.set()

    def _take(self) -> bool:
        src = self.handoff / MODEL_FILE
        if not src.is_file():
            return False
        at = time.monotonic() - self.t0
        try:
            report = self.handoff / REPORT_FILE
            self.report = report.read_bytes()[:65536] if report.is_file() else None
            # copied (and hashed) at once, into a folder the trainer cannot reach: writing the file further
            # through a descriptor it kept open changes nothing any more
            digest = hashlib.sha256()
            with open(src, "rb") as fin, open(self.dest / MODEL_FILE, "wb") as fout:
                while chunk := fin.read(1 << 22):
                    digest.update(chunk)
                    fout.write(chunk)
            src.unlink(missing_ok=True)
        except OSError as e:
            self.error = f"the handed-over model could not be taken ({e.strerror or e})"
            self.stop.set()
            return False
        self.sha256 = digest.hexdigest()
        self.at = at
        if at > self.limit_s:
            self.over_budget = True
            self.stop.set()
        return True


def _file_sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _report_figures(raw: bytes | None) -> dict:
    """The trainer's own figures, numbers only (they are informational: nothing is decided on them)."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in REPORT_KEYS if _finite(data.get(k)) and data[k] >= 0}


SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M",
                "num_steps", "num_params_M", "depth")


def summary_block(metrics: dict) -> str:
    """Upstream's summary block (people grep run.log for it), from the trusted metrics."""
    fmt = {"val_bpb": "{:.6f}", "mfu_percent": "{:.2f}", "num_steps": "{:d}", "depth": "{:d}"}
    lines = ["---"]
    for key in SUMMARY_KEYS:
        value = metrics.get(key)
        if not _finite(value):
            continue
        spec = fmt.get(key, "{:.1f}")
        text = spec.format(int(value)) if spec == "{:d}" else spec.format(value)
        lines.append(f"{key + ':':<18}{text}")
    return "\n".join(lines) + "\n"


# --- one run ------------------------------------------------------------------------------------------

def _owner_of(run_dir: Path) -> str:
    """The workspace key of a run folder WORKSPACE/.autoresearch/runs/<id>; elsewhere, of its parent folder."""
    if run_dir.parent.name == "runs" and run_dir.parent.parent.name == STATE_DIR:
        return containment.workspace_key(run_dir.parent.parent.parent)
    return containment.workspace_key(run_dir.parent)


def _extra(name: str) -> list[str]:
    return [p for p in os.environ.get(name, "").split(os.pathsep) if p]


def _append(logs: list[Path], data: bytes) -> None:
    for path in logs:
        try:
            with open(path, "ab") as f:
                f.write(data)
        except OSError:
            continue


def eval_dir_of(run_dir: Path) -> Path:
    """The evaluator's private folder: a sibling of the run folder, which the trainer may write and this may not."""
    return run_dir.parent / f"{run_dir.name}.eval"


def run_training(files: dict[str, str], run_dir: Path, *, logs: list[Path], metrics_out: Path | None,
                 timeout: float | None = None, env: dict[str, str] | None = None,
                 cancel: threading.Event | None = None, on_start: Callable[[int], None] | None = None,
                 on_phase: Callable[[str], None] | None = None,
                 on_output: Callable[[bytes], None] | None = None, cpus: tuple[int, ...] | None = None,
                 argv: list[str] | None = None, owner: str | None = None) -> TrainResult:
    """One training run in its own folder: the trainer, the hand-over of its model, the evaluator, the verdict.

    files = {"train.py", "prepare.py", "constants.py"} as text; run_dir is created fresh and removed at the
    end (the experiment folder keeps the logs and the metrics). env is added to the trainer's allow-listed
    environment (slot variables, AUTORESEARCH_SEED). owner names the workspace in the run marker
    (default: derived from run_dir). Everything the run needs besides files comes from $AUTORESEARCH_CACHE.
    """
    t_begin = time.monotonic()
    run_dir = Path(run_dir).absolute()
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    home, tmp, handoff = run_dir / ".home", run_dir / ".tmp", run_dir / ".handoff"
    for d in (run_dir, home, tmp, handoff):
        d.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (run_dir / name).write_text(text, encoding="utf-8")
    eval_dir = eval_dir_of(run_dir)  # beside the run folder: out of the trainer's reach, removed with the runs
    shutil.rmtree(eval_dir, ignore_errors=True)
    eval_dir.mkdir(mode=0o700)
    level = integrity()
    budget, allowance = budget_of(files), allowance_of(files)
    limit = budget + allowance
    timeout = timeout or default_timeout(budget, allowance)
    consts = _constants_of(files)
    cache = cache_root({**os.environ, **(env or {})})  # a caller's AUTORESEARCH_CACHE (a Ray node's) wins
    data = dataset_dir(consts.get("DATASET"), cache)
    marker = containment.run_marker(owner or _owner_of(run_dir), run_dir.name)
    base = trainer_env(os.environ)
    base.update(env or {})  # the caller's own variables (the slot's devices, the seed) are trusted
    base.update(AUTORESEARCH_CACHE=str(cache), PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1",
                **{containment.RUN_ENV: marker})
    keep_home = os.environ.get(KEEP_HOME_ENV, "") == "1"
    trainer = dict(base, TMPDIR=str(tmp), XDG_CACHE_HOME=str(tmp / "cache"), **{HANDOFF_ENV: str(handoff)})
    trainer["HOME"] = os.environ.get("HOME", str(home)) if keep_home else str(home)
    ro = [str(data / "train"), str(data / "tokenizer")] + ([trainer["HOME"]] if keep_home else [])
    cmd = launcher_argv(argv or [sys.executable, "train.py"], level, ro + _extra(EXTRA_RO_ENV),
                        [str(run_dir)] + _extra(EXTRA_RW_ENV), cpus)
    phase = {"now": "starting"}
    if on_phase:
        on_phase("starting")
    watch = _Handover(handoff, eval_dir, limit, cancel)
    pids: list[int] = []

    def started(pid: int) -> None:
        pids.append(pid)  # the launcher sets the CPU affinity itself (macOS has none: threads are capped instead)
        if on_start and len(pids) == 1:
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

    timings: dict[str, float] = {}
    try:
        watch.start()
        res = run(cmd, cwd=run_dir, env=trainer, logs=logs, timeout=timeout, cancel=watch.stop,
                  on_output=output, on_start=started)
        watch.close()
        timings["trainer_s"] = round(res.duration_s, 3)
        left = containment.sweep_run(marker)  # what a killed launcher could not stop (no sandbox only)
        if left:
            _append(logs, f"[autoresearch: stopped {left} process(es) the trainer left running]\n".encode())
        tampered = [name for name in files if name != "train.py" and _read(run_dir / name) != files[name]]
        reason = _trainer_verdict(res, watch, tampered, limit, budget, allowance, timeout)
        report = _report_figures(watch.report)
        if watch.taken:
            timings["training_wall_s"] = round(watch.at, 3)
        if reason is None and _finite(report.get("training_seconds")) and report["training_seconds"] > watch.at + 1:
            reason = (f"rejected: train.py reported training_seconds {report['training_seconds']:.1f} but handed "
                      f"over its model {watch.at:.1f} s after it started")
        if reason is None and _file_sha256(eval_dir / MODEL_FILE) != watch.sha256:
            reason = "rejected: the model file changed after it was handed over"
        text = None
        eval_res = None
        if reason is None:
            for name in ("prepare.py", "constants.py"):  # trusted copies, written after the trainer is gone
                (eval_dir / name).write_text(files[name], encoding="utf-8")
            if on_phase:
                on_phase("evaluating")
            eval_res, text = _evaluate(eval_dir, base, level, data, logs, on_output, started,
                                       timeout - (time.monotonic() - t_begin), cancel, cpus)
            timings["eval_s"] = round(eval_res.duration_s, 3)
            containment.sweep_run(marker)
    finally:
        watch.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(eval_dir, ignore_errors=True)
    expected = {key: consts[name] for key, name in _EVAL_CONSTANTS.items() if consts.get(name) is not None}
    metrics, invalid = parse_metrics(text, expected) if reason is None else ({}, None)
    if reason is None:
        reason = _eval_verdict(eval_res, invalid, timeout, cancel)
    if reason is None or text is not None:
        trusted = dict(metrics)
        metrics = {**report, **trusted}
        metrics.setdefault("peak_vram_mb", trusted.get("eval_peak_mb", 0.0))
        metrics["trainer_reported"] = sorted(k for k in report if k not in trusted and k != "total_seconds")
    metrics.update(integrity=str(level), integrity_level=level.level, **timings,
                   total_seconds=round(time.monotonic() - t_begin, 1))
    if watch.sha256:
        metrics["model_sha256"] = watch.sha256
    if metrics_out is not None and (text is not None or reason is None):
        atomic_write_text(metrics_out, json.dumps(metrics, indent=1) + "\n")
    ok = reason is None
    if ok:
        block = summary_block(metrics).encode()
        _append(logs, block)
        if on_output:
            on_output(block)
    tail_lines = list(res.tail) + ([*eval_res.tail] if eval_res is not None else [])
    return TrainResult(ok=ok, val_bpb=float(metrics["val_bpb"]) if ok else None,
                       peak_vram_mb=float(metrics.get("peak_vram_mb") or 0.0) if ok else None,
                       metrics=metrics, reason=reason, tail=tail_lines[-50:], duration_s=time.monotonic() - t_begin,
                       returncode=res.returncode, timed_out=res.timed_out or bool(eval_res and eval_res.timed_out),
                       cancelled=watch.cancelled or bool(cancel is not None and cancel.is_set()),
                       integrity=str(level), timings=timings)


def _trainer_verdict(res, watch: _Handover, tampered: list[str], limit: float, budget: float, allowance: float,
                     timeout: float) -> str | None:
    """Why the trainer's part of the run failed, or None when it handed over a model in time."""
    if res.error:
        return res.error
    if watch.cancelled:
        return "cancelled"
    if watch.error:
        return watch.error
    if tampered:  # a run that rewrote its copy of the evaluation code is not measured
        return f"rejected: {', '.join(tampered)} changed during training"
    if watch.over_budget:
        got = f"handed over its model {watch.at:.1f} s" if watch.taken else f"had not handed over a model {limit:.0f} s"
        return (f"over budget: train.py {got} after it started; the limit is TIME_BUDGET {budget:g} s + "
                f"STARTUP_ALLOWANCE {allowance:g} s = {limit:g} s")
    if res.timed_out and not watch.taken:
        return f"timed out after {timeout:.0f} s (hard limit)"
    if res.returncode == sandbox.SANDBOX_EXIT and not watch.taken:
        said = next((line for line in reversed(res.tail) if "sandbox" in line), "")
        return f"the trainer could not be started in its sandbox ({said.strip() or 'launcher exit 126'})"
    if not watch.taken:
        if res.returncode not in (0, None):
            return f"train.py exited with code {res.returncode}" + _denied(res.tail)
        return ("no metrics: train.py ended without handing over its model (call prepare.hand_over(model, x) "
                "when training is done)")
    if res.returncode not in (0, None) and not watch.kept_running:
        return f"train.py exited with code {res.returncode} after handing over its model"
    return None


_DENIED = re.compile(r"PermissionError: \[Errno 13\] Permission denied: '([^']+)'")


def _denied(tail: list[str]) -> str:
    """What ended the run, when the sandbox refused a file or prepare.py said why (the log has the traceback)."""
    for line in reversed(tail[-5:]):
        m = _DENIED.search(line)
        if m:
            return f" (denied access to {m.group(1)[:200]}: train.py may read only its run folder, the training " \
                   "split and the tokenizer)"
        if line.startswith("prepare.PrepareError: "):
            return f" ({line[len('prepare.PrepareError: '):][:300]})"
    return ""


def _evaluate(eval_dir: Path, base: dict, level: Integrity, data: Path, logs: list[Path], on_output, started,
              remaining: float, cancel, cpus):
    """Run the trusted evaluator on the handed-over model; returns (RunResult, metrics text or None)."""
    home = eval_dir / "home"
    home.mkdir()
    env = dict(base, HOME=str(home), TMPDIR=str(eval_dir), XDG_CACHE_HOME=str(eval_dir / "cache"))
    metrics = eval_dir / "metrics.json"
    cmd = [sys.executable, str(eval_dir / "prepare.py"), "--evaluate", str(eval_dir / MODEL_FILE),
           "--metrics", str(metrics)]
    argv = launcher_argv(cmd, level, [str(data / "val"), str(data / "tokenizer")], [str(eval_dir)], cpus)

    def output(chunk: bytes) -> None:
        _append(logs, chunk)
        if on_output:
            on_output(chunk)

    res = run(argv, cwd=eval_dir, env=env, logs=[], timeout=max(1.0, remaining), cancel=cancel,
              on_output=output, on_start=started)
    try:
        text = metrics.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = None
    return res, text


def _eval_verdict(res, invalid: str | None, timeout: float, cancel) -> str | None:
    if res is None:
        return "the evaluation did not run"
    if res.error:
        return res.error
    if res.cancelled or (cancel is not None and cancel.is_set()):
        return "cancelled"
    if res.timed_out:
        return f"timed out after {timeout:.0f} s (hard limit) during the evaluation"
    if invalid:
        return invalid
    if res.returncode != 0:
        return f"the evaluation exited with code {res.returncode}"
    return None


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
    timeout: float | None = None  # None: TIME_BUDGET + STARTUP_ALLOWANCE + the evaluation (default_timeout)
    extra_env: dict[str, str] = field(default_factory=dict)

    def train(self, logs: list[Path], metrics_out: Path | None, cancel: threading.Event | None = None,
              on_output: Callable[[bytes], None] | None = None,
              on_start: Callable[[int], None] | None = None, run_id: str = "manual") -> TrainResult:
        root = Path(self.ws_root)
        return run_training(trainer_files(root), root / STATE_DIR / "runs" / run_id, logs=logs,
                            metrics_out=metrics_out, timeout=self.timeout, env=self.extra_env, cancel=cancel,
                            on_start=on_start, on_output=on_output, argv=self.argv,
                            owner=containment.workspace_key(root))
