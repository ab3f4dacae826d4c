"""Device check of prepare.py (run by hand, not by pytest): prep time, loader throughput, bf16 causality check.

Usage: python tests/prepare_gpu_check.py [--small]   (--small: CPU-sized numbers for a dry run)
Prints one `check: ...` line per measurement; exits 1 if a check fails.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_helpers import load_prepare, make_workspace  # noqa: E402


class _Patch:
    """Just enough of pytest's monkeypatch for load_prepare."""

    def setitem(self, mapping, key, value):
        mapping[key] = value


def main() -> int:
    small = "--small" in sys.argv
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() and not small else "cpu"
    root = Path(tempfile.mkdtemp(prefix="prep-gpu-check-"))
    os.environ["AUTORESEARCH_CACHE"] = str(root / "cache")
    T = 256 if small else 2048
    B = 8 if small else 128
    ws = make_workspace(root / "ws", MAX_SEQ_LEN=T, VOCAB_SIZE=8192, EVAL_TOKENS=4 * 8 * T, DATASET="pystdlib")
    failed = False

    # 1. offline corpus + 8192-token tokenizer, as a user would run it
    t0 = time.time()
    proc = subprocess.run([sys.executable, "prepare.py", "--dataset", "pystdlib"], cwd=ws, capture_output=True,
                          text=True)
    print(f"check: pystdlib prepare.py wall {time.time() - t0:.1f} s (rc {proc.returncode}, {os.cpu_count()} cpus)")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr)

    # 2. a climbmix-like corpus (documents of ~700 tokens on average) and the loader at full batch size
    prep = load_prepare(ws, _Patch())
    texts = []
    rng = random.Random(0)
    for f in sorted(prep.split_files("train", "pystdlib")):
        for text in pq.read_table(f).column("text").to_pylist():
            i = 0
            while i < len(text):
                n = int(min(30000, max(100, rng.lognormvariate(7.6, 0.9))))
                texts.append(text[i:i + n])
                i += n
    folder = root / "synth"
    folder.mkdir()
    pq.write_table(pa.table({"text": texts[: len(texts) * 9 // 10]}), folder / "a.parquet", row_group_size=1024)
    pq.write_table(pa.table({"text": texts[len(texts) * 9 // 10:]}), folder / "b.parquet", row_group_size=1024)
    prep.prepare(str(folder), log=lambda m: None)
    prep.DATASET = str(folder)
    tok = prep.Tokenizer.from_directory()
    loader = prep.make_dataloader(tok, B, T, "train", device=device)
    x, y, _ = next(loader)
    for _ in range(3):
        next(loader)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    n = 20
    for _ in range(n):
        x, y, epoch = next(loader)
    if device == "cuda":
        torch.cuda.synchronize()
    rate = n * B * T / (time.time() - t0)
    loader.close()
    print(f"check: dataloader {rate / 1e6:.2f} M tok/s at B={B} T={T} on {device} (target 1.7), epoch {epoch}, "
          f"{len(texts)} docs")

    # 3. evaluate_bpb on a small GPT-like model: bf16 autocast + torch.compile must pass the causality
    #    check; the same model without the causal mask must be refused.
    class Block(nn.Module):
        def __init__(self, d, causal):
            super().__init__()
            self.causal = causal
            self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
            self.fc, self.out = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

        def forward(self, x):
            Bx, Tx, d = x.shape
            q, k, v = self.qkv(F.rms_norm(x, (d,))).view(Bx, Tx, 3, 4, d // 4).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            x = x + self.proj(a.transpose(1, 2).reshape(Bx, Tx, d))
            return x + self.out(F.relu(self.fc(F.rms_norm(x, (d,)))).square())

    class GPT(nn.Module):
        def __init__(self, vocab, d=256, layers=4, causal=True):
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            self.blocks = nn.ModuleList(Block(d, causal) for _ in range(layers))
            self.head = nn.Linear(d, vocab, bias=False)

        def forward(self, idx):
            x = self.emb(idx)
            for b in self.blocks:
                x = b(x)
            logits = self.head(F.rms_norm(x, (x.shape[-1],))).float()
            return 15 * torch.tanh(logits / 15)

    prep.DATASET = "pystdlib"
    tok = prep.Tokenizer.from_directory()
    for name, causal, compiled in (("causal+compile", True, True), ("causal eager", True, False),
                                   ("non-causal", False, False)):
        torch.manual_seed(0)
        model = GPT(tok.get_vocab_size(), causal=causal).to(device)
        run = torch.compile(model) if compiled and device == "cuda" else model
        prep._evaluated = False
        t0 = time.time()
        try:
            bpb = prep.evaluate_bpb(run, tok, 8)
            outcome = f"val_bpb {bpb:.4f}"
            ok = causal
        except prep.PrepareError as e:
            outcome = f"refused: {e}"
            ok = not causal
        failed |= not ok
        print(f"check: {name}: {'OK' if ok else 'FAIL'} {outcome} ({time.time() - t0:.1f} s, "
              f"peak {prep.peak_memory_mb(device):.0f} MB)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
