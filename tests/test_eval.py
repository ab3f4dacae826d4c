"""prepare.evaluate_bpb: hand-checked value, causality check, once per process, the trusted metrics file."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from prepare_helpers import load_prepare, make_workspace, prepared_cache


class Bigram(nn.Module):
    """Causal by construction: the logits at a position depend on that position's token only."""

    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, vocab)
        self.modes: list[bool] = []

    def forward(self, idx):
        self.modes.append(self.training)
        return self.emb(idx)


class MeanMixer(Bigram):
    """Not causal: every position also sees the mean embedding of the whole sequence."""

    def forward(self, idx):
        e = self.emb(idx)
        return e + 4.0 * e.mean(dim=1, keepdim=True)


class Peek(Bigram):
    """Not causal in a sneaky small way: position t adds 1 % of token t+1's logits."""

    def forward(self, idx):
        e = self.emb(idx)
        nxt = torch.cat([e[:, 1:], torch.zeros_like(e[:, :1])], dim=1)
        return e + 0.01 * nxt


class AcrossBatch(Bigram):
    """Not causal through the batch: every row sees the last token of the last row."""

    def forward(self, idx):
        e = self.emb(idx)
        return e + 0.1 * e[-1:, -1:]


class Noisy(Bigram):
    """Causal, but its kernels are not bit-reproducible (like atomics-based GPU reductions)."""

    def forward(self, idx):
        e = self.emb(idx)
        return e + 1e-3 * torch.randn_like(e)


@pytest.fixture
def prep(tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(prepared_cache(tmp_path_factory)))
    return load_prepare(make_workspace(tmp_path / "ws"), monkeypatch)


def _hand_bpb(prep, model, tok, batch_size: int) -> float:
    """The metric from its definition, in float64, bytes taken from decoding each token."""
    T = prep.MAX_SEQ_LEN
    steps = max(1, prep.EVAL_TOKENS // (batch_size * T))
    specials = {tok.enc.encode_single_token(s) for s in tok.enc.special_tokens_set}
    loader = prep.make_dataloader(tok, batch_size, T, "val")
    nats = 0.0
    nbytes = 0
    try:
        with torch.no_grad():
            for _ in range(steps):
                x, y, _ = next(loader)
                logp = torch.log_softmax(model(x).double(), dim=-1)
                for b in range(batch_size):
                    for t in range(T):
                        target = int(y[b, t])
                        if target in specials:
                            continue
                        nats -= float(logp[b, t, target])
                        nbytes += len(tok.enc.decode_single_token_bytes(target))
    finally:
        loader.close()
    return nats / (math.log(2) * nbytes)


def test_evaluate_bpb_matches_hand_computation(prep):
    tok = prep.Tokenizer.from_directory()
    model = Bigram(tok.get_vocab_size())
    expected = _hand_bpb(prep, model, tok, batch_size=4)
    model.train()
    model.modes.clear()
    got = prep.evaluate_bpb(model, tok, 4)
    assert got == pytest.approx(expected, rel=1e-5)
    assert 3.0 < got < 30.0  # an untrained model: several bits per byte
    assert model.training  # train mode restored ...
    assert model.modes and not any(model.modes)  # ... and every forward ran in eval mode
    # steps = EVAL_TOKENS // (4 * 32) = 3, plus two forwards for the causality check (noise, changed suffix)
    assert len(model.modes) == 5


def test_trained_model_scores_better(prep, monkeypatch):
    """A bigram table fitted on the training split must beat the random one (the metric tracks quality)."""
    monkeypatch.setattr(prep, "DOC_BUFFER", 64)
    tok = prep.Tokenizer.from_directory()
    V = tok.get_vocab_size()
    counts = torch.ones(V, V)
    loader = prep.make_dataloader(tok, 16, 32, "train")
    try:
        for _ in range(20):
            x, y, _ = next(loader)
            counts.index_put_((x.flatten(), y.flatten()), torch.ones(x.numel()), accumulate=True)
    finally:
        loader.close()
    model = Bigram(V)
    untrained = _hand_bpb(prep, model, tok, batch_size=4)
    with torch.no_grad():
        model.emb.weight.copy_(torch.log(counts / counts.sum(dim=1, keepdim=True)))
    assert prep.evaluate_bpb(model, tok, 4) < untrained - 1.0


@pytest.mark.parametrize("cls", [MeanMixer, Peek, AcrossBatch])
def test_non_causal_model_is_refused(prep, tmp_path, monkeypatch, cls):
    metrics = tmp_path / "metrics.json"
    monkeypatch.setattr(prep, "_METRICS_FILE", str(metrics))
    tok = prep.Tokenizer.from_directory()
    with pytest.raises(prep.PrepareError, match="the model is not causal: logits before position"):
        prep.evaluate_bpb(cls(tok.get_vocab_size()), tok, 4)
    written = json.loads(metrics.read_text())
    assert "val_bpb" not in written and "not causal" in written["error"]


def test_causal_model_with_kernel_noise_is_accepted(prep):
    tok = prep.Tokenizer.from_directory()
    assert 3.0 < prep.evaluate_bpb(Noisy(tok.get_vocab_size()), tok, 4) < 30.0


def test_evaluate_only_once_and_metrics_file(prep, tmp_path, monkeypatch):
    metrics = tmp_path / "m" / "metrics.json"
    metrics.parent.mkdir()
    monkeypatch.setattr(prep, "_METRICS_FILE", str(metrics))
    tok = prep.Tokenizer.from_directory()
    model = Bigram(tok.get_vocab_size())
    bpb = prep.evaluate_bpb(model, tok, 2)
    data = json.loads(metrics.read_text())
    assert data["val_bpb"] == bpb
    assert data["device"] == "cpu" and data["dataset"] == "pystdlib" and data["vocab_size"] == 512
    assert data["eval_tokens"] == prep.EVAL_TOKENS and data["max_seq_len"] == 32
    assert data["peak_vram_mb"] > 10  # peak RSS of this process on CPU
    with pytest.raises(prep.PrepareError, match="only once per process"):
        prep.evaluate_bpb(model, tok, 2)
    merged = prep.finish_metrics(val_bpb=0.1, peak_vram_mb=1.0, device="cuda", training_seconds=12.5,
                                 num_steps=7, mfu_percent=torch.tensor(3.25), depth=2)
    data = json.loads(metrics.read_text())
    assert data == merged
    assert data["val_bpb"] == bpb and data["peak_vram_mb"] > 10 and data["device"] == "cpu"
    assert data["training_seconds"] == 12.5 and data["num_steps"] == 7 and data["mfu_percent"] == 3.25
    assert [p.name for p in metrics.parent.iterdir()] == ["metrics.json"]  # no temp files left


def test_bad_model_output_is_one_sentence(prep):
    tok = prep.Tokenizer.from_directory()

    class ReturnsLoss(Bigram):
        def forward(self, idx):
            return self.emb(idx), torch.tensor(0.0)

    with pytest.raises(prep.PrepareError, match=r"model\(x\) must return logits of shape \[B, T, V\]"):
        prep.evaluate_bpb(ReturnsLoss(tok.get_vocab_size()), tok, 2)


def test_peak_memory_mb_cpu(prep):
    assert prep.peak_memory_mb("cpu") > 10


TRAIN_LIKE = '''
"""A train.py-like script: evaluates honestly, then tries to fake its numbers."""
import os, subprocess, sys
import torch
import torch.nn as nn
import prepare
from prepare import MAX_SEQ_LEN, VOCAB_SIZE, Tokenizer, evaluate_bpb, finish_metrics

print("env:", os.environ.get("AUTORESEARCH_METRICS_FILE"))
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('AUTORESEARCH_METRICS_FILE'))"],
                       capture_output=True, text=True)
print("child env:", child.stdout.strip())

class Bigram(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, vocab)
    def forward(self, idx):
        return self.emb(idx)

tok = Tokenizer.from_directory()
model = Bigram(tok.get_vocab_size())
bpb = evaluate_bpb(model, tok, 2)
print(f"measured: {bpb!r}")
try:
    evaluate_bpb(model, tok, 2)
except prepare.PrepareError as e:
    print("second call refused:", e)
finish_metrics(val_bpb=0.1, peak_vram_mb=1.0, training_seconds=1.5, total_seconds=2.0, num_steps=3,
               num_params_M=0.26, depth=1)
print("---")
print("val_bpb:          0.100000")
print("peak_vram_mb:     1.0")
'''


def test_train_like_script_cannot_fake_metrics(tmp_path, tmp_path_factory):
    ws = make_workspace(tmp_path / "ws")
    (ws / "train.py").write_text(textwrap.dedent(TRAIN_LIKE))
    metrics = tmp_path / "exp" / "metrics.json"
    metrics.parent.mkdir()
    env = {**os.environ, "AUTORESEARCH_CACHE": str(prepared_cache(tmp_path_factory)),
           "AUTORESEARCH_METRICS_FILE": str(metrics)}
    proc = subprocess.run([sys.executable, "train.py"], cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "env: None" in out and "child env: None" in out
    assert "second call refused: evaluate_bpb may run only once per process" in out
    assert "val_bpb:          0.100000" in out
    measured = float(out.split("measured: ")[1].splitlines()[0])
    data = json.loads(metrics.read_text())
    assert data["val_bpb"] == measured and measured > 1.0
    assert data["peak_vram_mb"] > 10 and data["device"] == "cpu" and data["dataset"] == "pystdlib"
    assert data["num_steps"] == 3 and data["training_seconds"] == 1.5 and data["depth"] == 1
