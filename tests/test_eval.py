"""The trusted metric: evaluate_bpb (hand-checked value, causality probe), the hand-over, and the evaluator's
refusal of exported models that could run anything but tensor operations."""

from __future__ import annotations

import json
import math
import os
import subprocess
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


class LateQuarterPeek(Bigram):
    """Not causal only in the last quarter of each row: a probe cut in the middle half never sees it."""

    def forward(self, idx):
        e = self.emb(idx)
        T = idx.shape[1]
        nxt = torch.cat([e[:, 1:], torch.zeros_like(e[:, :1])], dim=1)
        late = (torch.arange(T) >= (3 * T) // 4).float()[None, :, None]
        return e + 0.5 * late * nxt


class _Seeded:
    """random.SystemRandom stand-in with a fixed seed: the probe's random cuts become reproducible in a test."""

    def __init__(self, seed=0):
        import random
        self._r = random.Random(seed)

    def __call__(self):
        return self._r


@pytest.mark.parametrize("cls", [MeanMixer, Peek, AcrossBatch])
def test_non_causal_model_is_refused(prep, cls):
    tok = prep.Tokenizer.from_directory()
    with pytest.raises(prep.PrepareError, match="the model is not causal: logits before a position changed by"):
        prep.evaluate_bpb(cls(tok.get_vocab_size()), tok, 4)


def test_a_leak_confined_to_the_end_of_rows_is_caught(prep, monkeypatch):
    """The cut is drawn per row over the whole row, so a leak only late in each row is found too (a cut in
    [T/4, 3T/4] on two rows, as before, could never see this one)."""
    monkeypatch.setattr(prep.random, "SystemRandom", _Seeded(0))
    tok = prep.Tokenizer.from_directory()
    with pytest.raises(prep.PrepareError, match="not causal"):
        prep.evaluate_bpb(LateQuarterPeek(tok.get_vocab_size()), tok, 12)  # one batch of all 12 rows


def test_causal_model_with_kernel_noise_is_accepted(prep):
    tok = prep.Tokenizer.from_directory()
    assert 3.0 < prep.evaluate_bpb(Noisy(tok.get_vocab_size()), tok, 4) < 30.0


def test_the_batch_size_does_not_choose_the_rows(prep):
    """EVAL_TOKENS // T rows are scored whatever the batch (the last batch is cut), so B is no lever."""
    tok = prep.Tokenizer.from_directory()
    model = Bigram(tok.get_vocab_size())
    values = {b: prep.evaluate_bpb(model, tok, b) for b in (4, 5, 12, 64)}
    # the same rows: only the fp32 summation order differs between batchings
    assert max(values.values()) - min(values.values()) < 1e-6, values


def test_bad_model_output_is_one_sentence(prep):
    tok = prep.Tokenizer.from_directory()

    class ReturnsLoss(Bigram):
        def forward(self, idx):
            return self.emb(idx), torch.tensor(0.0)

    with pytest.raises(prep.PrepareError, match=r"model\(x\) must return logits of shape \[B, T, V\]"):
        prep.evaluate_bpb(ReturnsLoss(tok.get_vocab_size()), tok, 2)


def test_peak_memory_mb_cpu(prep):
    assert prep.peak_memory_mb("cpu") > 10


# ---------------------------------------------------------------------------------------------------
# the hand-over: export, the evaluator's validated load, and what it refuses


class Plain(nn.Module):
    def __init__(self, vocab: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, vocab)

    def forward(self, idx):
        return self.emb(idx)


class Counter(Plain):
    """Keeps state across calls (could tell the probe from the scoring): refused."""

    def __init__(self, vocab: int):
        super().__init__(vocab)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, idx):
        self.calls.add_(1)
        return self.emb(idx) + 0 * self.calls


@pytest.fixture
def exported(prep, tmp_path):
    tok = prep.Tokenizer.from_directory()
    model = Plain(tok.get_vocab_size())
    x = torch.randint(0, tok.get_vocab_size(), (4, prep.MAX_SEQ_LEN))
    path = prep.export_model(model, x, tmp_path / "model.pt2")
    return prep, tok, model, path


def test_exported_model_scores_exactly_as_the_module(exported):
    prep, tok, model, path = exported
    loaded, batch = prep.load_model(path)
    assert batch == 4
    assert prep.evaluate_bpb(loaded, tok, batch) == pytest.approx(prep.evaluate_bpb(model, tok, 4), abs=1e-9)


def test_evaluate_file_writes_the_metrics(exported, tmp_path):
    prep, tok, model, path = exported
    out = tmp_path / "m" / "metrics.json"
    info = prep.evaluate_file(path, out)
    data = json.loads(out.read_text())
    assert data == info and data["val_bpb"] == pytest.approx(prep.evaluate_bpb(model, tok, 4), abs=1e-9)
    assert data["device"] == "cpu" and data["dataset"] == "pystdlib" and data["vocab_size"] == 512
    assert data["eval_tokens"] == prep.EVAL_TOKENS and data["max_seq_len"] == 32 and data["eval_batch_size"] == 4
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temp files left


def _rewrite(path, out, edit_json=None, edit_config=None, add=None):
    """A copy of the archive with its program JSON or weights config edited, or an entry added."""
    import zipfile
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("models/model.json") and edit_json:
                data = json.dumps(edit_json(json.loads(data))).encode()
            if item.filename.endswith("model_weights_config.json") and edit_config:
                data = json.dumps(edit_config(json.loads(data))).encode()
            zout.writestr(item, data)
        if add:
            prefix = zin.namelist()[0].split("/")[0]
            zout.writestr(f"{prefix}/{add}", b"x")
    return out


def _set_first_target(target):
    def edit(program):
        program["graph_module"]["graph"]["nodes"][0]["target"] = target
        return program
    return edit


@pytest.mark.parametrize("edit, says", [
    (dict(edit_json=_set_first_target("torch.os.system")), "it calls torch.os.system"),
    (dict(edit_json=_set_first_target("torch.ops.aten.from_file.default")), "from_file"),
    (dict(edit_json=_set_first_target("#custom:evil")), "it calls #custom:evil"),
    (dict(edit_json=lambda p: dict(p, guards_code=["__import__('os').system('touch pwned')"])), "shape guards"),
    (dict(edit_config=lambda c: {"config": {k: dict(v, use_pickle=True) for k, v in c["config"].items()}}),
     "stored as a pickled object"),
    (dict(add="extra/payload.pkl"), "the archive holds 'extra/payload.pkl'"),
])
def test_archives_that_could_run_code_are_refused_before_loading(exported, tmp_path, monkeypatch, edit, says):
    prep, *_, path = exported
    monkeypatch.chdir(tmp_path)
    bad = _rewrite(path, tmp_path / "bad.pt2", **edit)
    with pytest.raises(prep.PrepareError, match="the handed-over model cannot be evaluated: ") as err:
        prep.load_model(bad)
    assert says in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_stateful_and_custom_op_models_are_refused(prep, tmp_path):
    tok = prep.Tokenizer.from_directory()
    V = tok.get_vocab_size()
    x = torch.randint(0, V, (2, prep.MAX_SEQ_LEN))
    path = prep.export_model(Counter(V), x, tmp_path / "counter.pt2")
    with pytest.raises(prep.PrepareError, match=r"forward changes a tensor in place \(aten.add_.Tensor\)"):
        prep.load_model(path)

    class Random(Plain):
        """Random logits would widen the probe's noise tolerance enough to hide a leak."""

        def forward(self, idx):
            e = self.emb(idx)
            return e + torch.randn_like(e)

    path = prep.export_model(Random(V), x, tmp_path / "random.pt2")
    with pytest.raises(prep.PrepareError, match=r"forward draws random numbers \(aten.randn"):
        prep.load_model(path)

    class EvalDropout(Plain):
        def __init__(self, vocab):
            super().__init__(vocab)
            self.drop = nn.Dropout(0.1)

        def forward(self, idx):
            return self.drop(self.emb(idx))

    path = prep.export_model(EvalDropout(V), x, tmp_path / "dropout.pt2")
    assert prep.load_model(path)[1] == 2  # dropout in eval mode is the identity: accepted

    @torch.library.custom_op("autoresearch_test::peek", mutates_args=())
    def peek(t: torch.Tensor) -> torch.Tensor:
        return t.clone()

    @peek.register_fake
    def _(t):
        return torch.empty_like(t)

    class UsesCustomOp(Plain):
        def forward(self, idx):
            return peek(self.emb(idx))

    path = prep.export_model(UsesCustomOp(V), x, tmp_path / "custom.pt2")
    with pytest.raises(prep.PrepareError, match="it calls torch.ops.autoresearch_test.peek"):
        prep.load_model(path)


def test_a_model_that_cannot_be_exported_is_one_sentence(prep, tmp_path):
    tok = prep.Tokenizer.from_directory()
    V = tok.get_vocab_size()

    class DataDependent(Plain):
        def forward(self, idx):
            if idx.sum() > 0:  # Python control flow on a tensor value
                return self.emb(idx)
            return self.emb(idx) * 2

    x = torch.randint(1, V, (2, prep.MAX_SEQ_LEN))
    with pytest.raises(prep.PrepareError, match=r"the model cannot be exported \(.*\); the evaluator runs "
                                                r"forward\(idx\) -> logits as a torch.export graph"):
        prep.export_model(DataDependent(V), x, tmp_path / "m.pt2")
    with pytest.raises(prep.PrepareError, match=r"example batch of token ids of shape \[B, 32\]"):
        prep.export_model(Plain(V), x[:, :5], tmp_path / "m.pt2")


@pytest.mark.slow
def test_the_separate_evaluator_gives_the_in_process_value_of_the_real_model(tmp_path, tmp_path_factory):
    """The honest path: the real GPT of train.py, scored in this process (the evaluation as it was) and by
    `prepare.py --evaluate` in another process on its exported graph: the same val_bpb to 1e-6."""
    import importlib.util
    import shutil
    import sys as _sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ws = make_workspace(tmp_path / "ws")
    shutil.copy(root / "train.py", ws / "train.py")
    env = {**os.environ, "AUTORESEARCH_CACHE": str(prepared_cache(tmp_path_factory))}
    code = textwrap.dedent('''
        import importlib.util, json, subprocess, sys
        import torch
        import prepare
        spec = importlib.util.spec_from_file_location("t", "train.py"); T = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(T)
        tok = prepare.Tokenizer.from_directory()
        torch.manual_seed(0)
        model = T.GPT(tok.get_vocab_size(), 2, 64, 32, prepare.MAX_SEQ_LEN, "SL")
        model.init_weights()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        before = prepare.evaluate_bpb(model, tok, 4)
        x = torch.randint(0, tok.get_vocab_size(), (4, prepare.MAX_SEQ_LEN))
        prepare.export_model(model, x, "model.pt2")
        subprocess.run([sys.executable, "prepare.py", "--evaluate", "model.pt2", "--metrics", "m.json"], check=True)
        print(json.dumps({"before": before, "after": json.load(open("m.json"))["val_bpb"]}))
    ''')
    proc = subprocess.run([_sys.executable, "-c", code], cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert abs(got["before"] - got["after"]) < 1e-6, got
    assert 3.0 < got["after"] < 30.0
    del importlib
