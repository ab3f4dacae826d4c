"""Simulation with known truth: the `plain` and `noise` keep rules (and noise + early stop) at equal GPU time.

Usage:
  uv run python bench/decision_sim.py [--seeds 200] [--budget 100] [--sweep] [--json FILE]

What is simulated (everything is synthetic and seeded; the decisions are the engine's own functions,
core.decision.decide / decide_noise, core.noise.sample_sigma and core.early_stop.Monitor):
- a landscape: seven hyperparameters named like train.py's (five matter, SCALAR_LR and ADAM_BETA1 have no
  effect at all) with a true val_bpb = optimum + a quadratic bowl in log-lr / ratio / depth units, with an
  interaction between MATRIX_LR and DEPTH. The start (the baseline) sits `excess` above the optimum.
- a measurement: val_bpb = truth + N(0, σ). Scenarios: "h100" (σ 0.0005, excess 0.028, upstream's baseline
  0.998 against ~0.97 after a night) and "cpu" (σ 0.1, excess 0.4: the demo's 2.06 against ~1.7).
- a loss curve per run (for early stop): the measured value + a common decay A(1-f)^2 that varies with the
  run's speed (the CPU's step count under load, correlated with its noise) + a config-dependent shape term
  that vanishes at the end (a larger lr or a deeper model is behind mid-run) + per-point jitter.
- a mutate-like searcher: from the current best, one parameter moves by one of mutate's steps (x0.5 ... x2,
  +-0.1 ...), never a (name, from, to) change tried before.
- policies: `plain` (upstream: keep if lower), `noise` (default_noise_runs extra baseline runs, σ from them,
  keep beyond z·σ, a borderline win re-run once and kept only if the mean clears the bar; the best's value is
  the mean of its runs), `noise+es` (noise, plus early stop calibrated on the baseline runs' curves).
- common random numbers: the n-th measurement of a given config draws the same noise in every policy, and the
  k-th proposal draws the same random choices, so the policies differ only by their decisions.
- equal GPU time: every policy runs until `budget` full runs' worth of time is spent; noise runs and
  confirmations count as runs, an early-stopped run counts the part it trained (plus its start-up).

Reported per scenario and policy (means over seeds): the true val_bpb of the final best, the true gain, keeps,
the false-keep rate (kept changes whose true effect is >= 0, pooled over seeds), GPU time per true improvement
(runs' worth of time per kept change that truly improved), what the ledger claims minus the truth, and the
kinds of runs spent. Targets: false keeps <= 5 % with `noise`; the final true val_bpb of `noise` at least as
good as `plain`'s at equal GPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import early_stop  # noqa: E402
from core.decision import decide, decide_noise  # noqa: E402
from core.noise import default_noise_runs, pooled_sigma, sample_sigma  # noqa: E402
from core.progress import Progress  # noqa: E402

FACTORS = (0.5, 0.75, 1.25, 1.5, 2.0)  # core.agents.mutate's multiplicative steps


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # mul (log2 units), add (units of `unit`), int
    start: float
    opt: float
    share: float  # share of the start's excess over the optimum this parameter holds
    shape: float  # curve shape per unit: > 0 is behind mid-run (and not at the end)
    unit: float = 1.0
    steps: tuple = ()
    lo: float = -math.inf
    hi: float = math.inf
    curv: float = 0.0  # for a parameter that starts at its optimum: the loss per unit^2, as a share of the excess
    factors: tuple = FACTORS

    def coord(self, x: float) -> float:
        return math.log2(x) if self.kind == "mul" else x / self.unit

    def moves(self, x: float) -> list[float]:
        vals = [x * f for f in self.factors] if self.kind == "mul" else [x + s for s in self.steps]
        return [round(min(max(v, self.lo), self.hi), 10) for v in vals]


# Five parameters hold the start's excess; four start at their optimum (any move costs a little); three have
# no effect on the truth at all (SCALAR_LR, ADAM_BETA1, DEVICE_BATCH_SIZE: 9 of the ~42 moves from the start).
PARAMS = (
    Param("MATRIX_LR", "mul", 0.04, 0.06, 0.25, 0.6, lo=0.002, hi=0.3),
    Param("EMBEDDING_LR", "mul", 0.6, 0.9, 0.15, 0.3, lo=0.02, hi=5.0),
    Param("WARMDOWN_RATIO", "add", 0.5, 0.7, 0.2, -0.8, unit=0.1, steps=(-0.2, -0.1, 0.1, 0.2), lo=0.0, hi=1.0),
    Param("WEIGHT_DECAY", "add", 0.2, 0.1, 0.1, 0.0, unit=0.05, steps=(-0.1, -0.05, 0.05, 0.1), lo=0.0, hi=1.0),
    Param("DEPTH", "int", 8, 10, 0.3, 0.5, steps=(-1, 1), lo=1, hi=32),
    Param("UNEMBEDDING_LR", "mul", 0.004, 0.004, 0.0, 0.1, lo=0.0002, hi=0.05, curv=0.05),
    Param("FINAL_LR_FRAC", "add", 0.0, 0.0, 0.0, -0.2, unit=0.05, steps=(0.05, 0.1), lo=0.0, hi=1.0, curv=0.02),
    Param("WARMUP_RATIO", "add", 0.0, 0.0, 0.0, 0.2, unit=0.05, steps=(0.05,), lo=0.0, hi=0.5, curv=0.02),
    Param("ASPECT_RATIO", "int", 64, 64, 0.0, 0.3, unit=16, steps=(-16, 16), lo=16, hi=256, curv=0.05),
    Param("SCALAR_LR", "mul", 0.5, 0.5, 0.0, 0.1, lo=0.02, hi=5.0),  # no effect on the truth
    Param("ADAM_BETA1", "add", 0.8, 0.8, 0.0, 0.0, unit=0.05, steps=(-0.05, 0.05), lo=0.5, hi=0.999),  # none
    Param("DEVICE_BATCH_SIZE", "mul", 128, 128, 0.0, 0.0, lo=1, hi=1024, factors=(0.5, 2.0)),  # none
)
INTERACTION = 0.3  # correlation of MATRIX_LR and DEPTH in the bowl (a deeper model wants another lr)


@dataclass(frozen=True)
class Scenario:
    name: str
    profile: str  # for default_noise_runs
    sigma: float
    excess: float  # true val_bpb of the start above the optimum
    optimum: float
    decay: float  # A: loss above the end at progress 0 is A (in val_bpb units)
    speed_noise: float  # relative spread of the decay between runs (step count)
    speed_corr: float  # correlation of the speed with the run's val_bpb noise
    jitter: float  # per-point noise of the logged loss, in units of σ
    points: int  # progress lines per run
    startup_s: float
    budget_s: float
    eval_s: float

    def stopped_cost(self, fraction: float) -> float:
        """An early-stopped run's time in full runs: start-up and the part of the budget it trained."""
        return (self.startup_s + fraction * self.budget_s) / (self.startup_s + self.budget_s + self.eval_s)


SCENARIOS = {
    "h100": Scenario("h100", "h100", sigma=0.0005, excess=0.028, optimum=0.970, decay=0.45, speed_noise=0.02,
                     speed_corr=0.3, jitter=0.5, points=40, startup_s=15, budget_s=300, eval_s=10),
    "cpu": Scenario("cpu", "cpu", sigma=0.1, excess=0.4, optimum=1.66, decay=1.5, speed_noise=0.15,
                    speed_corr=0.7, jitter=0.5, points=20, startup_s=8, budget_s=40, eval_s=5),
}


class Landscape:
    """The true val_bpb of a config (a tuple of values in PARAMS order) and its curve shape."""

    def __init__(self, scen: Scenario):
        self.scen = scen
        self.start = tuple(float(p.start) for p in PARAMS)
        self.a = []
        for p in PARAMS:
            d = p.coord(p.start) - p.coord(p.opt)
            self.a.append(p.share * scen.excess / d**2 if p.share else p.curv * scen.excess)
        self.c = INTERACTION * math.sqrt(self.a[0] * self.a[4])  # MATRIX_LR x DEPTH
        self.k = scen.excess / self._bowl(self.start)  # the start is exactly `excess` above the optimum
        self._cache: dict[tuple, float] = {}

    def _bowl(self, cfg: tuple) -> float:
        d = [p.coord(x) - p.coord(p.opt) for p, x in zip(PARAMS, cfg)]
        return sum(a * di * di for a, di in zip(self.a, d)) + 2 * self.c * d[0] * d[4]

    def truth(self, cfg: tuple) -> float:
        v = self._cache.get(cfg)
        if v is None:
            v = self._cache[cfg] = self.scen.optimum + self.k * self._bowl(cfg)
        return v

    def shape(self, cfg: tuple) -> float:
        return sum(p.shape * (p.coord(x) - p.coord(p.start)) for p, x in zip(PARAMS, cfg))


def measure(land: Landscape, cfg: tuple, rep: int, seed: int) -> tuple[float, list[Progress]]:
    """The rep-th run of cfg: its val_bpb and its loss curve (the same draw in every policy)."""
    s = land.scen
    rng = random.Random(f"{seed}|{s.name}|{cfg}|{rep}")
    z = rng.gauss(0, 1)
    val = land.truth(cfg) + s.sigma * z
    eta = s.speed_noise * (s.speed_corr * z + math.sqrt(1 - s.speed_corr**2) * rng.gauss(0, 1))
    shape = 0.1 * s.decay * land.shape(cfg)
    curve = []
    for j in range(1, s.points + 1):
        f = j / s.points * 0.985  # the last progress line is printed just before the budget runs out
        loss = val + s.decay * (1 - f) ** 2 * (1 + eta) + shape * (1 - f) + s.jitter * s.sigma * rng.gauss(0, 1)
        curve.append(Progress(j, f, loss))
    return val, curve


def propose(best: tuple, tried: set, rng: random.Random) -> tuple | None:
    """One untried single-constant move from the best (as mutate); when every one was tried, two at once."""
    singles = [(i, v) for i in range(len(PARAMS)) for v in dict.fromkeys(PARAMS[i].moves(best[i])) if v != best[i]]
    fresh = [(i, v) for i, v in singles if (i, best[i], v) not in tried]
    if fresh:
        i, v = fresh[rng.randrange(len(fresh))]
        tried.add((i, best[i], v))
        return best[:i] + (v,) + best[i + 1:]
    for _ in range(200):
        (i, v), (j, w) = rng.sample(singles, 2)
        key = ((i, best[i], v), (j, best[j], w)) if i < j else ((j, best[j], w), (i, best[i], v))
        if i == j or key in tried:
            continue
        tried.add(key)
        cfg = list(best)
        cfg[i], cfg[j] = v, w
        return tuple(cfg)
    return None


@dataclass
class Outcome:
    final_true: float = 0.0
    claimed: float = 0.0  # the val_bpb the ledger holds for the final best
    keeps: int = 0
    false_keeps: int = 0
    true_keeps: int = 0
    proposals: int = 0
    confirmations: int = 0
    noise_runs: int = 0
    stopped: int = 0
    stopped_kept_would: int = 0  # early-stopped runs that the noise rule would have kept (had they finished)
    cost: float = 0.0
    effects: list = field(default_factory=list)


def run_policy(policy: str, scen: Scenario, seed: int, budget: float, z: float = 2.0, noise_runs: int | None = None,
               confirm_min_z: float = 0.0, es_k: float = early_stop.NOISE_K, es_r: float = early_stop.WARMDOWN_R,
               checkpoints=early_stop.DEFAULT_CHECKPOINTS, diff: bool = False, pool: bool = False,
               sure_z: float | None = None) -> Outcome:
    """One policy on one seed until `budget` runs' worth of GPU time is spent.

    diff: compare with the σ of the difference of the two means (decide_noise's best_runs); pool: σ pooled
    over the baseline's runs and every confirmed commit's runs (core.noise.pooled_sigma) as they arrive.
    """
    land = Landscape(scen)
    out = Outcome()
    reps: dict[tuple, int] = {}

    def run(cfg):
        r = reps.get(cfg, 0)
        reps[cfg] = r + 1
        return measure(land, cfg, r, seed)

    best = land.start
    v0, c0 = run(best)
    out.cost += 1
    use_noise = policy != "plain"
    sigma, cal = None, None
    best_curve = c0
    if use_noise:
        k = default_noise_runs(scen.profile) if noise_runs is None else noise_runs
        runs = [(v0, c0)] + [run(best) for _ in range(k)]
        out.noise_runs, out.cost = k, out.cost + k
        groups = [[v for v, _ in runs]]
        sigma = sample_sigma(groups[0])
        best_val = sum(v for v, _ in runs) / len(runs)  # every run of the baseline measures the best
        best_runs = len(runs)
        best_curve = runs[-1][1]
        if policy == "noise+es":
            cal = early_stop.calibrate([c for _, c in runs], checkpoints, k=es_k, r=es_r)
    else:
        best_val, best_runs = v0, 1
    tried: set = set()
    n = 0
    while out.cost < budget:
        cfg = propose(best, tried, random.Random(f"{seed}|proposal|{n}"))
        n += 1
        if cfg is None:
            break
        val, curve = run(cfg)
        out.proposals += 1
        if cal is not None:
            verdict = early_stop.replay(best_curve, curve, cal)
            if verdict.stop:
                out.stopped += 1
                out.cost += scen.stopped_cost(verdict.fraction)
                if land.truth(cfg) < land.truth(best) and decide_noise(val, best_val, sigma, z=z).status == "keep":
                    out.stopped_kept_would += 1
                continue
        out.cost += 1
        if use_noise:
            confirmations: list[float] = []
            opts = dict(z=z, confirm_min_z=confirm_min_z, best_runs=best_runs if diff else None, sure_z=sure_z)
            d = decide_noise(val, best_val, sigma, confirmations=confirmations, **opts)
            while d.status == "confirm":
                v2, curve = run(cfg)
                out.cost += 1
                out.confirmations += 1
                confirmations.append(v2)
                d = decide_noise(val, best_val, sigma, confirmations=confirmations, **opts)
            if pool and confirmations:
                groups.append([val, *confirmations])
                sigma = pooled_sigma(groups)[0]
            new_val = d.mean
        else:
            d = decide(val, best_val, 0, 0)
            new_val = val
        if d.status == "keep":
            effect = land.truth(cfg) - land.truth(best)
            out.keeps += 1
            out.effects.append(effect)
            if effect >= 0:
                out.false_keeps += 1
            else:
                out.true_keeps += 1
            best, best_val, best_curve, best_runs = cfg, new_val, curve, d.runs
    out.final_true = land.truth(best)
    out.claimed = best_val
    return out


@dataclass
class Summary:
    scenario: str
    policy: str
    seeds: int
    final_true: float
    final_true_se: float
    gain: float
    keeps: float
    false_keep_rate: float | None
    runs_per_true_improvement: float | None
    optimism: float  # claimed - true, mean
    proposals: float
    confirmations: float
    noise_runs: float
    stopped: float
    stopped_good: float
    cost: float

    def row(self) -> str:
        fk = "-" if self.false_keep_rate is None else f"{100 * self.false_keep_rate:.1f} %"
        rpi = "-" if self.runs_per_true_improvement is None else f"{self.runs_per_true_improvement:.1f}"
        d = 4 if self.scenario == "h100" else 3
        return (f"{self.scenario:<5} {self.policy:<9} {self.final_true:>9.{d}f}±{self.final_true_se:<7.{d}f} "
                f"{self.gain:>8.{d}f} {self.keeps:>6.1f} {fk:>9} {rpi:>8} {self.optimism:>+9.{d}f} "
                f"{self.proposals:>6.1f} {self.confirmations:>6.1f} {self.noise_runs:>5.1f} {self.stopped:>6.1f} "
                f"{self.stopped_good:>5.2f} {self.cost:>6.1f}")


HEADER = (f"{'scen':<5} {'policy':<9} {'true final':>17} {'gain':>8} {'keeps':>6} {'false-kp':>9} {'runs/imp':>8} "
          f"{'claimed-t':>9} {'props':>6} {'confs':>6} {'noise':>5} {'early':>6} {'e-good':>5} {'cost':>6}")


def summarize(scen: Scenario, policy: str, outs: list[Outcome], start_true: float) -> Summary:
    n = len(outs)
    finals = [o.final_true for o in outs]
    mean = sum(finals) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in finals) / (n - 1) / n) if n > 1 else 0.0
    keeps = sum(o.keeps for o in outs)
    true_keeps = sum(o.true_keeps for o in outs)
    return Summary(scen.name, policy, n, mean, se, start_true - mean, keeps / n,
                   sum(o.false_keeps for o in outs) / keeps if keeps else None,
                   sum(o.cost for o in outs) / true_keeps if true_keeps else None,
                   sum(o.claimed - o.final_true for o in outs) / n, sum(o.proposals for o in outs) / n,
                   sum(o.confirmations for o in outs) / n, sum(o.noise_runs for o in outs) / n,
                   sum(o.stopped for o in outs) / n, sum(o.stopped_kept_would for o in outs) / n,
                   sum(o.cost for o in outs) / n)


def simulate(scen: Scenario, policy: str, seeds: int, budget: float, **kw) -> Summary:
    outs = [run_policy(policy, scen, s, budget, **kw) for s in range(seeds)]
    return summarize(scen, policy, outs, Landscape(scen).truth(Landscape(scen).start))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--budget", type=float, default=100.0, help="GPU time per policy, in full runs (default 100)")
    ap.add_argument("--scenarios", default="h100,cpu")
    ap.add_argument("--sweep", action="store_true", help="also sweep z, noise runs, confirm_min_z and early stop")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    results = []
    print(f"{args.seeds} seeds, {args.budget:g} runs of GPU time per policy; σ per scenario: "
          + ", ".join(f"{n} {SCENARIOS[n].sigma:g}" for n in args.scenarios.split(",")))
    print(HEADER)
    for name in args.scenarios.split(","):
        scen = SCENARIOS[name]
        for policy in ("plain", "noise", "noise+es"):
            s = simulate(scen, policy, args.seeds, args.budget)
            results.append(s)
            print(s.row(), flush=True)
    if args.sweep:
        print("\nsweep (noise rule; one knob at a time, the others at their defaults):")
        print(HEADER)
        for name in args.scenarios.split(","):
            scen = SCENARIOS[name]
            variants = [("z", v, {"z": v}) for v in (1.0, 1.5, 2.5, 3.0)]
            variants += [("noise_runs", v, {"noise_runs": v}) for v in (1, 2, 3, 5)]
            variants += [("confirm_min_z", v, {"confirm_min_z": v}) for v in (0.5, 1.0)]
            variants += [("diff", 1, {"diff": True}), ("pool", 1, {"pool": True}),
                         ("z1+pool", 1, {"z": 1.0, "pool": True}), ("z1.5+pool", 1, {"z": 1.5, "pool": True})]
            for knob, v, kw in variants:
                s = simulate(scen, "noise", args.seeds, args.budget, **kw)
                s.policy = f"{knob}={v:g}"[:9]
                results.append(s)
                print(s.row(), flush=True)
            for knob, v, kw in [("es_r", v, {"es_r": v}) for v in (0.0, 0.5, 2.0)] + \
                               [("es_k", v, {"es_k": v}) for v in (2.0, 4.0)]:
                s = simulate(scen, "noise+es", args.seeds, args.budget, **kw)
                s.policy = f"{knob}={v:g}"[:9]
                results.append(s)
                print(s.row(), flush=True)
    print(f"\n({time.monotonic() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps([s.__dict__ for s in results], indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
