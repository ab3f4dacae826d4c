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
import functools
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field, replace
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
        return _moves(self, x)


@functools.lru_cache(maxsize=None)
def _moves(p: Param, x: float) -> list[float]:
    vals = [x * f for f in p.factors] if p.kind == "mul" else [x + s for s in p.steps]
    return list(dict.fromkeys(v for v in (round(min(max(v, p.lo), p.hi), 10) for v in vals) if v != x))


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
    # "harsh" landscapes: every step of the parameters that start at their optimum or have no effect costs
    # harm_sigma·σ (linear in the step): most moves are then slightly harmful, and keeping noise hurts
    harm_sigma: float = 0.0

    def stopped_cost(self, fraction: float) -> float:
        """An early-stopped run's time in full runs: start-up and the part of the budget it trained."""
        return (self.startup_s + fraction * self.budget_s) / (self.startup_s + self.budget_s + self.eval_s)


SCENARIOS = {
    "h100": Scenario("h100", "h100", sigma=0.0005, excess=0.028, optimum=0.970, decay=0.45, speed_noise=0.02,
                     speed_corr=0.3, jitter=0.5, points=40, startup_s=15, budget_s=300, eval_s=10),
    "cpu": Scenario("cpu", "cpu", sigma=0.1, excess=0.4, optimum=1.66, decay=1.5, speed_noise=0.15,
                    speed_corr=0.7, jitter=0.5, points=20, startup_s=8, budget_s=40, eval_s=5),
}
SCENARIOS["h100-harsh"] = replace(SCENARIOS["h100"], name="h100-harsh", harm_sigma=0.5)
SCENARIOS["cpu-harsh"] = replace(SCENARIOS["cpu"], name="cpu-harsh", harm_sigma=0.5)


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

    def _harm(self, cfg: tuple) -> float:
        steps = sum(abs(p.coord(x) - p.coord(p.start)) for p, x in zip(PARAMS, cfg) if p.share == 0)
        return self.scen.harm_sigma * self.scen.sigma * steps

    def truth(self, cfg: tuple) -> float:
        v = self._cache.get(cfg)
        if v is None:
            v = self._cache[cfg] = self.scen.optimum + self.k * self._bowl(cfg) + self._harm(cfg)
        return v

    def shape(self, cfg: tuple) -> float:
        return sum(p.shape * (p.coord(x) - p.coord(p.start)) for p, x in zip(PARAMS, cfg))


def measure(land: Landscape, cfg: tuple, rep: int, seed: int, with_curve: bool = True):
    """The rep-th run of cfg: its val_bpb and its loss curve (the same draw in every policy; the val_bpb is the
    first draw, so it does not depend on whether the curve is made)."""
    s = land.scen
    rng = random.Random(f"{seed}|{s.name}|{cfg}|{rep}")
    z = rng.gauss(0, 1)
    val = land.truth(cfg) + s.sigma * z
    if not with_curve:
        return val, []
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
    singles = [(i, v) for i in range(len(PARAMS)) for v in PARAMS[i].moves(best[i])]
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
               sure_z: float | None = None, fresh_ref: bool = False) -> Outcome:
    """One policy on one seed until `budget` runs' worth of GPU time is spent.

    policy: plain | noise | noise-c ("confirm every win": sure_z = inf and pooled σ) and either noise policy
    with "+es" (early stop).
    diff: compare with the σ of the difference of the two means (decide_noise's best_runs); pool: σ pooled
    over the baseline's runs and every confirmed commit's runs (core.noise.pooled_sigma) as they arrive;
    fresh_ref: after a confirmed keep, the best's value is the mean of its confirmation runs only (the first
    run was selected for being low: including it makes the reference optimistic).
    """
    es = policy.endswith("+es")
    base = policy.removesuffix("+es")
    if base not in ("plain", "noise", "noise-c"):
        raise ValueError(f"unknown policy {policy!r}")
    if base == "noise-c":
        sure_z, pool = math.inf if sure_z is None else sure_z, True
    land = Landscape(scen)
    out = Outcome()
    reps: dict[tuple, int] = {}

    def run(cfg):
        r = reps.get(cfg, 0)
        reps[cfg] = r + 1
        return measure(land, cfg, r, seed, with_curve=es)

    best = land.start
    v0, c0 = run(best)
    out.cost += 1
    use_noise = base != "plain"
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
        if es:
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
            if fresh_ref and confirmations:
                new_val = sum(confirmations) / len(confirmations)
                d_runs = len(confirmations)
            else:
                d_runs = d.runs
        else:
            d = decide(val, best_val, 0, 0)
            new_val, d_runs = val, 1
        if d.status == "keep":
            effect = land.truth(cfg) - land.truth(best)
            out.keeps += 1
            out.effects.append(effect)
            if effect >= 0:
                out.false_keeps += 1
            else:
                out.true_keeps += 1
            best, best_val, best_curve, best_runs = cfg, new_val, curve, d_runs
    out.final_true = land.truth(best)
    out.claimed = best_val
    return out


@dataclass
class Summary:
    scenario: str
    policy: str
    seeds: int
    final_true: float  # mean over seeds of the true val_bpb of the final best
    vs_plain: float | None  # mean over seeds of (final true - plain's final true), same seeds
    vs_plain_se: float | None
    gain: float
    keeps: float
    false_keep_rate: float | None
    false_keep_harm: float | None  # mean true effect of the false keeps (>= 0)
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
        d = 4 if self.scenario.startswith("h100") else 3
        vp = "-" if self.vs_plain is None else f"{self.vs_plain:+.{d}f}±{self.vs_plain_se:.{d}f}"
        harm = "-" if self.false_keep_harm is None else f"{self.false_keep_harm:.{d}f}"
        return (f"{self.scenario:<10} {self.policy:<10} {self.final_true:>9.{d}f} {vp:>16} {self.gain:>7.{d}f} "
                f"{self.keeps:>5.1f} {fk:>8} {harm:>7} {rpi:>7} {self.optimism:>+8.{d}f} {self.proposals:>5.1f} "
                f"{self.confirmations:>5.1f} {self.noise_runs:>5.1f} {self.stopped:>5.1f} {self.stopped_good:>5.2f} "
                f"{self.cost:>5.1f}")


HEADER = (f"{'scenario':<10} {'policy':<10} {'true final':>9} {'vs plain':>16} {'gain':>7} {'keeps':>5} {'false-kp':>8} "
          f"{'fk harm':>7} {'runs/ti':>7} {'claimed':>8} {'props':>5} {'confs':>5} {'noise':>5} {'early':>5} "
          f"{'e-ok':>5} {'cost':>5}")
LEGEND = """\
true final: true val_bpb of the final best (mean over seeds); vs plain: paired difference with plain on the same
seeds (negative = better than plain) ± its standard error; gain: true improvement over the baseline; keeps: kept
changes per seed; false-kp: kept changes whose true effect is >= 0 (pooled over seeds); fk harm: their mean true
effect; runs/ti: GPU time (in full runs) per kept change that truly improved; claimed: the val_bpb the ledger holds
for the final best minus its truth; props, confs, noise, early: proposals trained (fully or partly), confirmation
runs, noise runs, early-stopped runs per seed; e-ok: early-stopped runs per seed that were truly better than the
best and would have been kept; cost: GPU time spent, in full runs."""


def summarize(scen: Scenario, policy: str, outs: list[Outcome], start_true: float,
              plain: list[Outcome] | None = None) -> Summary:
    n = len(outs)
    finals = [o.final_true for o in outs]
    mean = sum(finals) / n
    vs, vs_se = None, None
    if plain is not None:
        diffs = [o.final_true - p.final_true for o, p in zip(outs, plain)]
        vs = sum(diffs) / n
        vs_se = math.sqrt(sum((x - vs) ** 2 for x in diffs) / (n - 1) / n) if n > 1 else 0.0
    keeps = sum(o.keeps for o in outs)
    true_keeps = sum(o.true_keeps for o in outs)
    false_effects = [e for o in outs for e in o.effects if e >= 0]
    return Summary(scen.name, policy, n, mean, vs, vs_se, start_true - mean, keeps / n,
                   len(false_effects) / keeps if keeps else None,
                   sum(false_effects) / len(false_effects) if false_effects else None,
                   sum(o.cost for o in outs) / true_keeps if true_keeps else None,
                   sum(o.claimed - o.final_true for o in outs) / n, sum(o.proposals for o in outs) / n,
                   sum(o.confirmations for o in outs) / n, sum(o.noise_runs for o in outs) / n,
                   sum(o.stopped for o in outs) / n, sum(o.stopped_kept_would for o in outs) / n,
                   sum(o.cost for o in outs) / n)


def simulate(scen: Scenario, policy: str, seeds: int, budget: float, plain: list[Outcome] | None = None,
             **kw) -> tuple[Summary, list[Outcome]]:
    outs = [run_policy(policy, scen, s, budget, **kw) for s in range(seeds)]
    land = Landscape(scen)
    return summarize(scen, policy, outs, land.truth(land.start), plain), outs


POLICIES = ("plain", "noise", "noise+es", "noise-c", "noise-c+es")
SWEEP = (  # (label, policy, options): one knob at a time
    [(f"z={z:g}", "noise", {"z": z}) for z in (1.0, 1.5, 2.5, 3.0)]
    + [(f"c z={z:g}", "noise-c", {"z": z}) for z in (0.5, 1.0, 1.5, 2.5, 3.0)]
    + [(f"c K={k}", "noise-c", {"noise_runs": k}) for k in (1, 2, 3, 5, 8)]
    + [("c fresh", "noise-c", {"fresh_ref": True}), ("diff", "noise", {"diff": True}),
       ("c sure4", "noise-c", {"sure_z": 4.0}), ("minz 1", "noise", {"confirm_min_z": 1.0})]
    + [(f"c+es r={r:g}", "noise-c+es", {"es_r": r}) for r in (0.0, 0.5, 2.0)]
    + [(f"c+es k={k:g}", "noise-c+es", {"es_k": k}) for k in (2.0, 4.0)]
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--budget", type=float, default=100.0, help="GPU time per policy, in full runs (default 100)")
    ap.add_argument("--scenarios", default="h100,cpu")
    ap.add_argument("--sweep", action="store_true", help="also sweep z, noise runs, the confirmation and early stop")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    results = []
    names = args.scenarios.split(",")
    print(f"{args.seeds} seeds, {args.budget:g} runs of GPU time per policy; σ: "
          + ", ".join(f"{n} {SCENARIOS[n].sigma:g}" for n in names)
          + "; noise runs per profile: " + ", ".join(f"{n} {default_noise_runs(SCENARIOS[n].profile)}"
                                                       for n in names))
    print("noise: z 2, a borderline win re-run once; noise-c: every win re-run once before it is kept, σ pooled "
          "with the confirmation pairs; +es: early stop (core.early_stop defaults)\n")
    print(HEADER)
    plains = {}
    for name in names:
        scen = SCENARIOS[name]
        for policy in POLICIES:
            s, outs = simulate(scen, policy, args.seeds, args.budget, plains.get(name))
            if policy == "plain":
                plains[name] = outs
            results.append(s)
            print(s.row(), flush=True)
    if args.sweep:
        print("\nsweep (one knob at a time; c = noise-c):")
        print(HEADER)
        for name in names:
            for label, policy, kw in SWEEP:
                s, _ = simulate(SCENARIOS[name], policy, args.seeds, args.budget, plains[name], **kw)
                s.policy = label
                results.append(s)
                print(s.row(), flush=True)
    print("\n" + LEGEND)
    print(f"({time.monotonic() - t0:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps([s.__dict__ for s in results], indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
