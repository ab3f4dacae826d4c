"""Engine overhead per experiment (git, parsing, recording) outside the agent and trainer subprocesses.

Usage:
  uv run python bench/engine_overhead.py            # 20 experiments, instant agent and trainer, 10,000-row results.tsv
  uv run python bench/engine_overhead.py --real     # also: 10 experiments with the mutate agent and the real CPU trainer

Targets: median overhead <= 0.5 s per experiment; trainer share of wall time >= 95 % in the --real loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import proposer as proposer_mod  # noqa: E402
from core.config import LoopConfig  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.executors import local as local_mod  # noqa: E402
from core.workspace import Workspace  # noqa: E402

INSTANT_AGENT = ("import os, random\n"
                 "src = open('train.py').read()\n"
                 "open('train.py', 'w').write(src.replace('QUALITY = ', 'QUALITY = %.6f  # ' % random.uniform(0.9, 1.1), 1))\n"
                 "open(os.environ['AUTORESEARCH_PROPOSAL_FILE'], 'w').write('random quality\\n')\n")
# the trainer contract without a model: hand over a "model" (a JSON file) that the evaluator below scores
INSTANT_TRAIN = ("import json, os, re\n"
                 "q = float(re.search(r'QUALITY = ([0-9.]+)', open('train.py').read()).group(1))\n"
                 "d = os.environ['AUTORESEARCH_HANDOFF']\n"
                 "json.dump({'peak_vram_mb': 1.0}, open(os.path.join(d, 'report.json'), 'w'))\n"
                 "json.dump({'quality': q}, open(os.path.join(d, '.m'), 'w'))\n"
                 "os.replace(os.path.join(d, '.m'), os.path.join(d, 'model.pt2'))\n")
INSTANT_PREPARE = ("import json, sys\n"
                   "if '--evaluate' in sys.argv:\n"
                   "    m = json.load(open(sys.argv[sys.argv.index('--evaluate') + 1]))\n"
                   "    json.dump({'val_bpb': m['quality'], 'device': 'cpu'},\n"
                   "              open(sys.argv[sys.argv.index('--metrics') + 1], 'w'))\n")


class Timed:
    """Wraps the agent's subprocess and the training run (trainer + evaluator) and records how long each ran,
    per experiment id (the agent's cwd is its worktree .../worktrees/<id>, a run's folder .../runs/<id>)."""

    def __init__(self):
        self.sub: dict[str, float] = {}
        self.train = 0.0
        orig_run, orig_train = proposer_mod.run, local_mod.run_training
        timed = self

        def run(argv, *, cwd, **k):
            res = orig_run(argv, cwd=cwd, **k)
            exp = Path(cwd).name
            timed.sub[exp] = timed.sub.get(exp, 0.0) + res.duration_s
            return res

        def run_training(files, run_dir, **k):
            t0 = time.perf_counter()
            res = orig_train(files, run_dir, **k)
            dt = time.perf_counter() - t0
            timed.sub[Path(run_dir).name] = timed.sub.get(Path(run_dir).name, 0.0) + dt
            timed.train += dt
            return res

        proposer_mod.run = run
        local_mod.run_training = run_training


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def make_instant_workspace(root: Path, rows: int) -> Workspace:
    from core.agents.base import Agent  # noqa: F401 (imported for the class below)

    root.mkdir(parents=True)
    (root / "train.py").write_text("QUALITY = 1.0\n" + "".join(f"# line {i}\n" for i in range(600)))
    (root / "prepare.py").write_text(INSTANT_PREPARE)
    (root / "constants.py").write_text("TIME_BUDGET = 1\n")
    (root / "program.md").write_text("# directives\n" * 50)
    (root / ".gitignore").write_text("results.tsv\nrun.log\n.autoresearch/\n__pycache__/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "-c", "user.name=b", "-c", "user.email=b@b", "add", "-A")
    git(root, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "init")
    with open(root / "results.tsv", "w") as f:
        f.write("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
        for i in range(rows):
            status = "keep" if i % 50 == 0 else "crash" if i % 17 == 0 else "discard"
            val = 0.0 if status == "crash" else 1.2 - i * 1e-5
            f.write(f"{i:07x}\t{val:.6f}\t44.0\t{status}\tprefilled experiment number {i} with a description\n")
    return Workspace.at(root)


def bench_overhead(n: int = 20, rows: int = 10_000) -> dict:
    """n experiments one after the other (one slot, no proposals ahead), each with an instant agent and trainer;
    per experiment: its wall time (experiment_started to experiment_finished) minus its subprocesses."""
    from core.agents.base import Agent

    class InstantAgent(Agent):
        name = "instant"

        def command(self, ctx):
            return [sys.executable, "-S", "-c", INSTANT_AGENT]

    with tempfile.TemporaryDirectory() as tmp:
        ws = make_instant_workspace(Path(tmp) / "ws", rows)
        timed = Timed()
        eng = Engine(ws, LoopConfig(tag="bench", max_experiments=n + 1, lookahead=0, decide="plain"),
                     agent=InstantAgent(), trainer_argv=[sys.executable, "-S", "-c", INSTANT_TRAIN],
                     handle_signals=False, log=lambda m: None)
        t0 = time.perf_counter()
        eng.run()
        total = time.perf_counter() - t0
        events = [json.loads(line) for line in ws.events.read_text().splitlines()]
        started = {e["id"]: e["ts"] for e in events if e["type"] == "experiment_started"}
        per_exp = [e["ts"] - started[e["id"]] - timed.sub.get(e["id"], 0.0) for e in events
                   if e["type"] == "experiment_finished" and e["id"] in started and e.get("kind") != "baseline"]
        return {"experiments": len(per_exp), "rows": rows, "median_s": statistics.median(per_exp),
                "max_s": max(per_exp), "min_s": min(per_exp), "startup_and_total_s": total}


def bench_real(n: int = 10, time_budget: float = 20.0) -> dict:
    """The mutate agent and the real trainer (CPU profile, offline pystdlib data)."""
    from core.scaffold import create_workspace

    with tempfile.TemporaryDirectory() as tmp:
        cache = os.environ.setdefault("AUTORESEARCH_CACHE", str(Path(tmp) / "cache"))
        ws = create_workspace(Path(tmp) / "ws", profile="cpu", dataset="pystdlib", time_budget=time_budget)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "prepare.py"], cwd=ws.root, check=True, env=dict(os.environ))
        prep = time.perf_counter() - t0
        timed = Timed()
        from core.agents import make_agent
        eng = Engine(ws, LoopConfig(tag="bench", max_experiments=n, agent="mutate", lookahead=0, decide="plain"),
                     agent=make_agent("mutate", {}), handle_signals=False, log=lambda m: None)
        t0 = time.perf_counter()
        eng.run()
        wall = time.perf_counter() - t0
        rows = (ws.root / "results.tsv").read_text().splitlines()[1:]
        return {"experiments": n, "time_budget_s": time_budget, "wall_s": wall, "train_s": timed.train,
                "trainer_share": timed.train / wall, "agent_and_engine_s": wall - timed.train,
                "prepare_s": prep, "statuses": [r.split("\t")[3] for r in rows], "cache": cache}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", action="store_true", help="also run 10 experiments with the real CPU trainer")
    p.add_argument("-n", type=int, default=20)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--time-budget", type=float, default=20.0, help="TIME_BUDGET of the --real workspace")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, Python "
                      f"{platform.python_version()})"}
    out["overhead"] = bench_overhead(args.n, args.rows)
    o = out["overhead"]
    if not args.json:
        print(f"machine: {out['machine']}")
        print(f"engine overhead per experiment (outside agent and trainer subprocesses), {o['experiments']} "
              f"experiments, {o['rows']}-row results.tsv: median {o['median_s']:.3f} s, min {o['min_s']:.3f} s, "
              f"max {o['max_s']:.3f} s  (target <= 0.5 s: {'OK' if o['median_s'] <= 0.5 else 'MISSED'})")
    if args.real:
        out["real"] = bench_real(time_budget=args.time_budget)
        r = out["real"]
        if not args.json:
            print(f"real loop: {r['experiments']} experiments (mutate agent, CPU trainer, TIME_BUDGET "
                  f"{r['time_budget_s']:.0f} s): wall {r['wall_s']:.1f} s, training {r['train_s']:.1f} s, "
                  f"trainer share {100 * r['trainer_share']:.1f} %  (target >= 95 %: "
                  f"{'OK' if r['trainer_share'] >= 0.95 else 'MISSED'}); statuses {' '.join(r['statuses'])}")
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
