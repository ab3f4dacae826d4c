"""The noise floor: σ with Bessel's correction, the stored record, when to re-measure, run means."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from core import noise
from core.noise import NoiseFloor, combine_runs, measure, needs_remeasure, pooled_sigma, remeasure_reason


def test_sigma_is_the_sample_standard_deviation():
    assert noise.sample_sigma([1.0, 3.0]) == pytest.approx(math.sqrt(2.0))  # n - 1 = 1: not the population's 1.0
    vals = [0.9981, 0.9975, 0.9990, 0.9979]
    assert noise.sample_sigma(vals) == pytest.approx(statistics.stdev(vals), rel=1e-12)
    assert noise.sample_sigma([2.0, 2.0, 2.0]) == 0.0


@pytest.mark.parametrize("bad", [[], [1.0], [1.0, float("nan")], [1.0, float("inf")], [1.0, True], [1.0, "2"]])
def test_sigma_refuses_too_few_or_non_finite_runs(bad):
    with pytest.raises(ValueError):
        noise.sample_sigma(bad)


def test_pooled_sigma_adds_the_degrees_of_freedom_of_every_group():
    baseline = [1.0, 1.2, 1.1]  # 2 dof, squared deviations 0.02
    pair = [2.0, 2.2]  # 1 dof, squared deviations 0.02
    sigma, dof = pooled_sigma([baseline, pair, [5.0]])  # a single run adds nothing
    assert dof == 3
    assert sigma == pytest.approx(math.sqrt(0.04 / 3))
    assert pooled_sigma([[1.0], [2.0]]) is None


def test_combine_runs_uses_the_floor_sigma_for_the_standard_error():
    m = combine_runs([0.998, 0.996], sigma=0.001)
    assert m.mean == pytest.approx(0.997) and m.n == 2
    assert m.stderr == pytest.approx(0.001 / math.sqrt(2))
    own = combine_runs([1.0, 3.0])
    assert own.stderr == pytest.approx(math.sqrt(2.0) / math.sqrt(2))
    assert combine_runs([1.5]).stderr is None
    with pytest.raises(ValueError):
        combine_runs([])
    with pytest.raises(ValueError):
        combine_runs([1.0], sigma=-1)


def test_noise_floor_round_trips_through_json():
    floor = measure([0.9979, 0.9985, 0.9972], "h100", 300, "gpu NVIDIA H100 80GB HBM3", measured_at=1700000000.0,
                    experiments=("0001", "0002", "0003"), num_steps=(953, 951, 955))
    assert floor.runs == 3
    assert floor.sigma == pytest.approx(statistics.stdev([0.9979, 0.9985, 0.9972]))
    back = NoiseFloor.from_json(json.loads(json.dumps(floor.to_json())))
    assert back == floor
    assert floor.describe() == f"noise σ {noise.format_sigma(floor.sigma)} from 3 runs"
    assert floor.describe().startswith("noise σ 0.00065 from 3 runs")


@pytest.mark.parametrize("data", [
    None, [], {}, {"sigma": 0.1},
    {"sigma": 0.1, "val_bpbs": [1.0], "time_budget": 40, "hardware": "cpu", "measured_at": 0},
    {"sigma": -0.1, "val_bpbs": [1.0, 1.1], "time_budget": 40, "hardware": "cpu", "measured_at": 0},
    {"sigma": "x", "val_bpbs": [1.0, 1.1], "time_budget": 40, "hardware": "cpu", "measured_at": 0},
    {"sigma": 0.1, "val_bpbs": [1.0, "nan"], "time_budget": 40, "hardware": "cpu", "measured_at": 0},
    {"sigma": 0.1, "val_bpbs": [1.0, 1.1], "time_budget": 40, "hardware": "cpu", "measured_at": 0,
     "num_steps": ["many"]},
])
def test_a_mangled_noise_floor_is_a_value_error(data):
    with pytest.raises(ValueError):
        NoiseFloor.from_json(data)


def test_sigma_is_remeasured_when_profile_budget_or_hardware_change():
    floor = measure([2.06, 1.97, 2.15], "cpu", 40, "cpu x86_64 x2", measured_at=0)
    assert not needs_remeasure(floor, "cpu", 40, "cpu x86_64 x2")
    assert not needs_remeasure(floor, "cpu", 40.0, "cpu x86_64 x2")
    assert remeasure_reason(floor, "cpu", 20, "cpu x86_64 x2") == "the time budget changed (40 s -> 20 s)"
    assert remeasure_reason(floor, "h100", 40, "cpu x86_64 x2") == "the profile changed (cpu -> h100)"
    assert "hardware changed" in remeasure_reason(floor, "cpu", 40, "gpu NVIDIA H100 80GB HBM3")
    assert needs_remeasure(None, "cpu", 40, "cpu x86_64 x2")


def test_hardware_fingerprint_names_the_gpu_or_the_cpu():
    assert noise.hardware_fingerprint(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"]) == \
        "gpu NVIDIA H100 80GB HBM3"
    assert noise.hardware_fingerprint([]).startswith("cpu ")
    assert noise.hardware_fingerprint([]) == noise.hardware_fingerprint(None)


def test_default_noise_runs_are_defined_for_every_profile():
    from core.profiles import PROFILES

    for name in PROFILES:
        assert noise.default_noise_runs(name) >= 1
    assert noise.default_noise_runs("cpu") == noise.NOISE_RUNS["cpu"]
    assert noise.default_noise_runs("unknown-profile") == noise.DEFAULT_NOISE_RUNS
    assert noise.default_noise_runs(None) == noise.DEFAULT_NOISE_RUNS


def test_format_sigma_and_decimals_follow_the_noise():
    assert noise.format_sigma(0.0006) == "0.0006"
    assert noise.format_sigma(0.000583) == "0.00058"
    assert noise.format_sigma(0.1) == "0.1"
    assert noise.delta_decimals(0.0006) == 4
    assert noise.delta_decimals(0.1) == 2
    assert noise.delta_decimals(None) == 6


def test_a_confirmation_pair_is_pooled_into_the_floor():
    floor = measure([1.0, 1.2, 1.1], "cpu", 40, "cpu x86_64 x2", measured_at=0)
    assert floor.dof == 2 and floor.runs == 3
    pooled = floor.pooled_with([2.0, 2.2])
    assert pooled.groups == ((2.0, 2.2),)
    assert pooled.runs == 5 and pooled.dof == 3
    assert pooled.sigma == pytest.approx(math.sqrt(0.04 / 3))
    assert pooled.val_bpbs == floor.val_bpbs and pooled.mean == floor.mean  # the baseline's value is unchanged
    assert floor.pooled_with([3.0]) is floor  # one run: nothing to pool
    assert NoiseFloor.from_json(json.loads(json.dumps(pooled.to_json()))) == pooled
    assert pooled.describe() == "noise σ 0.12 from 5 runs"
    with pytest.raises(ValueError):
        floor.pooled_with([1.0, float("nan")])
