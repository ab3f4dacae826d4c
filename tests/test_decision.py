"""The keep rules: `plain` (upstream's, unchanged) and `noise` (beyond z·σ, borderline wins confirmed)."""

from __future__ import annotations

import pytest

from core.decision import CONFIRM_EVERY_WIN, confidence, decide, decide_noise

# Dyadic numbers: best - val_bpb and z·σ are exact in binary floating point, so the edges are the edges.
BEST = 1.0
SIGMA = 0.125  # z = 2 -> bar 0.25


# --- plain: upstream's rule, exactly as before ----------------------------------------------------------

def test_plain_rule_is_unchanged():
    assert decide(0.99, None, 0, 0).reason == "baseline"
    assert decide(0.99, 1.0, 1, 1).status == "keep"
    assert decide(1.0, 1.0, 1, 1).status == "discard"
    assert decide(1.0, 1.0, 1, 1).reason == "no improvement"
    assert decide(1.01, 1.0, 1, 1).reason == "worse by 0.010000"
    assert decide(0.999, 1.0, 1, 1, min_delta=0.002).status == "discard"
    assert decide(1.0004, 1.0, 1, 5).simplification
    d = decide(0.99, 1.0, 1, 1)
    assert (d.z, d.sigma, d.bar, d.runs) == (None, None, None, 1)  # the new fields stay empty under plain
    assert confidence(d) == ""


# --- noise: the band's edges ----------------------------------------------------------------------------

def test_a_gain_beyond_the_bar_is_kept_with_its_z_score():
    d = decide_noise(BEST - 0.375, BEST, SIGMA)
    assert d.status == "keep" and not d.simplification
    assert d.z == 3.0 and d.bar == 0.25 and d.mean == 0.625 and d.runs == 1
    assert d.reason == "improved by 0.38 (z 3.0, σ 0.12)"
    assert confidence(d) == "z 3.0"


def test_a_gain_exactly_on_the_bar_is_borderline_not_kept():
    d = decide_noise(BEST - 0.25, BEST, SIGMA)  # the gain must be larger than z·σ
    assert d.status == "confirm"
    assert d.z == 2.0
    assert d.reason.startswith("borderline: better by 0.25 (z 2.0, σ 0.12)")


def test_the_edge_holds_for_decimal_inputs_too():
    # 2.1 - 1.9 is 0.20000000000000018 in floating point: still on the bar, not beyond it
    assert decide_noise(1.9, 2.1, 0.1).status == "confirm"
    assert decide_noise(1.9 - 1e-9, 2.1, 0.1).status == "keep"
    assert decide_noise(0.9988, 1.0, 0.0006).status == "confirm"  # gain 0.0012 = 2 x 0.0006


def test_just_beyond_the_bar_is_kept():
    assert decide_noise(BEST - 0.25 - 2**-20, BEST, SIGMA).status == "keep"


def test_a_small_gain_is_borderline_and_confirmed_once():
    d = decide_noise(BEST - 2**-20, BEST, SIGMA)
    assert d.status == "confirm"
    # confirmed: the mean of the two runs clears the bar
    kept = decide_noise(BEST - 0.125, BEST, SIGMA, confirmations=[BEST - 0.5])
    assert kept.status == "keep" and kept.runs == 2 and kept.mean == BEST - 0.3125
    assert kept.reason == "improved by 0.31 on the mean of 2 runs (z 2.5, σ 0.12)"
    assert confidence(kept) == "z 2.5 ×2"
    # refuted: the mean is still inside the band, and there is no second confirmation
    refuted = decide_noise(BEST - 0.125, BEST, SIGMA, confirmations=[BEST - 0.125])
    assert refuted.status == "discard"
    assert refuted.reason == "within noise on the mean of 2 runs: better by 0.12 (z 1.0, σ 0.12)"
    # a mean exactly on the bar after confirmation is not kept either
    assert decide_noise(BEST - 0.125, BEST, SIGMA, confirmations=[BEST - 0.375]).status == "discard"


def test_more_confirmations_when_allowed():
    d = decide_noise(BEST - 0.125, BEST, SIGMA, confirmations=[BEST - 0.125], max_confirmations=2)
    assert d.status == "confirm" and d.runs == 2
    assert decide_noise(BEST - 0.125, BEST, SIGMA, max_confirmations=0).status == "discard"


def test_confirm_min_z_skips_hopeless_confirmations():
    assert decide_noise(BEST - 0.0625, BEST, SIGMA, confirm_min_z=0.5).status == "discard"  # z 0.5: not above
    assert decide_noise(BEST - 0.0625 - 2**-20, BEST, SIGMA, confirm_min_z=0.5).status == "confirm"


def test_no_change_and_losses_are_discarded():
    assert decide_noise(BEST, BEST, SIGMA).reason == "no change (z 0.0, σ 0.12)"
    inside = decide_noise(BEST + 0.25, BEST, SIGMA)  # worse, exactly on the band's upper edge
    assert inside.status == "discard" and inside.reason == "within noise: worse by 0.25 (z -2.0, σ 0.12)"
    outside = decide_noise(BEST + 0.25 + 2**-20, BEST, SIGMA)
    assert outside.status == "discard" and outside.reason == "worse by 0.25 (z -2.0, σ 0.12)"


def test_min_delta_raises_the_bar_above_the_band():
    d = decide_noise(BEST - 0.375, BEST, SIGMA, min_delta=0.5)  # z 3 clears z·σ, not min_delta
    assert d.bar == 0.5 and d.status == "confirm"
    refuted = decide_noise(BEST - 0.375, BEST, SIGMA, min_delta=0.5, confirmations=[BEST - 0.375])
    assert refuted.status == "discard"
    assert refuted.reason == "better by 0.38 on the mean of 2 runs (z 3.0, σ 0.12), not more than min_delta 0.5"
    assert decide_noise(BEST - 0.5 - 2**-20, BEST, SIGMA, min_delta=0.5).status == "keep"
    assert decide_noise(BEST - 0.375, BEST, SIGMA, min_delta=0.125).status == "keep"  # the band dominates


def test_simplification_is_measured_against_the_same_band():
    edge = decide_noise(BEST + 0.25, BEST, SIGMA, lines_added=1, lines_removed=4)
    assert edge.status == "keep" and edge.simplification
    assert edge.reason == "simplification (-3 lines) within 0.25 of the best (z -2.0, σ 0.12)"
    beyond = decide_noise(BEST + 0.25 + 2**-20, BEST, SIGMA, lines_added=1, lines_removed=4)
    assert beyond.status == "discard" and not beyond.simplification
    # the same lines removed as added is no simplification
    assert decide_noise(BEST + 0.125, BEST, SIGMA, lines_added=4, lines_removed=4).status == "discard"
    # a simplification inside the band is kept at once, without a confirmation
    assert decide_noise(BEST - 0.125, BEST, SIGMA, lines_added=0, lines_removed=2).status == "keep"
    # a tiny σ: the tolerance still applies
    tol = decide_noise(BEST + 0.0004, BEST, 0.0001, lines_removed=2, simplify_tolerance=0.0005)
    assert tol.status == "keep" and tol.simplification


def test_the_baseline_is_kept():
    d = decide_noise(2.06, None, 0.1)
    assert d.status == "keep" and d.reason == "baseline" and d.z is None


def test_zero_sigma_degenerates_to_min_delta():
    d = decide_noise(0.999, 1.0, 0.0)
    assert d.status == "keep" and d.z is None and d.reason == "improved by 0.001000 (σ 0)"
    assert decide_noise(1.0, 1.0, 0.0).status == "discard"


@pytest.mark.parametrize("sigma", [float("nan"), float("inf"), -0.1, None])
def test_a_bad_sigma_is_refused(sigma):
    with pytest.raises(ValueError):
        decide_noise(0.99, 1.0, sigma)


def test_realistic_reasons_read_like_a_person_wrote_them():
    assert decide_noise(0.99790, 1.0, 0.0006).reason == "improved by 0.0021 (z 3.5, σ 0.0006)"
    assert decide_noise(1.000012, 1.0, 0.0006).reason == "within noise: worse by < 0.0001 (z 0.0, σ 0.0006)"
    assert decide_noise(1.0005, 1.0, 0.0006).reason == "within noise: worse by 0.0005 (z -0.8, σ 0.0006)"


def test_every_win_can_be_confirmed_before_it_is_kept():
    d = decide_noise(BEST - 0.375, BEST, SIGMA, sure_z=CONFIRM_EVERY_WIN)
    assert d.status == "confirm"
    assert d.reason == ("promising: better by 0.38 (z 3.0, σ 0.12); re-running it with another seed before "
                        "keeping it")
    assert decide_noise(BEST - 0.375, BEST, SIGMA, sure_z=CONFIRM_EVERY_WIN,
                        confirmations=[BEST - 0.375]).status == "keep"
    assert decide_noise(BEST - 0.375, BEST, SIGMA, sure_z=CONFIRM_EVERY_WIN,
                        confirmations=[BEST - 0.125]).status == "discard"  # mean 0.25: on the bar
    # a clear win beyond sure_z is kept at once; a win on sure_z exactly is still confirmed
    assert decide_noise(BEST - 0.625, BEST, SIGMA, sure_z=4.0).status == "keep"
    on = decide_noise(BEST - 0.5, BEST, SIGMA, sure_z=4.0)
    assert on.status == "confirm" and "not beyond z 4" in on.reason
    # losers are not confirmed
    assert decide_noise(BEST + 0.5, BEST, SIGMA, sure_z=CONFIRM_EVERY_WIN).status == "discard"


def test_best_runs_compares_with_the_sigma_of_the_difference():
    # two runs each: the difference of the means has σ·sqrt(1/2 + 1/2) = σ, the same band as the plain z·σ
    d = decide_noise(BEST - 0.25, BEST, SIGMA, confirmations=[BEST - 0.25], best_runs=2)
    assert d.bar == 0.25 and d.status == "discard"  # on the bar
    # one run against a single-run best: σ·sqrt(2), so a 2.4σ gain is only z 1.7 there
    one = decide_noise(BEST - 0.3, BEST, SIGMA, best_runs=1)
    assert one.status == "confirm"
    assert one.z == pytest.approx(0.3 / (SIGMA * 2**0.5))
    assert one.bar == pytest.approx(2 * SIGMA * 2**0.5)
    assert decide_noise(BEST - 0.3, BEST, SIGMA).status == "keep"  # without best_runs: z·σ = 0.25
    with pytest.raises(ValueError):
        decide_noise(0.9, BEST, SIGMA, best_runs=0)


# --- bench/decision_sim.py: the simulation's own guarantees (a few runs, no statistics tuned to pass) -----

def load_sim(monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "decision_sim.py"
    spec = importlib.util.spec_from_file_location("decision_sim", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "decision_sim", mod)
    spec.loader.exec_module(mod)
    return mod


def test_the_simulation_draws_the_same_noise_for_the_same_run_in_every_policy(monkeypatch):
    import statistics

    ds = load_sim(monkeypatch)
    scen = ds.SCENARIOS["h100"]
    land = ds.Landscape(scen)
    assert land.truth(land.start) == pytest.approx(scen.optimum + scen.excess)
    v1, curve = ds.measure(land, land.start, 3, seed=7)
    v2, no_curve = ds.measure(land, land.start, 3, seed=7, with_curve=False)
    assert v1 == v2 and len(curve) == scen.points and no_curve == []
    assert ds.measure(land, land.start, 4, seed=7)[0] != v1
    vals = [ds.measure(land, land.start, r, seed=1, with_curve=False)[0] for r in range(2000)]
    assert statistics.stdev(vals) == pytest.approx(scen.sigma, rel=0.05)  # the noise model is N(truth, σ)


def test_a_simulated_policy_is_deterministic_and_spends_its_budget(monkeypatch):
    ds = load_sim(monkeypatch)
    scen = ds.SCENARIOS["cpu"]
    for policy in ("plain", "noise", "noise-c+es"):
        a = ds.run_policy(policy, scen, seed=3, budget=20)
        b = ds.run_policy(policy, scen, seed=3, budget=20)
        assert a == b
        assert 20 <= a.cost < 22  # the last proposal may still need its confirmation run
        assert a.keeps == a.true_keeps + a.false_keeps == len(a.effects)
    assert ds.run_policy("noise", scen, seed=3, budget=20).noise_runs == 3
    with pytest.raises(ValueError):
        ds.run_policy("bogus", scen, seed=0, budget=5)
