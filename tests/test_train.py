"""train.py: Polar Express, causality and windows of the model, the optimizer, and real CPU runs of the script."""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.setup import apply_profile

ROOT = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent", "total_tokens_M",
                "num_steps", "num_params_M", "depth")


@pytest.fixture(scope="module")
def T():
    """train.py imported as a module (its __main__ block does not run)."""
    sys.path.insert(0, str(ROOT))  # train.py imports prepare from its own folder
    spec = importlib.util.spec_from_file_location("autoresearch_train_under_test", ROOT / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def small_model(T, depth=2, pattern="L", vocab=97, seq=32, seed=0):
    torch.manual_seed(seed)
    model = T.GPT(vocab, depth, 64, 32, seq, pattern)
    model.init_weights()
    with torch.no_grad():  # move off the zero-initialised projections so every path carries signal
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# ---------------------------------------------------------------------------------------------------
# units


@pytest.mark.parametrize("shape", [(3, 64, 64), (2, 96, 32), (2, 32, 96)])
def test_polar_express_gives_near_orthogonal_matrices(T, shape):
    torch.manual_seed(0)
    n, rows, cols = shape
    r = min(rows, cols)
    U, _ = torch.linalg.qr(torch.randn(n, rows, r))
    V, _ = torch.linalg.qr(torch.randn(n, cols, r))
    s = torch.logspace(-2, 0, r).expand(n, r)  # a gradient-like spectrum spanning 100x
    G = U @ torch.diag_embed(s) @ V.mT
    X = T.polar_express(G)
    assert X.dtype == torch.bfloat16 and X.shape == G.shape  # upstream works in bf16
    X = X.float()
    sv = torch.linalg.svdvals(X)
    assert sv.min() > 0.7 and sv.max() < 1.3, sv  # all singular values pushed to ~1 (bf16, 5 steps)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    polar = U @ Vh  # the exact orthogonal polar factor
    cos = (X * polar).sum(dim=(-2, -1)) / (X.norm(dim=(-2, -1)) * polar.norm(dim=(-2, -1)))
    assert (cos > 0.97).all(), cos


def test_model_output_shapes_softcap_and_initial_loss(T):
    torch.manual_seed(0)
    model = T.GPT(97, 2, 64, 32, 32, "SSSL")
    model.init_weights()
    idx = torch.randint(0, 97, (2, 32))
    logits = model(idx)
    assert logits.shape == (2, 32, 97) and logits.dtype == torch.float32
    loss = model(idx, idx)
    assert loss.dim() == 0 and abs(loss.item() - math.log(97)) < 0.05  # tiny lm_head init: uniform predictions
    big = small_model(T)
    with torch.no_grad():
        big.lm_head.weight.mul_(1e4)
    assert big(idx).abs().max() <= T.SOFTCAP + 1e-4


@pytest.mark.parametrize("pattern", ["L", "SSSL"])
def test_model_is_causal(T, pattern):
    model = small_model(T, depth=4, pattern=pattern)
    idx = torch.randint(0, 97, (2, 32))
    t = 13
    idx2 = idx.clone()
    idx2[:, t:] = (idx2[:, t:] + 1 + torch.randint(0, 96, idx2[:, t:].shape)) % 97
    with torch.no_grad():
        a, b = model(idx), model(idx2)
    assert torch.allclose(a[:, :t], b[:, :t], atol=1e-6)
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-3  # later positions do see the change


def test_windows_follow_the_pattern_and_the_last_layer_is_full(T):
    model = T.GPT(97, 8, 64, 32, 256, "SSSL")
    assert model.windows == [128, 128, 128, 256, 128, 128, 128, 256]
    assert T.GPT(97, 3, 64, 32, 256, "S").windows == [128, 128, 256]
    assert [T.has_value_embedding(i, 8) for i in range(8)] == [False, True] * 4  # alternating, last included
    assert sorted(model.value_embeds) == ["1", "3", "5", "7"]


def test_sliding_window_attention_sees_only_the_last_window_keys(T):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    out = T.attention(q, k, v, window=4, block_mask=None)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5], v2[:, :, 5] = 10.0, 10.0  # key 5 is visible to queries 5..8 only
    out2 = T.attention(q, k2, v2, window=4, block_mask=None)
    changed = ((out - out2).abs().amax(dim=(0, 1, 3)) > 1e-6).nonzero().flatten().tolist()
    assert changed == [5, 6, 7, 8]
    full = T.attention(q, k, v, window=16, block_mask=None)
    assert not torch.allclose(full, out)


def test_optimizer_trains_the_model(T):
    model = small_model(T, depth=2, pattern="SSSL")
    opt = T.build_optimizer(model)
    kinds = sorted(g["kind"] for g in opt.param_groups)
    assert kinds.count("adamw") == 5 and kinds.count("muon") >= 3  # matrices grouped by shape
    matrices = [p for g in opt.param_groups if g["kind"] == "muon" for p in g["params"]]
    assert len(matrices) == sum(1 for _ in model.blocks.parameters())
    torch.manual_seed(1)
    idx = torch.randint(0, 97, (4, 32))
    losses = []
    for _ in range(15):
        loss = model(idx, idx.roll(-1, dims=1))
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_schedules(T):
    assert T.lr_multiplier(0.0) == 1.0 and T.lr_multiplier(0.49) == 1.0
    assert T.lr_multiplier(0.75) == pytest.approx(0.5) and T.lr_multiplier(1.0) == pytest.approx(0.0)
    assert T.muon_momentum(0) == pytest.approx(0.85) and T.muon_momentum(150) == pytest.approx(0.90)
    assert T.muon_momentum(300) == pytest.approx(0.95) and T.muon_momentum(10_000) == pytest.approx(0.95)


def test_flops_estimate_matches_the_upstream_formula(T):
    model = T.GPT(8192, 8, 512, 128, 2048, "SSSL")
    # 6 x (blocks + lm_head) + 12 x width x window per layer (6 layers at 1024, 2 at 2048)
    blocks = sum(p.numel() for p in model.blocks.parameters())
    expected = 6 * (blocks + 8192 * 512) + 12 * 512 * (6 * 1024 + 2 * 2048)
    assert model.flops_per_token(2048) == expected
    assert round(model.num_params() / 1e6, 1) == 50.3  # upstream's depth-8 model


# ---------------------------------------------------------------------------------------------------
# the real script, CPU profile, tiny budget


@pytest.fixture(scope="module")
def cpu_workspace(tmp_path_factory):
    """A workspace with the cpu profile, a 3 s budget, one evaluation batch, and prepared pystdlib data."""
    ws = tmp_path_factory.mktemp("train_ws")
    for name in ("constants.py", "prepare.py", "train.py"):
        shutil.copyfile(ROOT / name, ws / name)
    apply_profile(ws, "cpu", "pystdlib", time_budget=3)
    set_line(ws / "constants.py", "EVAL_TOKENS", "8192")  # one batch of 32 x 256
    env = dict(os.environ, AUTORESEARCH_CACHE=str(tmp_path_factory.getbasetemp() / "cache"), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "prepare.py", "--dataset", "pystdlib"], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ws, env


def set_line(path: Path, name: str, value: str) -> None:
    text, n = re.subn(rf"^{name} = [^#\n]*", f"{name} = {value} ", path.read_text(), count=1, flags=re.M)
    assert n == 1
    path.write_text(text)


def run_train(ws: Path, env: dict, metrics: Path, timeout: float):
    """train.py run by hand (no engine): hand_over evaluates in a separate process and train.py prints the summary."""
    env = {k: v for k, v in env.items() if k != "AUTORESEARCH_HANDOFF"}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "train.py"], cwd=ws, env=env, capture_output=True, timeout=timeout)
    return proc, time.time() - t0


@pytest.mark.slow
def test_cpu_profile_runs_end_to_end(cpu_workspace, tmp_path, monkeypatch):
    """The engine's path: run_training with the real trainer, the hand-over and the separate evaluator."""
    from core.training import run_training, trainer_files
    ws, env = cpu_workspace
    monkeypatch.setenv("AUTORESEARCH_CACHE", env["AUTORESEARCH_CACHE"])
    monkeypatch.setenv("AUTORESEARCH_SEED", "7")
    metrics = tmp_path / "metrics.json"
    log = tmp_path / "train.log"
    res = run_training(trainer_files(ws), tmp_path / "run", logs=[log], metrics_out=metrics, timeout=600)
    out = log.read_bytes().decode()
    assert res.ok, (res.reason, out[-3000:])
    # one progress line per step, rewritten in place with \r
    assert "\rstep 00000 (0.0%) | loss: " in out and "\rstep 00001 " in out
    assert re.search(r"\| lrm: [\d.]+ \| dt: \d+ms \| tok/sec: [\d,]+ \| mfu: n/a \| epoch: \d+ \| remaining: \d+s", out)
    lines = out.split("\n")
    start = len(lines) - 1 - lines[::-1].index("---")
    block = lines[start + 1:start + 1 + len(SUMMARY_KEYS)]
    printed = {}
    for key, line in zip(SUMMARY_KEYS, block):
        assert line.startswith(f"{key + ':':<18}"), line  # upstream's padding: values start in column 19
        printed[key] = line[18:]
    assert re.fullmatch(r"\d+\.\d{6}", printed["val_bpb"]) and re.fullmatch(r"\d+\.\d{2}", printed["mfu_percent"])
    m = json.loads(metrics.read_text())
    assert math.isfinite(m["val_bpb"]) and 0 < m["val_bpb"] < 10 and m["val_bpb"] == res.val_bpb
    assert printed["val_bpb"] == f"{m['val_bpb']:.6f}"  # the trusted number, as the evaluator measured it
    assert float(printed["peak_vram_mb"]) == pytest.approx(m["peak_vram_mb"], abs=0.1)
    assert m["device"] == "cpu" and m["dataset"] == "pystdlib" and m["depth"] == 2
    assert m["num_steps"] >= 2 and m["training_seconds"] >= 3.0 and m["total_seconds"] > m["training_seconds"]
    assert int(printed["num_steps"]) == m["num_steps"] and m["mfu_percent"] == 0.0
    assert m["total_tokens_M"] == pytest.approx(m["num_steps"] * 8192 / 1e6, abs=0.05)
    assert m["training_wall_s"] >= m["training_seconds"] and m["eval_s"] > 0
    assert m["integrity"] == res.integrity and res.integrity.startswith(("L2 (landlock ABI", "L1 (no sandbox"))


@pytest.mark.slow
def test_nan_aborts_at_once(cpu_workspace, tmp_path):
    ws, env = cpu_workspace
    bad = tmp_path / "ws"
    shutil.copytree(ws, bad)
    set_line(bad / "constants.py", "TIME_BUDGET", "600")  # a run that did not abort would take 10 minutes
    set_line(bad / "train.py", "EMBEDDING_LR", 'float("nan")')
    metrics = tmp_path / "metrics.json"
    proc, elapsed = run_train(bad, env, metrics, timeout=240)
    out = proc.stdout.decode()
    assert proc.returncode == 1, out[-2000:] + proc.stderr.decode()[-2000:]
    assert re.search(r"FAIL: training diverged at step 1 \(loss nan\); aborting\.", out)
    assert "val_bpb:" not in out and not metrics.exists()
    assert elapsed < 200
