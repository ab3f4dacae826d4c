"""What verified evaluation costs per experiment: export + a second process + loading, against the evaluation in
the trainer's own process as it was, measured side by side on the same model and data.

    uv run python bench/eval_overhead.py [--profile cpu] [--repeat 3] [--loop N]

Builds a workspace with the profile (offline pystdlib data, in $AUTORESEARCH_CACHE or a temp cache), then for
the profile's model (train.py's GPT, random weights):
  in-process   prepare.evaluate_bpb(model) in this process (the old path; its imports are already paid)
  export       prepare.export_model (torch.export + save), the first one in the process and a second one
  evaluator    `prepare.py --evaluate` in a new process through the sandbox launcher (Python + torch import,
               validated load, functional form, evaluation), as run_training starts it
and prints the extra seconds per experiment (export + evaluator - in-process) and its share of TIME_BUDGET.
--loop N also runs `autoresearch loop --agent mutate --max N` and prints the measured phases of each run
(meta.json timings and the evaluator's metrics).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--loop", type=int, default=0, help="also run the mutate loop for N experiments")
    args = ap.parse_args()

    from core.scaffold import create_workspace
    from core.training import integrity, launcher_argv, trainer_env

    tmp = Path(tempfile.mkdtemp(prefix="eval-overhead-"))
    os.environ.setdefault("AUTORESEARCH_CACHE", str(tmp / "cache"))
    ws = create_workspace(tmp / "ws", profile=args.profile, dataset="pystdlib")
    subprocess.run([sys.executable, "prepare.py"], cwd=ws.root, check=True, capture_output=True)
    os.chdir(ws.root)
    sys.path.insert(0, str(ws.root))
    import torch

    import prepare

    spec = importlib.util.spec_from_file_location("train_under_bench", ws.root / "train.py")
    T = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(T)
    tok = prepare.Tokenizer.from_directory()
    d_model = -(-T.DEPTH * T.ASPECT_RATIO // T.HEAD_DIM) * T.HEAD_DIM
    model = T.GPT(tok.get_vocab_size(), T.DEPTH, d_model, T.HEAD_DIM, prepare.MAX_SEQ_LEN, T.WINDOW_PATTERN)
    model.init_weights()
    x = torch.randint(0, tok.get_vocab_size(), (T.DEVICE_BATCH_SIZE, prepare.MAX_SEQ_LEN))
    level = integrity()
    data = Path(os.environ["AUTORESEARCH_CACHE"]) / "pystdlib"
    rows = {"in-process": [], "export": [], "evaluator": [], "launcher only": []}
    first_export = None
    for i in range(args.repeat):
        t0 = time.perf_counter()
        before = prepare.evaluate_bpb(model, tok, T.DEVICE_BATCH_SIZE)
        rows["in-process"].append(time.perf_counter() - t0)
        out = tmp / f"eval{i}"
        out.mkdir()
        shutil.copy(ws.root / "prepare.py", out)
        shutil.copy(ws.root / "constants.py", out)
        t0 = time.perf_counter()
        prepare.export_model(model, x, out / "model.pt2")
        (rows["export"] if i else []).append(time.perf_counter() - t0)
        if i == 0:
            first_export = time.perf_counter() - t0
        cmd = [sys.executable, str(out / "prepare.py"), "--evaluate", str(out / "model.pt2"), "--metrics",
               str(out / "m.json")]
        argv = launcher_argv(cmd, level, [str(data / "val"), str(data / "tokenizer")], [str(out)])
        env = dict(trainer_env(os.environ), HOME=str(out), TMPDIR=str(out),
                   AUTORESEARCH_CACHE=os.environ["AUTORESEARCH_CACHE"])
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=out, env=env, check=True, capture_output=True)
        rows["evaluator"].append(time.perf_counter() - t0)
        m = json.loads((out / "m.json").read_text())
        assert abs(m["val_bpb"] - before) < 1e-6, (m["val_bpb"], before)
        t0 = time.perf_counter()
        subprocess.run(launcher_argv([sys.executable, "-c", "pass"], level, [], [str(out)]), env=env, check=True)
        rows["launcher only"].append(time.perf_counter() - t0)
    size = (tmp / "eval0" / "model.pt2").stat().st_size / 2**20
    budget = prepare.TIME_BUDGET
    med = {k: statistics.median(v) if v else float("nan") for k, v in rows.items()}
    extra_first = first_export + med["evaluator"] - med["in-process"]
    extra = med["export"] + med["evaluator"] - med["in-process"]
    print(f"profile {args.profile}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, model file "
          f"{size:.1f} MiB, integrity {level}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'step':<16}{'median s':>10}   (of {args.repeat})")
    print(f"{'in-process':<16}{med['in-process']:>10.2f}   the evaluation as it was, in the trainer")
    print(f"{'export (1st)':<16}{first_export:>10.2f}   torch.export + save, first in the process (imports)")
    print(f"{'export':<16}{med['export']:>10.2f}   later ones")
    print(f"{'evaluator':<16}{med['evaluator']:>10.2f}   new process: imports, validated load, evaluation")
    print(f"{'launcher only':<16}{med['launcher only']:>10.2f}   sandbox launcher around `python -c pass`")
    print(f"extra per experiment: {extra_first:.2f} s ({100 * extra_first / budget:.1f} % of TIME_BUDGET {budget} s) "
          f"as a trainer pays it (its one export is the first); {extra:.2f} s with the export machinery warm")
    m = json.loads((tmp / "eval0" / "m.json").read_text())
    print(f"evaluator's own split: load {m['eval_load_seconds']:.2f} s, total {m['eval_seconds']:.2f} s in-process")
    if args.loop:
        r = subprocess.run([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--tag", "bench",
                            "--agent", "mutate", "--max", str(args.loop)], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        print(f"loop exit {r.returncode}")
        for exp in sorted((ws.root / ".autoresearch" / "experiments").iterdir()):
            meta = json.loads((exp / "meta.json").read_text())
            mt = meta.get("metrics") or {}
            print(f"  {exp.name} {meta.get('status'):<8} val_bpb {meta.get('val_bpb') or 0:.4f}  train_s "
                  f"{meta.get('timings', {}).get('train_s', 0):6.1f}  training_wall_s {mt.get('training_wall_s', 0):6.1f}"
                  f"  trainer_s {mt.get('trainer_s', 0):6.1f}  eval_s {mt.get('eval_s', 0):5.1f}  "
                  f"reported training_seconds {mt.get('training_seconds', 0):5.1f}  {mt.get('integrity', '')[:24]}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
