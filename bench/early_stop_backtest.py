"""Backtest the early-stop rule (core.early_stop) on recorded runs: which runs it would have stopped, what it saves.

Usage:
  uv run python bench/early_stop_backtest.py WORKSPACE [WORKSPACE ...] --noise-logs DIR [--k 3] [--r 1]
                                            [--checkpoints 0.4,0.6,0.8] [--sweep]

Each workspace's runs (.autoresearch/experiments/NNNN/{meta.json,train.log}, in id order) are replayed one by
one against the curve of the best run at the time (the kept experiment whose commit is the run's parent),
with the margin calibrated on the curves of repeated baseline runs: DIR's *.log (bench/noise_floor.py
--out DIR), plus any experiment whose meta.json says it is a noise run ("noise": true). Reported:
- how many runs that were eventually kept it would have stopped (target 0), and how many discards;
- the training time it would have saved (the rest of the budget after the stop, plus the evaluation);
- per run: Δval_bpb against its best, the loss gap and margin at each check point, the stop;
- --sweep: the same numbers for a grid of k (noise multiplier) and r (warm-down allowance);
- --sigma S: also what `--decide noise` (core.decision.decide_noise, z 2, every win confirmed) says about each
  recorded run against the best it was compared with: of plain's keeps, how many it keeps, re-runs, discards;
- --pairs: a harder test with more cases: every measured run of a workspace against every other one as "the
  best" (same workspace, so the same budget); a run that ended with a lower val_bpb than its "best" is an
  eventual winner and must not be stopped.
Crashes and the baseline are not replayed (a crash has no val_bpb; the baseline has no best to lose to).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import early_stop  # noqa: E402
from core.early_stop import Calibration  # noqa: E402
from core.progress import Progress, loss_at, read_curve  # noqa: E402


@dataclass
class Run:
    ws: str
    id: str
    status: str
    val_bpb: float | None
    best_val: float | None  # val_bpb of the best it was compared with
    best_id: str | None
    training_s: float
    eval_s: float
    description: str
    curve: list[Progress]
    best_curve: list[Progress]
    noise: bool = False


def load_runs(ws: Path) -> list[Run]:
    exp_dir = ws / ".autoresearch" / "experiments"
    metas = []
    for d in sorted(exp_dir.iterdir()) if exp_dir.is_dir() else []:
        try:
            metas.append((d, json.loads((d / "meta.json").read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue
    kept_by_commit: dict[str, tuple[str, float, Path]] = {}
    last_kept: tuple[str, float, Path] | None = None
    runs = []
    for d, meta in metas:
        status, val = meta.get("status"), meta.get("val_bpb")
        best = kept_by_commit.get(meta.get("parent") or "") or last_kept
        m = meta.get("metrics") or {}
        run = Run(ws.name, meta.get("id", d.name), status, val, best[1] if best else None,
                  best[0] if best else None, float(m.get("training_seconds") or 0.0),
                  float(m.get("eval_seconds") or 0.0), meta.get("description", ""), read_curve(d / "train.log"),
                  read_curve(best[2] / "train.log") if best else [], bool(meta.get("noise")))
        runs.append(run)
        if status == "keep" and isinstance(val, (int, float)):
            last_kept = (run.id, float(val), d)
            if meta.get("commit"):
                kept_by_commit[meta["commit"]] = last_kept
    return runs


def noise_curves(noise_dir: Path | None, runs: list[Run]) -> list[list[Progress]]:
    curves = [r.curve for r in runs if r.noise]
    if noise_dir is not None:
        curves += [read_curve(p) for p in sorted(noise_dir.glob("*.log"))]
    return [c for c in curves if c]


def replay_all(runs: list[Run], cal: Calibration) -> list[tuple[Run, early_stop.Verdict, list]]:
    out = []
    for r in runs:
        if r.status not in ("keep", "discard") or r.best_id is None or r.noise or r.val_bpb is None:
            continue
        mon = early_stop.Monitor(r.best_curve, cal)
        for p in r.curve:
            mon.feed(p)
            if not mon.active:
                break
        out.append((r, mon.finish(), list(mon.checked)))
    return out


def pair_runs(runs: list[Run]) -> list[Run]:
    """Every ordered pair (best, run) of measured runs with curves within one workspace, as Runs to replay."""
    measured = [r for r in runs if r.val_bpb is not None and r.curve and r.status in ("keep", "discard")]
    out = []
    for b in measured:
        for r in measured:
            if r is b or r.ws != b.ws:
                continue
            status = "keep" if r.val_bpb < b.val_bpb else "discard"  # would it have won against this best?
            out.append(Run(r.ws, f"{r.id}v{b.id}", status, r.val_bpb, b.val_bpb, b.id, r.training_s, r.eval_s,
                           r.description, r.curve, b.curve))
    return out


def summarize(results) -> dict:
    kept = [r for r, _, _ in results if r.status == "keep"]
    stopped = [(r, v) for r, v, _ in results if v.stop]
    train_total = sum(r.training_s for r, _, _ in results)
    eval_total = sum(r.eval_s for r, _, _ in results)
    saved_train = sum((1 - v.fraction) * r.training_s for r, v in stopped)
    saved_eval = sum(r.eval_s for r, _ in stopped)
    notes = [v.note for _, v, _ in results if v.note]
    return {"replayed": len(results), "kept": len(kept), "kept_stopped": sum(1 for r, _ in stopped if r.status == "keep"),
            "discards": len(results) - len(kept),
            "discards_stopped": sum(1 for r, _ in stopped if r.status == "discard"),
            "training_s": train_total, "saved_training_s": saved_train, "eval_s": eval_total,
            "saved_eval_s": saved_eval, "notes": len(notes)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspaces", type=Path, nargs="+")
    ap.add_argument("--noise-logs", type=Path, default=None, help="folder of train.logs of repeated baseline runs")
    ap.add_argument("--k", type=float, default=early_stop.NOISE_K)
    ap.add_argument("--r", type=float, default=early_stop.WARMDOWN_R)
    ap.add_argument("--checkpoints", default=",".join(str(c) for c in early_stop.DEFAULT_CHECKPOINTS))
    ap.add_argument("--sweep", action="store_true", help="also report a grid of k and r")
    ap.add_argument("--sigma", type=float, default=None, help="replay the keep decisions under --decide noise")
    ap.add_argument("--pairs", action="store_true", help="also replay every run against every other run as the best")
    ap.add_argument("--json", type=Path, default=None, help="write the per-run table and summary here")
    args = ap.parse_args(argv)
    cps = tuple(float(c) for c in args.checkpoints.split(","))
    runs = [r for ws in args.workspaces for r in load_runs(ws.resolve())]
    ncurves = noise_curves(args.noise_logs, runs)
    cal = early_stop.calibrate(ncurves, cps, k=args.k, r=args.r)
    print(f"{len(runs)} recorded runs in {len(args.workspaces)} workspace(s); calibration from {cal.runs} noise "
          f"curves: spread " + ", ".join(f"{100 * c:.0f} %: {'-' if s is None else f'{s:.4f}'}"
                                           for c, s in zip(cal.checkpoints, cal.spreads))
          + f"; margin = max({cal.k:g} x spread, {cal.r:g} x the best's remaining loss drop)")
    results = replay_all(runs, cal)
    header = f"{'run':<16} {'status':<7} {'dbpb':>8} " + " ".join(f"{'gap/margin@' + format(c, '.0%'):>19}"
                                                                      for c in cps) + "  stop"
    print(header)
    rows = []
    for r, v, checks in results:
        by_cp = {c.checkpoint: c for c in checks}
        cells = []
        for c in cps:
            ck = by_cp.get(c)
            if ck is None or ck.loss is None or ck.best_loss is None:
                cells.append(f"{'-':>19}")
            else:
                gap = ck.loss - ck.best_loss
                cells.append(f"{gap:>+9.3f}/{'-' if ck.margin is None else format(ck.margin, '.3f'):>9}")
        dbpb = (r.val_bpb - r.best_val) if r.val_bpb is not None and r.best_val is not None else None
        stop = v.reason if v.stop else (v.note or "")
        print(f"{r.ws + '/' + r.id:<16} {r.status:<7} {dbpb:>+8.4f} " + " ".join(cells) + f"  {stop}")
        rows.append({"ws": r.ws, "id": r.id, "status": r.status, "dbpb": dbpb, "description": r.description,
                     "stop": v.to_json(), "checks": [c.to_json() for c in checks],
                     "best_loss_end": r.best_curve[-1].loss if r.best_curve else None,
                     "final_gap": (r.curve[-1].loss - r.best_curve[-1].loss) if r.curve and r.best_curve else None,
                     "at": {str(c): [loss_at(r.curve, c), loss_at(r.best_curve, c)] for c in cps}})
    s = summarize(results)
    pct = 100 * s["saved_training_s"] / s["training_s"] if s["training_s"] else 0.0
    print(f"\nreplayed {s['replayed']} runs ({s['kept']} kept, {s['discards']} discarded): stopped "
          f"{s['kept_stopped']} kept runs (target 0) and {s['discards_stopped']} discards; saved "
          f"{s['saved_training_s']:.0f} s of {s['training_s']:.0f} s training ({pct:.1f} %) plus "
          f"{s['saved_eval_s']:.0f} s of evaluation; {s['notes']} runs with a note")
    if args.sigma is not None:
        from core.decision import CONFIRM_EVERY_WIN, decide_noise

        print(f"\n--decide noise on the recorded runs (σ {args.sigma:g}, z 2, every win confirmed), "
              "against the best each run was compared with:")
        tally: dict[tuple[str, str], int] = {}
        for r in runs:
            if r.status not in ("keep", "discard") or r.best_val is None or r.val_bpb is None or r.noise:
                continue
            d = decide_noise(r.val_bpb, r.best_val, args.sigma, sure_z=CONFIRM_EVERY_WIN)
            tally[(r.status, d.status)] = tally.get((r.status, d.status), 0) + 1
            print(f"  {r.ws}/{r.id} plain {r.status:<7} -> noise {d.status:<7} {d.reason}  [{r.description}]")
        for plain_status in ("keep", "discard"):
            parts = [f"{n} {ns}" for (ps, ns), n in sorted(tally.items()) if ps == plain_status]
            print(f"  plain's {plain_status}s: " + (", ".join(parts) or "none"))
    pairs_summary = None
    if args.pairs:
        pairs = pair_runs(runs)
        print(f"\npairs: {len(pairs)} (run, best) pairs; 'kept' = the run ended below that best")
        print("sweep over the pairs (eventual winners stopped / losers stopped / training saved):"
              if args.sweep else "")
        grid = [(args.k, args.r)] + ([(k, rr) for k in (2.0, 3.0, 4.0) for rr in (0.0, 0.5, 1.0, 2.0)]
                                     if args.sweep else [])
        pairs_summary = []
        for k, rr in grid:
            cal2 = Calibration(cal.checkpoints, cal.spreads, cal.runs, k, rr)
            res2 = replay_all(pairs, cal2)
            s2 = summarize(res2)
            p2 = 100 * s2["saved_training_s"] / s2["training_s"] if s2["training_s"] else 0.0
            pairs_summary.append({"k": k, "r": rr, **s2})
            print(f"  k {k:g}, r {rr:g}: stopped {s2['kept_stopped']} of {s2['kept']} eventual winners and "
                  f"{s2['discards_stopped']} of {s2['discards']} losers; saved {p2:.1f} % of training")
            if (k, rr) == (args.k, args.r) and s2["kept_stopped"]:
                for r, v, _ in res2:
                    if v.stop and r.status == "keep":
                        print(f"    winner stopped: {r.ws}/{r.id} ({r.description}; val_bpb {r.val_bpb:.4f} vs "
                              f"{r.best_val:.4f}): {v.reason}")
    sweep = []
    if args.sweep:
        print("\nsweep (kept stopped / discards stopped / training saved):")
        ks, rs = (2.0, 3.0, 4.0), (0.0, 0.25, 0.5, 1.0, 2.0)
        corner = "k \\ r"
        print(f"{corner:>6} " + " ".join(f"{r:>16g}" for r in rs))
        for k in ks:
            cells = []
            for rr in rs:
                cal2 = Calibration(cal.checkpoints, cal.spreads, cal.runs, k, rr)
                s2 = summarize(replay_all(runs, cal2))
                p2 = 100 * s2["saved_training_s"] / s2["training_s"] if s2["training_s"] else 0.0
                cells.append(f"{s2['kept_stopped']:>3}/{s2['discards_stopped']:>3}/{p2:>6.1f} %")
                sweep.append({"k": k, "r": rr, **s2})
            print(f"{k:>6g} " + " ".join(f"{c:>16}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"calibration": cal.to_json(), "summary": s, "runs": rows, "sweep": sweep,
                                         "pairs": pairs_summary},
                                        indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
