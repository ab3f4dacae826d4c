"""Builders of hand-written workspaces in the documented formats (docs/architecture.md) for the TUI tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

T0 = 1_764_000_000.0  # a fixed "now" so countdowns and snapshots are deterministic

# (id, status, val_bpb, memory_gb, description): descriptions carry markup and escapes on purpose
EXPERIMENTS = [
    ("0001", "keep", 1.000000, 44.0, "baseline"),
    ("0002", "keep", 0.995000, 44.1, "increase matrix lr to 0.05"),
    ("0003", "discard", 0.998100, 51.3, "[bold red]depth 10[/bold red]"),
    ("0004", "crash", 0.0, 0.0, "window pattern LLLL \x1b[31mred\x1b]0;title\x07"),
    ("0005", "keep", 0.990200, 44.2, "warmdown 0.6 [link=http://x]click[/link]"),
    ("0006", "discard", 0.992500, 44.0, "batch 2**18 tokens"),
    ("0007", "keep", 0.987500, 43.9, "embedding lr 0.8"),
]

# the running experiment's output so far (our train.py's format): 42 s of its 300 s budget trained (14 %)
RUN_LOG = (b"compiling...\nstep 00001 (0.0%) | loss: 9.1 | remaining: 300s\rstep 00002 (5.0%) | loss: 8.7 | "
           b"remaining: 285s\rstep 00003 (14.0%) | loss: 8.2 | remaining: 258s [bold red]boom[/] \x1b[31mred\x1b[0m")

TRAIN_PY = "DEPTH = 8  # layers\nMATRIX_LR = 0.04  # muon lr\nprint('training')\n"


def git(root: Path, *args: str) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def init_repo(root: Path, branch: str = "master", files: dict | None = None) -> str:
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", branch)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    (root / ".gitignore").write_text("results.tsv\nrun.log\n.autoresearch/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return git(root, "rev-parse", "HEAD")


def _sha(i: int) -> str:
    return f"{i:07x}" + "ab" * 16 + "c"


def results_text(experiments=EXPERIMENTS, shas=None) -> str:
    lines = ["commit\tval_bpb\tmemory_gb\tstatus\tdescription"]
    for k, (exp_id, status, val, mem, desc) in enumerate(experiments):
        sha = (shas[k] if shas else _sha(int(exp_id)))[:7]
        lines.append(f"{sha}\t{val:.6f}\t{mem:.1f}\t{status}\t{desc}")
    return "\n".join(lines) + "\n"


_LOCKS: dict = {}  # workspace -> EngineLock held by this test process, so the engine.json it writes reads as alive


def write_engine(root: Path, *, status="running", phase="training", pid=None, exp_id="0008",
                 description="try [bold]GELU[/bold] \x1b[2J", training_started_at=T0 - 60, time_budget=300.0,
                 hostname=None, best=0.9875, best_commit=None, baseline=1.0, updated_at=T0, slots=None,
                 proposals=None, options=None) -> None:
    """engine.json as the engine writes it (core.status), for a live engine (this process, holding the lock).

    slots/proposals: core.status SlotRun/Proposal tuples for a scheduler with several runs in flight (see
    parallel_engine); without them, one slot as milestone 1's engine writes it."""
    import socket

    from core.lock import EngineLock
    from core.status import Best, EngineStatus, Proposal, SlotRun
    from core.workspace import Workspace

    state = root / ".autoresearch"
    state.mkdir(parents=True, exist_ok=True)
    one_slot, one_prop = (SlotRun("0", label="slot 0"),), ()
    if exp_id is not None and phase in ("proposing", "validating"):
        one_prop = (Proposal(exp_id, base=_sha(7), state=phase, description=description, started_at=T0 - 90),)
    elif exp_id is not None:
        one_slot = (SlotRun("0", label="slot 0", phase="training" if phase == "training" else "recording",
                            experiment=exp_id, commit=_sha(int(exp_id)), description=description,
                            started_at=T0 - 90, training_started_at=training_started_at, time_budget=time_budget),)
    if slots is None and proposals is None:
        slots, proposals = one_slot, one_prop
    if slots is not None or proposals is not None:
        slots, proposals = tuple(slots or ()), tuple(proposals or ())
    st = EngineStatus(pid=pid if pid is not None else os.getpid(), hostname=hostname or socket.gethostname(),
                      status=status, phase=phase, tag="nov26", branch="autoresearch/nov26", agent="mutate",
                      best=Best(best_commit or _sha(7), best), baseline_val_bpb=baseline, experiments_done=7,
                      updated_at=updated_at, heartbeat_at=updated_at, slots=slots, proposals=proposals,
                      options=options or {})
    (state / "engine.json").write_text(json.dumps(st.to_json()))
    key = str(root.resolve())
    if status != "stopped" and pid is None and key not in _LOCKS:
        _LOCKS[key] = EngineLock(Workspace(root.resolve())).acquire()
    elif (status == "stopped" or pid is not None) and key in _LOCKS:
        _LOCKS.pop(key).release()


def make_workspace(root: Path, *, engine: str | None = "running", phase: str = "training", experiments=EXPERIMENTS,
                   run_log: bytes | None = None, extra_results: str = "", git_init: bool = True) -> Path:
    """An autoresearch workspace after a few experiments. engine: running | paused | stopped | dead | None."""
    files = {"program.md": "# program\nLower val_bpb.\n", "constants.py": "TIME_BUDGET = 300\n",
             "prepare.py": "# prepare\n", "train.py": TRAIN_PY}
    if git_init:
        init_repo(root, files=files)
        git(root, "checkout", "-q", "-b", "autoresearch/nov26")
    else:
        root.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / name).write_text(text)
    state = root / ".autoresearch"
    (state / "experiments").mkdir(parents=True, exist_ok=True)
    events = [{"ts": T0 - 1000, "type": "engine_started", "id": None}]
    for k, (exp_id, status, val, mem, desc) in enumerate(experiments):
        d = state / "experiments" / exp_id
        d.mkdir(parents=True, exist_ok=True)
        sha = _sha(int(exp_id))
        meta = {"id": exp_id, "tag": "nov26", "status": status, "description": desc, "commit": sha,
                "parent": _sha(int(exp_id) - 1), "val_bpb": val if status != "crash" else None,
                "memory_gb": mem, "reason": "trainer exited with code 1" if status == "crash" else None,
                "metrics": {}, "started_at": T0 - 900 + k * 100, "finished_at": T0 - 820 + k * 100,
                "agent": {"name": "mutate", "model": None, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0},
                "timings": {"propose_s": 1.0, "validate_s": 0.1, "train_s": 70.0, "record_s": 0.2}}
        (d / "meta.json").write_text(json.dumps(meta))
        (d / "diff.patch").write_text(
            "diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n"
            f"-MATRIX_LR = 0.04  # muon lr\n+MATRIX_LR = 0.0{k + 5}  # [bold]muon[/bold] \x1b[31mlr\n")
        if status != "crash":
            (d / "metrics.json").write_text(json.dumps({"val_bpb": val, "peak_vram_mb": mem * 1024,
                                                        "num_steps": 900 + k, "device": "cpu"}))
        (d / "train.log").write_bytes(b"step 00001 | loss 9.0\rstep 00002 | loss 8.0\n---\nval_bpb: %.6f\n" % val)
        (d / "agent.log").write_text(f"agent for {exp_id}: [bold]edit[/bold] \x1b]0;pwned\x07\n")
        events += [{"ts": T0 - 900 + k * 100, "type": "experiment_started", "id": exp_id},
                   {"ts": T0 - 820 + k * 100, "type": "experiment_finished", "id": exp_id, "status": status,
                    "val_bpb": val, "memory_gb": mem, "commit": sha, "description": desc, "reason": None}]
    (state / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (root / "results.tsv").write_text(results_text(experiments) + extra_results)
    cur = state / "experiments" / "0008"
    cur.mkdir(exist_ok=True)
    (cur / "agent.log").write_text("mutate: MATRIX_LR 0.04 -> 0.045 [red]x[/red]\n")
    log = (run_log if run_log is not None else RUN_LOG)
    # the engine streams the running trainer's output to both: run.log (upstream's) and the experiment's train.log
    (root / "run.log").write_bytes(log)
    (cur / "train.log").write_bytes(log)
    if engine == "dead":
        write_engine(root, status="running", pid=_dead_pid())
    elif engine == "stopped":
        write_engine(root, status="stopped", phase="idle", exp_id=None)
    elif engine is not None:
        write_engine(root, status=engine, phase=phase)
    return root


def progress_log(steps: int, *, budget: float = 300.0, start_loss: float = 9.0, rate: float = 1.0,
                 done: bool = False) -> bytes:
    """A trainer's output in our train.py's format: the device line, `\r` progress updates (the first two steps
    untimed, as while compiling), and the summary once done."""
    out = [b"device: cpu | params: 11.5M | depth 4 | budget %ds\n" % int(budget)]
    for i in range(steps):
        frac = max(0.0, (i - 2) / max(1, steps - 2)) * (1.0 if done else 0.6)
        loss = 3.0 + (start_loss - 3.0) * (0.97 ** (i * rate))
        out.append(b"\rstep %05d (%.1f%%) | loss: %.6f | lrm: 1.00 | dt: 90ms | tok/sec: 5,000 | mfu: n/a | "
                   b"epoch: 1 | remaining: %ds    " % (i, 100 * frac, loss, round(budget * (1 - frac))))
    if done:
        out.append(b"\n---\nval_bpb:          0.987500\n")
    return b"".join(out)


def parallel_engine(root: Path, n_slots: int = 3, proposals: int = 1, *, gpu: bool = True, now: float = T0,
                    free: int = 1) -> list[str]:
    """A scheduler's engine.json: n_slots slots (GPU i each), all but the last `free` running an experiment at
    a different stage, and proposals in flight; each running experiment gets a train.log. The best run (0007)
    gets a finished log, the curve to beat. Returns the running experiment ids."""
    from core.status import Proposal, SlotRun
    exp_dir = root / ".autoresearch" / "experiments"
    (exp_dir / "0007" / "train.log").write_bytes(progress_log(60, done=True))
    stages = [progress_log(40, rate=1.3), b"device: cpu | params: 11.5M\n", b""]
    slots, running = [], []
    for i in range(n_slots):
        exp_id = f"{8 + i:04d}"
        label = f"GPU {i}" if gpu else f"CPU {i + 1}/{n_slots}"
        if i >= n_slots - free and n_slots > 1:
            slots.append(SlotRun(str(i), label=label, gpu=i if gpu else None))  # a free slot
            continue
        d = exp_dir / exp_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "train.log").write_bytes(stages[i % len(stages)])
        (d / "agent.log").write_text(f"agent for {exp_id}\n")
        slots.append(SlotRun(str(i), label=label, gpu=i if gpu else None, phase="training", experiment=exp_id,
                             commit=_sha(8 + i), description=f"slot {i} idea [b]{i}[/b]", started_at=now - 200 + 30 * i,
                             training_started_at=now - 120 + 30 * i, time_budget=300.0))
        running.append(exp_id)
    props = [Proposal(f"{8 + n_slots + k:04d}", base=_sha(7), state="proposing" if k == 0 else "ready",
                      description="" if k == 0 else "ready proposal", idea="try rope base 5e4" if k == 0 else None,
                      started_at=now - 40) for k in range(proposals)]
    write_engine(root, status="running", phase="training", slots=slots, proposals=props, updated_at=now,
                 options={"slots": n_slots, "lookahead": proposals})
    return running


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def make_upstream_repo(root: Path) -> tuple[Path, list[str]]:
    """karpathy/autoresearch after a night: train.py history in git, results.tsv and run.log, no .autoresearch/."""
    init_repo(root, files={"program.md": "# program\n", "prepare.py": "# prepare\n", "train.py": TRAIN_PY})
    shas = []
    for k in range(len(EXPERIMENTS[:4])):
        (root / "train.py").write_text(TRAIN_PY + f"# change {k}\n")
        git(root, "commit", "-q", "-am", f"exp {k}")
        shas.append(git(root, "rev-parse", "HEAD"))
    (root / "results.tsv").write_text(results_text(EXPERIMENTS[:4], shas))
    (root / "run.log").write_bytes(b"step 00010 | loss 3.0\rstep 00011 | loss 2.9\n---\nval_bpb:          0.997900\n")
    return root, shas


def big_results(n: int) -> str:
    lines = ["commit\tval_bpb\tmemory_gb\tstatus\tdescription"]
    best = 1.0
    for i in range(n):
        status = ("keep", "discard", "discard", "crash")[i % 4] if i else "keep"
        val = 0.0 if status == "crash" else (best - 0.0001 if status == "keep" else best + 0.001 * (i % 7))
        if status == "keep":
            best = val
        lines.append(f"{i:07x}\t{val:.6f}\t{0.0 if status == 'crash' else 44.0:.1f}\t{status}\t"
                     f"experiment number {i} tweak lr {i % 13}")
    return "\n".join(lines) + "\n"


class StaticGpu:
    """A GPU source that always reports the same sample (the real NVML is exercised in test_gpu.py)."""

    def __init__(self, sample=None):
        from core.gpu import GpuInfo, GpuSample
        self._sample = sample or GpuSample(available=True, gpus=(GpuInfo(
            index=0, name="NVIDIA H100 80GB HBM3", memory_used_mb=45060.2, memory_total_mb=81559.0,
            utilization_percent=97.0, temperature_c=65.0, power_w=350.0, power_limit_w=700.0),), ts=T0)

    @classmethod
    def gpus(cls, n: int, process_mb: float | None = 41000.0) -> "StaticGpu":
        """n H100s, each with a trainer holding process_mb (what NVML reports for the pids asked about)."""
        from core.gpu import GpuInfo, GpuSample
        return cls(GpuSample(available=True, gpus=tuple(GpuInfo(
            index=i, name="NVIDIA H100 80GB HBM3", memory_used_mb=45060.2 - 9000 * i, memory_total_mb=81559.0,
            utilization_percent=97.0 - 30 * i, temperature_c=65.0, power_w=350.0, power_limit_w=700.0,
            process_memory_mb=process_mb) for i in range(n)), ts=T0))

    def sample(self, pids=()):
        return self._sample


async def wait_for(pilot, cond, timeout: float = 10.0) -> None:
    """Let the app process messages until cond() holds (thread workers deliver asynchronously)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await pilot.pause(0.05)


def control_files(root: Path) -> list[str]:
    """The control commands waiting for the engine (.autoresearch/control/)."""
    d = root / ".autoresearch" / "control"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def screen_text(app) -> str:
    """The characters on the app's screen right now, one line per row (what a user reads)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)


def make_app(root, **kw):
    from tui.app import DashboardApp
    kw.setdefault("live", False)
    kw.setdefault("clock", lambda: T0)
    kw.setdefault("display_root", "~/ws")
    kw.setdefault("gpu_monitor", StaticGpu())
    return DashboardApp(root, **kw)


class TmuxTerminal:
    """A real terminal for the real dashboard: one private tmux server (own socket, no user config).

    Used by the end-to-end test and bench/tui_bench.py: start a command in a session of a fixed size,
    send keys, read the screen as text.
    """

    def __init__(self):
        # a socket in a private folder, removed by kill() (a unix socket path must stay short: not tmp_path)
        self.dir = tempfile.mkdtemp(prefix="ar-tmux-")
        self.base = ["tmux", "-S", os.path.join(self.dir, "sock"), "-f", "/dev/null"]
        self.session = "tui"
        # Textual believes COLUMNS/LINES over the terminal's size, and pytest exports 80x24; TMUX would
        # point at an outer server
        self.env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TMUX", "TMUX_PANE")}
        self.env["TERM"] = "xterm-256color"

    @staticmethod
    def available() -> bool:
        return shutil.which("tmux") is not None

    def tmux(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], check=True, capture_output=True, text=True, timeout=20,
                              env=self.env).stdout

    def start(self, command: str, session: str = "tui", size: tuple[int, int] = (120, 40)) -> None:
        self.session = session
        self.tmux("new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]), command)

    def pane_pid(self) -> int:
        return int(self.tmux("display", "-p", "-t", self.session, "#{pane_pid}").strip())

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.session, *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def wait_for(self, what: str, cond, timeout: float, interval: float = 0.2) -> str:
        """Poll the screen until cond(text) holds; the failure shows the last screen."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            try:
                text = self.screen()
            except subprocess.CalledProcessError:
                text = ""
            if cond(text):
                return text
            time.sleep(interval)
        raise AssertionError(f"not seen within {timeout:.0f} s: {what}\n--- screen ---\n{text}")

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=20, env=self.env)
        shutil.rmtree(self.dir, ignore_errors=True)


def tui_command() -> list[str]:
    """argv of the installed dashboard (the console script next to this Python), else `python -m tui.app`."""
    import sys
    script = Path(sys.executable).with_name("autoresearch-tui")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tui.app"]
