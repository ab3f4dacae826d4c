"""Hardware profiles: the evaluation constants and train.py size knobs that fit each kind of machine."""

from __future__ import annotations

from dataclasses import dataclass

# Knob names in train.py that a profile owns; `autoresearch setup` rewrites only these lines.
TRAIN_KNOBS = ("DEPTH", "ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # constants.py
    max_seq_len: int
    eval_tokens: int
    time_budget: int
    vocab_size: int
    startup_allowance: int  # seconds beyond TIME_BUDGET the trainer may take to hand over its model
    # train.py size knobs
    depth: int
    aspect_ratio: int
    head_dim: int
    window_pattern: str
    total_batch_size: int
    device_batch_size: int

    def constants(self) -> dict:
        return {"MAX_SEQ_LEN": self.max_seq_len, "TIME_BUDGET": self.time_budget,
                "STARTUP_ALLOWANCE": self.startup_allowance, "EVAL_TOKENS": self.eval_tokens,
                "VOCAB_SIZE": self.vocab_size}

    def knobs(self) -> dict:
        return {"DEPTH": self.depth, "ASPECT_RATIO": self.aspect_ratio, "HEAD_DIM": self.head_dim,
                "WINDOW_PATTERN": self.window_pattern, "TOTAL_BATCH_SIZE": self.total_batch_size,
                "DEVICE_BATCH_SIZE": self.device_batch_size}


_ALL = (
    # Upstream's reference run: 953 steps, ~1.65 M tok/s, 45 GB peak on an H100 SXM.
    Profile("h100", "H100 80 GB (upstream default)", max_seq_len=2048, eval_tokens=40 * 524288, time_budget=300,
            vocab_size=8192, startup_allowance=120, depth=8, aspect_ratio=64, head_dim=128, window_pattern="SSSL",
            total_batch_size=2**19, device_batch_size=128),
    # A quarter of the device batch keeps activations near 12 GB; half the total batch gives a slower card
    # about as many optimizer steps as the H100 gets.
    Profile("a100-40gb", "A100 40 GB", max_seq_len=2048, eval_tokens=20 * 524288, time_budget=300,
            vocab_size=8192, startup_allowance=120, depth=8, aspect_ratio=64, head_dim=128, window_pattern="SSSL",
            total_batch_size=2**18, device_batch_size=32),
    # The seed's advice for a 24 GB card (RTX 3090/4090): MAX_SEQ_LEN 512; a shallower model for ~1/6 of H100 FLOPs.
    Profile("24gb", "24 GB cards (RTX 3090/4090, A10, L4)", max_seq_len=512, eval_tokens=10 * 524288,
            time_budget=300, vocab_size=8192, startup_allowance=120, depth=6, aspect_ratio=64, head_dim=128,
            window_pattern="SSSL",
            total_batch_size=2**18, device_batch_size=64),
    # The seed's 6 GB fork: MAX_SEQ_LEN 256 and reduced EVAL_TOKENS; full attention (a 128-token window saves little).
    Profile("6gb", "6-12 GB cards (GTX 1660 Ti, RTX 3060)", max_seq_len=256, eval_tokens=2 * 524288,
            time_budget=300, vocab_size=4096, startup_allowance=120, depth=4, aspect_ratio=64, head_dim=64,
            window_pattern="L",
            total_batch_size=2**16, device_batch_size=64),
    # Apple Silicon runs fp32 without torch.compile: a small model, full attention through plain SDPA.
    Profile("mps", "Apple Silicon (M-series, MPS)", max_seq_len=512, eval_tokens=2 * 524288, time_budget=300,
            vocab_size=4096, startup_allowance=60, depth=4, aspect_ratio=64, head_dim=64, window_pattern="L",
            total_batch_size=2**15, device_batch_size=32),
    # For trying the loop on any machine: one experiment (startup ~8 s + training + eval ~5 s) in about a minute
    # on 2 cores, under 90 s even when the cores are shared; val_bpb falls from 3.6 at init to ~1.7-2.4.
    Profile("cpu", "CPU only (a trial run on any machine)", max_seq_len=256, eval_tokens=2**15, time_budget=40,
            vocab_size=2048, startup_allowance=120, depth=2, aspect_ratio=64, head_dim=64, window_pattern="L",
            total_batch_size=2**13, device_batch_size=32),
)

PROFILES = {p.name: p for p in _ALL}
DEFAULT_PROFILE = "h100"


def get_profile(name: str) -> Profile:
    from .errors import UserError

    try:
        return PROFILES[name]
    except KeyError:
        raise UserError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}.") from None
