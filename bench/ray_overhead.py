"""Overhead per experiment of the Ray executor against the local one, side by side in one run, and the log delay.

Usage:
  uv run --extra ray python bench/ray_overhead.py                      # a local Ray instance on this machine
  uv run --extra ray python bench/ray_overhead.py --address head:6379  # a real cluster (its nodes train)
  uv run --extra ray python bench/ray_overhead.py --address head:6379 --resource GPU  # one GPU per run
  options: --runs N (10 per executor), --duration S (2.0 s of training), --interval S (0.05 s between lines)

Both executors run the same trainer (it prints a time-stamped line every --interval seconds, then reports its
metrics through prepare.py's channel), interleaved: local, ray, local, ray, ... Per run it measures
  wall      start() -> result(), on the engine's side
  trainer   the trainer's own run time (result.duration_s, measured where it ran)
  overhead  wall - trainer: process start, and for Ray: task submission, placement, data shipping, streaming
  start     start() -> the trainer's first line in the engine's log (Python start, imports, placement)
  log delay the time from a line's stamp (taken by the trainer) to its arrival in the engine's log callback;
            with --address the clocks of two machines differ: the delays are then only as good as their sync
The first Ray run pays the worker start and the node's one-time data preparation: it is reported apart.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.executors.base import RunCallbacks, RunSpec, Slot  # noqa: E402
from core.executors.local import LocalExecutor  # noqa: E402

PREPARE = '''"""Bench prepare.py: owns the metrics channel."""
import json
import os

_METRICS = os.environ.pop("AUTORESEARCH_METRICS_FILE", None)


def evaluate(val_bpb):
    with open(_METRICS, "w") as f:
        json.dump({"val_bpb": val_bpb, "peak_vram_mb": 0.0, "device": "cpu"}, f)
'''

TRAIN = '''"""Bench trainer: a time-stamped progress line every INTERVAL seconds for DURATION seconds."""
import time

from prepare import evaluate

DURATION = {duration!r}
INTERVAL = {interval!r}
t0 = time.time()
step = 0
while time.time() - t0 < DURATION:
    print(f"step {{step:05d}} | loss: 3.000000 | stamp {{time.time():.6f}}", flush=True)
    step += 1
    time.sleep(INTERVAL)
evaluate(1.0)
print("---")
print("val_bpb:          1.000000")
'''

CONSTANTS = '"""Bench constants."""\nTIME_BUDGET = 1\nDATASET = "bench"\n'


def pad(text: str, size: int) -> str:
    """The real train.py and prepare.py are this big: ship as many bytes as a real run does."""
    return text + "".join(f"# padding {i:06d} " + "x" * 60 + "\n" for i in range(max(0, size - len(text)) // 80))


class Probe:
    """Callbacks that time the first trainer line and every stamped line."""

    def __init__(self, t0: float):
        self.t0 = t0
        self.first = None
        self.delays: list[float] = []
        self.bytes = 0
        self._pending = b""

    def on_output(self, data: bytes) -> None:
        now_wall = time.time()
        self.bytes += len(data)
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            if b"stamp " in line:
                if self.first is None:
                    self.first = time.monotonic() - self.t0
                self.delays.append(now_wall - float(line.rsplit(b"stamp ", 1)[1]))


def one(executor, slot: Slot, root: Path, exp_id: str, files: dict[str, str]) -> dict:
    t0 = time.monotonic()
    probe = Probe(t0)
    exp = root / "experiments" / exp_id
    spec = RunSpec(exp_id=exp_id, files=files, logs=(exp / "train.log", root / "run.log"),
                   metrics_out=exp / "metrics.json", timeout=120.0)
    handle = executor.start(slot, spec, RunCallbacks(on_output=probe.on_output))
    res = handle.result(timeout=300)
    wall = time.monotonic() - t0
    if res is None or not res.ok:
        raise SystemExit(f"bench run {exp_id} on {executor.name} failed: {res and res.reason}")
    return {"wall": wall, "trainer": res.duration_s, "overhead": wall - res.duration_s, "start": probe.first,
            "delays": probe.delays, "placed": getattr(handle, "placed_at", None), "bytes_back": probe.bytes}


def summary(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {}
    return {"median": statistics.median(values), "p95": values[max(0, math.ceil(0.95 * len(values)) - 1)],
            "max": values[-1], "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--address", default=None, help="a Ray cluster (default: a local Ray instance)")
    p.add_argument("--resource", default="CPU", help="what a Ray run reserves: CPU (default), GPU or a custom "
                   "resource")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from core.errors import UserError
    from core.executors.ray import RayExecutor

    root = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    files = {"train.py": pad(TRAIN.format(duration=args.duration, interval=args.interval),
                             len((ROOT / "train.py").read_text())),
             "prepare.py": pad(PREPARE, len((ROOT / "prepare.py").read_text())), "constants.py": CONSTANTS}
    shipped = sum(len(v.encode()) for v in files.values())
    local = LocalExecutor(root, [Slot("0", "CPU")])
    try:
        rayx = RayExecutor(root, address=args.address or "local", resource=args.resource, cpus_per_run=1,
                           cache=str(root / "cache"), log=lambda m: print(m, file=sys.stderr))
    except UserError as e:
        print(f"ray_overhead: {e}", file=sys.stderr)
        return 1
    try:
        first = one(rayx, rayx.slots()[0], root, "0000", files)
        rows = {"local": [], "ray": []}
        for i in range(args.runs):
            for name, ex in (("local", local), ("ray", rayx)):
                rows[name].append(one(ex, ex.slots()[0], root, f"{i + 1:04d}{name[0]}", files))
    finally:
        rayx.close()
    out = {"machine": platform.platform(), "python": platform.python_version(), "ray_cluster": rayx.summary,
           "runs_per_executor": args.runs, "training_s": args.duration, "line_interval_s": args.interval,
           "bytes_shipped_per_run": shipped,
           "ray_first_run": {k: first[k] for k in ("wall", "trainer", "overhead", "start", "placed")}}
    for name, rs in rows.items():
        out[name] = {k: summary([r[k] for r in rs if r[k] is not None])
                     for k in ("wall", "trainer", "overhead", "start", "placed")}
        out[name]["log_delay"] = summary([d for r in rs for d in r["delays"]])
        out[name]["bytes_back_per_run"] = statistics.median(r["bytes_back"] for r in rs)
    out["overhead_ray_minus_local_s"] = out["ray"]["overhead"]["median"] - out["local"]["overhead"]["median"]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['machine']}, Python {out['python']}; {out['ray_cluster']}")
    print(f"{args.runs} runs per executor, interleaved; {args.duration:g} s of training, a line every "
          f"{args.interval * 1000:g} ms; {shipped / 1024:.0f} KiB of files shipped per run")
    print(f"{'':15}{'local median':>13}{'p95':>8}{'max':>8}{'ray median':>12}{'p95':>8}{'max':>8}")
    for key, label, scale in (("wall", "wall (s)", 1), ("trainer", "trainer (s)", 1), ("overhead", "overhead (s)", 1),
                              ("start", "first line (s)", 1), ("log_delay", "log delay (ms)", 1000)):
        lo, ra = out["local"][key], out["ray"][key]
        cells = [lo["median"], lo["p95"], lo["max"], ra["median"], ra["p95"], ra["max"]]
        fmt = ".1f" if scale == 1000 else ".3f"
        print(f"{label:15}" + "".join(f"{v * scale:{w}{fmt}}" for v, w in zip(cells, (13, 8, 8, 12, 8, 8))))
    print(f"ray placement (start() -> running on its node): median {out['ray']['placed']['median']:.3f} s")
    print(f"ray overhead per experiment beyond local: {out['overhead_ray_minus_local_s']:+.3f} s (median)")
    f = out["ray_first_run"]
    print(f"first ray run (worker start, runtime env, the node's data check): wall {f['wall']:.2f} s, overhead "
          f"{f['overhead']:.2f} s, placed after {f['placed']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
