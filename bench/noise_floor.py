"""Measure the noise floor: run one unmodified train.py K times with different seeds and report σ of val_bpb.

Usage:
  uv run python bench/noise_floor.py WORKSPACE [--runs K] [--rev REV] [--out DIR] [--same-seed]

The trainer files (constants.py, prepare.py, train.py) of WORKSPACE at git revision REV (default: the
workspace's first commit, the baseline) run K times, one after the other, through the engine's own
core.training.run_training (a fresh run folder under DIR, the trusted metrics file). Seeds: if train.py reads
AUTORESEARCH_SEED, run i gets AUTORESEARCH_SEED=i; otherwise the SEED constant of the text that runs is
rewritten per run (the workspace itself is never touched). --same-seed keeps the seed, so only the machine's
own noise (step counts under load) remains.

Reports every run (seed, val_bpb, steps, training seconds, load average before and after), σ (sample std,
Bessel's correction) with core.noise, and the early-stop calibration (loss spread at 40/60/80 %) with
core.early_stop. Each run's train.log stays in DIR/run-NN.log (bench/early_stop_backtest.py --noise-logs DIR).
The data cache is $AUTORESEARCH_CACHE (as for the workspace): run `autoresearch setup` there first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import early_stop, noise, pyconst  # noqa: E402
from core.progress import read_curve  # noqa: E402
from core.training import run_training  # noqa: E402


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(ws), *args], check=True, capture_output=True, text=True).stdout


def with_seed(train_py: str, seed: int) -> str | None:
    """train.py's text with its SEED constant set to seed (None if it has none)."""
    new, missing = pyconst.rewrite(train_py, {"SEED": str(seed)})
    return None if missing else new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--runs", type=int, default=5, help="runs of the baseline (K, default 5)")
    ap.add_argument("--rev", default=None, help="git revision of the trainer files (default: the first commit)")
    ap.add_argument("--out", type=Path, default=None, help="folder for the copy, the logs and noise.json")
    ap.add_argument("--same-seed", action="store_true", help="keep the seed: only the machine's noise remains")
    ap.add_argument("--first-seed", type=int, default=1)
    args = ap.parse_args(argv)
    ws = args.workspace.resolve()
    rev = args.rev or git(ws, "rev-list", "--max-parents=0", "HEAD").split()[0]
    out = (args.out or Path(tempfile.mkdtemp(prefix="noise-floor-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files = {name: git(ws, "show", f"{rev}:{name}") for name in ("prepare.py", "constants.py", "train.py")}
    reads_env = "AUTORESEARCH_SEED" in files["train.py"]
    consts = {k: c.value for k, c in pyconst.parse(files["constants.py"]).items()}
    profile, budget = consts.get("PROFILE"), consts.get("TIME_BUDGET")
    hw = noise.hardware_fingerprint(None)
    mode = ("same seed" if args.same_seed else
            "AUTORESEARCH_SEED" if reads_env else "SEED constant rewritten per run")
    print(f"noise floor: {args.runs} runs of {ws} at {rev[:7]} (TIME_BUDGET {budget} s) in {out}")
    print(f"machine: {platform.node()} {hw}; seeds: {mode}")
    print(f"{'run':>3} {'seed':>5} {'val_bpb':>9} {'steps':>5} {'train_s':>7} {'total_s':>7} {'load before':>11} "
          f"{'load after':>10}")
    runs = []
    for i in range(args.runs):
        seed = args.first_seed + i
        extra, run_files = {}, dict(files)
        if not args.same_seed:
            if reads_env:
                extra["AUTORESEARCH_SEED"] = str(seed)
            else:
                run_files["train.py"] = with_seed(files["train.py"], seed)
                if run_files["train.py"] is None:
                    print("train.py has no SEED constant and does not read AUTORESEARCH_SEED; use --same-seed")
                    return 2
        log = out / f"run-{i + 1:02d}.log"
        load0 = os.getloadavg()[0]
        res = run_training(run_files, out / "run", logs=[log], metrics_out=out / f"run-{i + 1:02d}.metrics.json",
                           env=extra)
        load1 = os.getloadavg()[0]
        m = res.metrics
        runs.append({"seed": None if args.same_seed else seed, "ok": res.ok, "val_bpb": res.val_bpb,
                     "num_steps": m.get("num_steps"), "training_seconds": m.get("training_seconds"),
                     "total_seconds": m.get("total_seconds"), "load_before": load0, "load_after": load1,
                     "reason": res.reason, "log": log.name})
        vb = f"{res.val_bpb:.6f}" if res.ok else "crash"
        print(f"{i + 1:>3} {seed if not args.same_seed else '-':>5} {vb:>9} {m.get('num_steps', '-'):>5} "
              f"{m.get('training_seconds', '-'):>7} {m.get('total_seconds', '-'):>7} {load0:>11.2f} {load1:>10.2f}"
              + (f"  ({res.reason})" if not res.ok else ""), flush=True)
    ok = [r for r in runs if r["ok"]]
    summary = {"workspace": str(ws), "rev": rev, "time_budget": budget, "hardware": hw, "seeds": mode, "runs": runs}
    if len(ok) >= noise.MIN_RUNS:
        floor = noise.measure([r["val_bpb"] for r in ok], profile, budget or 0, hw,
                              num_steps=[int(r["num_steps"] or 0) for r in ok])
        steps = [r["num_steps"] for r in ok]
        print(f"\nσ = {floor.sigma:.6f} (sample std, {floor.runs} runs), mean val_bpb {floor.mean:.6f}, "
              f"range {min(floor.val_bpbs):.6f}..{max(floor.val_bpbs):.6f}; steps {min(steps)}..{max(steps)}")
        summary["noise_floor"] = floor.to_json()
        curves = [read_curve(out / r["log"]) for r in ok]
        cal = early_stop.calibrate(curves)
        spreads = ", ".join(f"{100 * c:.0f} %: {'-' if s is None else f'{s:.4f}'}"
                            for c, s in zip(cal.checkpoints, cal.spreads))
        print(f"loss spread across the runs' curves (early-stop calibration): {spreads}")
        summary["early_stop_calibration"] = cal.to_json()
    else:
        print(f"\nfewer than {noise.MIN_RUNS} runs finished: no σ")
    (out / "noise.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"wrote {out / 'noise.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
