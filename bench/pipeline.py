"""Pipeline: how busy the engine keeps its slots (lookahead 0 vs 1, real CPU trainer) and how it scales over slots.

Usage:
  uv run python bench/pipeline.py                 # both parts; at load 5 on 2 cores each real run took ~110 s
                                                  # (10 s budget): ~12 min for A, ~4 min for B
  uv run python bench/pipeline.py --json          # the same numbers as JSON
  uv run python bench/pipeline.py --skip-real     # only part B (stand-in trainer, about 3 minutes)

A (busy share): one slot, the REAL CPU trainer (scaffolded cpu/pystdlib workspace, TIME_BUDGET --budget-a,
  EVAL_TOKENS lowered and committed like a person's setup change, prepare.py run once, offline) and a command
  agent that sleeps half the budget and then edits one hyperparameter (`python -m core.agents.mutate`);
  --decide plain (every experiment is one run); baseline + --n-a proposals, with --lookahead 0 and --lookahead 1.
  Target: busy share >= 95 % with lookahead 1.
B (scaling): 1, 2 and 4 CPU slots; the trainer is a stand-in that sleeps TIME_BUDGET (--budget-b) and then hands
  over a "model" through the real hand-over and evaluation path (bench/engine_overhead.py's INSTANT_TRAIN, plus a
  small seeded noise so that the noise runs measure a sigma); an instant agent; the default decide rule (auto:
  3 noise runs of the baseline, then the noise rule, every win confirmed once); --n-b-per-slot proposals per slot.
  Target: experiments per hour at N=4 >= 0.95 * 4 * (the rate at N=1).

Every time comes from the engine's own records: events.jsonl (engine_started, training_started,
experiment_finished, engine_stopped) and each experiment's meta.json (kind, timings.train_s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine_overhead import INSTANT_AGENT, INSTANT_TRAIN, git, make_instant_workspace  # noqa: E402

from core.config import LoopConfig  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.executors.local import LocalExecutor, cpu_slots  # noqa: E402
from core.workspace import Workspace  # noqa: E402

# the stand-in trainer: sleeps the budget, then INSTANT_TRAIN's hand-over of a model worth QUALITY (+ seeded noise)
SLEEP_TRAIN_HEAD = ("import os, random, re, time\n"
                    "_src = open('train.py').read()\n"
                    "time.sleep(float(re.search(r'^TIME_BUDGET = ([0-9.]+)', open('constants.py').read(), re.M)"
                    ".group(1)))\n"
                    "_noise = random.Random(os.environ.get('AUTORESEARCH_SEED', '0') + '|' + _src).gauss(0, 0.01)\n")
SLEEP_TRAIN = SLEEP_TRAIN_HEAD + INSTANT_TRAIN.replace(
    "json.dump({'quality': q}", "json.dump({'quality': q + _noise}")
assert "q + _noise" in SLEEP_TRAIN


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def read_events(ws: Workspace) -> list[dict]:
    return [json.loads(line) for line in ws.events.read_text().splitlines() if line.strip()]


def analyse(ws: Workspace, slots: int) -> dict:
    """Busy share and rates of one engine session, from events.jsonl and meta.json only."""
    events = read_events(ws)
    t_start = next(e["ts"] for e in events if e["type"] == "engine_started")
    t_stop = next(e["ts"] for e in reversed(events) if e["type"] == "engine_stopped")
    started = {e["id"]: e["ts"] for e in events if e["type"] == "training_started"}
    finished = {e["id"]: e for e in events if e["type"] == "experiment_finished"}
    runs = sorted((i for i in started if i in finished), key=lambda i: started[i])
    busy = sum(finished[i]["ts"] - started[i] for i in runs)
    wall = t_stop - t_start
    first, last = min(started[i] for i in runs), max(finished[i]["ts"] for i in runs)
    metas = {i: json.loads((ws.experiment_dir(i) / "meta.json").read_text()) for i in runs}
    kinds: dict[str, int] = {}
    for m in metas.values():
        kinds[m["kind"]] = kinds.get(m["kind"], 0) + 1
    train_s = sum((m.get("timings") or {}).get("train_s", 0.0) for m in metas.values())
    # a slot's idle gap: from one run's experiment_finished to the next training_started on the same slot
    by_slot: dict[str, list[str]] = {}
    for i in runs:
        by_slot.setdefault(str((metas[i].get("slot") or {}).get("id")), []).append(i)
    gaps = [started[b] - finished[a]["ts"] for ids in by_slot.values() for a, b in zip(ids, ids[1:])]
    proposals = kinds.get("proposal", 0)
    # the proposal phase: from the first proposal's training_started (the baseline and the noise runs, which
    # hold back every proposal until sigma is known, are over) to the last experiment_finished
    p0 = min((started[i] for i in runs if metas[i]["kind"] == "proposal"), default=first)
    p_busy = sum(max(0.0, finished[i]["ts"] - max(started[i], p0)) for i in runs)
    p_runs = sum(1 for i in runs if finished[i]["ts"] > p0)
    return {"phase_wall_s": last - p0, "phase_busy_share": p_busy / (slots * (last - p0)),
            "phase_runs_per_h": 3600 * p_runs / (last - p0), "slots": slots, "runs": len(runs), "kinds": kinds, "wall_s": wall, "busy_s": busy,
            "busy_share": busy / (slots * wall), "steady_wall_s": last - first,
            "steady_busy_share": busy / (slots * (last - first)), "meta_train_s": train_s,
            "runs_per_h": 3600 * len(runs) / wall, "proposals_per_h": 3600 * proposals / wall,
            "steady_runs_per_h": 3600 * len(runs) / (last - first),
            "confirmation_share": kinds.get("confirmation", 0) / len(runs),
            "gap_median_s": statistics.median(gaps) if gaps else None, "gap_max_s": max(gaps) if gaps else None,
            "statuses": [finished[i]["status"] for i in runs]}


# --- A: real CPU trainer, one slot, lookahead 0 vs 1 -------------------------------------------------------

def make_real_workspace(tmp: Path, budget: float, eval_tokens: int) -> tuple[Path, float]:
    from core.scaffold import create_workspace

    os.environ.setdefault("AUTORESEARCH_CACHE", str(tmp / "cache"))
    ws = create_workspace(tmp / "template", profile="cpu", dataset="pystdlib", time_budget=budget)
    consts = ws.root / "constants.py"
    consts.write_text(re.sub(r"^EVAL_TOKENS = .*$", f"EVAL_TOKENS = {eval_tokens}  # small for the bench",
                             consts.read_text(), flags=re.M))
    git(ws.root, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "smaller evaluation")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "prepare.py"], cwd=ws.root, check=True, capture_output=True, timeout=600,
                   env=dict(os.environ))
    return ws.root, time.perf_counter() - t0


def bench_real(template: Path, dest: Path, lookahead: int, n: int, budget: float) -> dict:
    from core.agents import make_agent

    shutil.copytree(template, dest, symlinks=True)
    ws = Workspace.at(dest)
    cmd = f"sleep {budget / 2:g}; PYTHONPATH={ROOT} {sys.executable} -m core.agents.mutate"
    agent = make_agent("command", {"agent_cmd": cmd})
    load0 = load()
    eng = Engine(ws, LoopConfig(tag="pipe", max_experiments=n + 1, agent="command", agent_cmd=cmd,
                                lookahead=lookahead, decide="plain"),
                 agent=agent, handle_signals=False, log=lambda m: None)
    eng.run()
    r = analyse(ws, 1)
    r.update(lookahead=lookahead, time_budget_s=budget, load_before=load0, load_after=load())
    progress(f"A lookahead {lookahead}: {r['runs']} runs, wall {r['wall_s']:.1f} s, busy share "
             f"{pct(r['busy_share'])}, load {r['load_after']}")
    return r


# --- B: stand-in trainer, 1/2/4 slots ----------------------------------------------------------------------

def bench_slots(tmp: Path, slots: int, n: int, budget: float, decide: str) -> dict:
    from core.agents.base import Agent

    class InstantAgent(Agent):
        name = "instant"

        def command(self, ctx):
            return [sys.executable, "-S", "-c", INSTANT_AGENT]

    ws = make_instant_workspace(tmp / f"slots{slots}", rows=0)
    (ws.root / "constants.py").write_text(f"TIME_BUDGET = {budget:g}\n")
    git(ws.root, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qam", "budget", "--allow-empty")
    load0 = load()
    ex = LocalExecutor(ws.root, cpu_slots(slots) if slots > 1 else [cpu_slots(1)[0]],
                       argv=[sys.executable, "-S", "-c", SLEEP_TRAIN])
    eng = Engine(ws, LoopConfig(tag="pipe", max_experiments=n + 1, lookahead=1, slots=slots, decide=decide),
                 agent=InstantAgent(), executor=ex, handle_signals=False, log=lambda m: None)
    eng.run()
    r = analyse(ws, slots)
    r.update(time_budget_s=budget, decide=decide, load_before=load0, load_after=load())
    progress(f"B {slots} slot(s): {r['runs']} runs, wall {r['wall_s']:.1f} s, {r['runs_per_h']:.0f} runs/h, "
             f"load {r['load_after']}")
    return r


def progress(msg: str) -> None:
    """One line per finished session on stderr, so that a run cut short still shows what it measured."""
    print(f"[pipeline] {msg}", file=sys.stderr, flush=True)


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-a", type=float, default=10.0, help="TIME_BUDGET of part A's real CPU trainer (s)")
    p.add_argument("--n-a", type=int, default=2, help="proposals per lookahead setting in part A (+ the baseline)")
    p.add_argument("--eval-tokens", type=int, default=8192, help="EVAL_TOKENS of part A's workspace")
    p.add_argument("--budget-b", type=float, default=5.0, help="how long part B's stand-in trainer sleeps (s)")
    p.add_argument("--n-b-per-slot", type=int, default=6, help="proposals per slot in part B (+ the baseline)")
    p.add_argument("--slots", default="1,2,4")
    p.add_argument("--decide-b", default="auto", choices=("auto", "plain"))
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    out = {"machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, Python "
                      f"{platform.python_version()})", "load_start": load()}
    say(f"machine: {out['machine']}; load average (1/5/15 min) at start {out['load_start']}")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmpname:
        tmp = Path(tmpname)
        if not args.skip_real:
            template, prep = make_real_workspace(tmp, args.budget_a, args.eval_tokens)
            out["prepare_s"] = prep
            out["real"] = [bench_real(template, tmp / f"real-la{la}", la, args.n_a, args.budget_a) for la in (0, 1)]
        out["scaling"] = [bench_slots(tmp, int(s), args.n_b_per_slot * int(s), args.budget_b, args.decide_b)
                          for s in args.slots.split(",")]
    out["total_s"] = time.perf_counter() - t_all
    out["load_end"] = load()
    if "real" in out:
        r0, r1 = out["real"]
        out["target_a"] = {"busy_share_la1": r1["busy_share"], "met": r1["busy_share"] >= 0.95}
    s1 = out["scaling"][0]
    for s in out["scaling"]:
        s["rel_runs_per_h"] = s["runs_per_h"] / s1["runs_per_h"]
        s["rel_phase_runs_per_h"] = s["phase_runs_per_h"] / s1["phase_runs_per_h"]
        s["rel_proposals_per_h"] = s["proposals_per_h"] / s1["proposals_per_h"] if s1["proposals_per_h"] else None
    s4 = next((s for s in out["scaling"] if s["slots"] == 4), None)
    if s4 is not None and s1["slots"] == 1:
        out["target_b"] = {"rel_at_4": s4["rel_runs_per_h"], "met": s4["rel_runs_per_h"] >= 0.95 * 4,
                           "phase_rel_at_4": s4["rel_phase_runs_per_h"],
                           "phase_met": s4["rel_phase_runs_per_h"] >= 0.95 * 4}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    if "real" in out:
        say(f"\nA. one slot, REAL CPU trainer (TIME_BUDGET {args.budget_a:g} s, EVAL_TOKENS {args.eval_tokens}), "
            f"command agent: sleep {args.budget_a / 2:g} s + mutate; --decide plain; baseline + {args.n_a} "
            f"proposals each; prepare.py once: {out['prepare_s']:.1f} s")
        say(f"{'lookahead':>9} {'runs':>4} {'wall s':>7} {'busy s':>7} {'busy share':>10} {'steady share':>12} "
            f"{'runs/h':>7} {'gap med/max s':>13} {'load before->after':>22}  statuses")
        for r in out["real"]:
            say(f"{r['lookahead']:>9} {r['runs']:>4} {r['wall_s']:>7.1f} {r['busy_s']:>7.1f} "
                f"{pct(r['busy_share']):>10} {pct(r['steady_busy_share']):>12} {r['runs_per_h']:>7.0f} "
                f"{r['gap_median_s']:>6.2f}/{r['gap_max_s']:<6.2f} {r['load_before'] + '->' + r['load_after']:>22}"
                f"  {' '.join(r['statuses'])}")
        ta = out["target_a"]
        say(f"target A: busy share >= 95 % with lookahead 1: {pct(ta['busy_share_la1'])} -> "
            f"{'MET' if ta['met'] else 'MISSED'} (lookahead 0: {pct(r0['busy_share'])})")
    say(f"\nB. stand-in trainer (sleeps {args.budget_b:g} s, then the real hand-over + evaluation), instant agent, "
        f"lookahead 1, --decide {args.decide_b}, {args.n_b_per_slot} proposals per slot + baseline")
    say(f"{'slots':>5} {'runs':>4} {'kinds b/n/p/c':>13} {'wall s':>7} {'busy share':>10} {'steady share':>12} "
        f"{'runs/h':>7} {'vs N=1':>6} {'props/h':>7} {'vs N=1':>6} {'steady runs/h':>13} {'confirm share':>13} "
        f"{'gap med s':>9} {'ph wall s':>9} {'ph share':>8} {'ph runs/h':>9} {'vs N=1':>6} {'load before->after':>22}")
    for s in out["scaling"]:
        k = s["kinds"]
        kinds = f"{k.get('baseline', 0)}/{k.get('noise', 0)}/{k.get('proposal', 0)}/{k.get('confirmation', 0)}"
        rp = f"{s['rel_proposals_per_h']:.2f}" if s["rel_proposals_per_h"] is not None else "-"
        say(f"{s['slots']:>5} {s['runs']:>4} {kinds:>13} {s['wall_s']:>7.1f} {pct(s['busy_share']):>10} "
            f"{pct(s['steady_busy_share']):>12} {s['runs_per_h']:>7.0f} {s['rel_runs_per_h']:>6.2f} "
            f"{s['proposals_per_h']:>7.0f} {rp:>6} {s['steady_runs_per_h']:>13.0f} "
            f"{pct(s['confirmation_share']):>13} {s['gap_median_s'] or 0:>9.2f} {s['phase_wall_s']:>9.1f} "
            f"{pct(s['phase_busy_share']):>8} {s['phase_runs_per_h']:>9.0f} {s['rel_phase_runs_per_h']:>6.2f} "
            f"{s['load_before'] + '->' + s['load_after']:>22}")
    if "target_b" in out:
        tb = out["target_b"]
        say(f"target B: runs per hour at N=4 >= 0.95 * 4 = 3.80 x N=1: {tb['rel_at_4']:.2f} x -> "
            f"{'MET' if tb['met'] else 'MISSED'} (whole session); proposal phase only: {tb['phase_rel_at_4']:.2f} x -> "
            f"{'MET' if tb['phase_met'] else 'MISSED'}")
    say("\nhow each number was obtained:")
    say("  busy s = sum over trained runs of events.jsonl experiment_finished.ts - training_started.ts "
        "(trainer spawn to the row recorded: trainer, hand-over, evaluation, decision)")
    say("  wall s = events.jsonl engine_stopped.ts - engine_started.ts (the whole session, baseline included)")
    say("  busy share = busy s / (slots x wall s); steady share = busy s / (slots x (last experiment_finished - "
        "first training_started))")
    say("  runs/h = trained runs (experiments with a training_started event) x 3600 / wall s; props/h counts only "
        "meta.json kind 'proposal'; vs N=1 = ratio to the 1-slot row")
    say("  kinds b/n/p/c and confirm share = meta.json kind of each trained run (baseline/noise/proposal/"
        "confirmation); confirm share = confirmation / all trained runs")
    say("  ph = the proposal phase: first proposal's training_started.ts to the last experiment_finished.ts "
        "(after the baseline and the noise runs); ph share = busy time inside it / (slots x ph wall s); "
        "ph runs/h = runs finishing inside it x 3600 / ph wall s")
    say("  gap = per slot, next training_started.ts - previous experiment_finished.ts (the slot's idle time "
        "between runs); load = os.getloadavg() 1/5/15 min before and after each session")
    if "real" in out:
        say("  cross-check, meta.json timings.train_s (run_training's own duration) summed: " + ", ".join(
            f"lookahead {r['lookahead']} {r['meta_train_s']:.1f} s vs busy {r['busy_s']:.1f} s" for r in out["real"]))
    say(f"total bench time {out['total_s']:.0f} s; load average at end {out['load_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
