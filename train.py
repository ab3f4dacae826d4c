"""Pretrain a small GPT for a fixed wall-clock budget and report val_bpb (the one file the agent edits).

Usage: python train.py   (constants.py and prepare.py fix the data, the budget and the metric)
"""

import os
import time

T_START = time.time()  # total_seconds counts from here (imports included)
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import gc
import math
import sys
from collections import defaultdict
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, hand_over, make_dataloader, peak_memory_mb

# ---------------------------------------------------------------------------
# Hyperparameters (the agent's knobs; size knobs are rewritten by `autoresearch setup`)

DEPTH = 8  # transformer layers; the model's size knob
ASPECT_RATIO = 64  # width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 128  # channels per attention head
WINDOW_PATTERN = "SSSL"  # per layer, cycled: S = half-context sliding window, L = full context (last layer always L)
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step (gradient accumulation makes up the rest)
DEVICE_BATCH_SIZE = 128  # rows per forward/backward pass; lower it if memory runs out
EMBEDDING_LR = 0.6  # AdamW lr of the token embedding and the value embeddings
UNEMBEDDING_LR = 0.004  # AdamW lr of lm_head
MATRIX_LR = 0.04  # Muon lr of the 2-D matrices in the blocks
SCALAR_LR = 0.5  # AdamW lr of the per-layer x0 lambdas (resid lambdas get 1% of it)
WEIGHT_DECAY = 0.2  # cautious weight decay of Muon, decays linearly to 0 over the budget
ADAM_BETAS = (0.8, 0.95)  # AdamW betas
WARMUP_RATIO = 0.0  # share of the budget with linear lr warm-up
WARMDOWN_RATIO = 0.5  # share of the budget (at the end) with linear lr warm-down
FINAL_LR_FRAC = 0.0  # lr multiplier reached at the end of the warm-down
MUON_MOMENTUM = (0.85, 0.95, 300)  # Nesterov momentum: start, end, steps of the linear ramp
SOFTCAP = 15.0  # logits = SOFTCAP * tanh(logits / SOFTCAP)
VE_GATE_CHANNELS = 32  # input channels of the value-embedding gate
TIMING_SKIP_STEPS = 10  # first steps (torch.compile) not counted in the time budget on CUDA
SEED = 42  # torch RNG seed (the engine sets AUTORESEARCH_SEED for its noise and confirmation runs)

# ---------------------------------------------------------------------------
# Hardware: CUDA (bf16 autocast, torch.compile, flex attention) > Apple MPS > CPU (fp32, eager)

if torch.cuda.is_available():
    DEVICE_TYPE = "cuda"
elif torch.backends.mps.is_available():
    DEVICE_TYPE = "mps"
else:
    DEVICE_TYPE = "cpu"
device = torch.device(DEVICE_TYPE)
USE_CUDA = DEVICE_TYPE == "cuda"
COMPILE = USE_CUDA  # inductor on CPU costs more compile time than a short budget wins back
autocast_ctx = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if USE_CUDA else nullcontext()
if not USE_CUDA:
    TIMING_SKIP_STEPS = 1  # nothing to compile: only the first (allocating) step is excluded


def synchronize():
    if DEVICE_TYPE == "cuda":
        torch.cuda.synchronize()
    elif DEVICE_TYPE == "mps":
        torch.mps.synchronize()


# Peak dense bf16 tensor-core FLOP/s by device name, for MFU (first match wins; order matters).
PEAK_FLOPS = (
    ("gh200", 989.5e12), ("h200", 989.5e12), ("h100 nvl", 835e12), ("h100 pcie", 756e12), ("h100", 989.5e12),
    ("h800", 989.5e12), ("b200", 2250e12), ("b100", 1750e12), ("a100", 312e12), ("a800", 312e12),
    ("l40s", 362e12), ("l40", 181e12), ("l4", 121e12), ("a10g", 70e12), ("a10", 125e12),
    ("rtx 6000 ada", 364e12), ("a6000", 155e12), ("5090", 209.5e12), ("4090", 165.2e12), ("4080", 97.5e12),
    ("3090", 71e12), ("3080", 59.5e12), ("v100", 125e12), ("t4", 65e12),
)


def peak_flops():
    """bf16 peak of this device, or None where unknown (CPU, MPS, unlisted GPUs: MFU is then reported as 0)."""
    if not USE_CUDA:
        return None
    name = torch.cuda.get_device_name().lower()
    return next((f for key, f in PEAK_FLOPS if key in name), None)


# ---------------------------------------------------------------------------
# Attention kernels: flex attention (compiled, block-sparse) for sliding windows on CUDA,
# SDPA (flash) for full-causal layers, and a boolean mask on CPU/MPS.

flex_attention = create_block_mask = None
if USE_CUDA:
    from torch.nn.attention.flex_attention import create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as _flex

    # Eager flex attention materialises the full score matrix; compiled it is a fused kernel.
    _compiled_flex = torch.compile(_flex, dynamic=False)

    def flex_attention(q, k, v, block_mask):
        # torch.export traces the uncompiled operator (the evaluator compiles the exported graph itself)
        flex = _flex if torch.compiler.is_exporting() else _compiled_flex
        return flex(q, k, v, block_mask=block_mask)


def sliding_window_block_mask(T, window, device):
    """BlockMask for causal attention limited to the last `window` keys (flex attention)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


def attention(q, k, v, window, block_mask):
    """q, k, v: [B, H, T, D] -> [B, H, T, D], causal, each query sees at most `window` keys (itself included)."""
    T = q.size(2)
    if window >= T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if block_mask is not None:
        return flex_attention(q, k, v, block_mask=block_mask)
    i = torch.arange(T, device=q.device)
    allowed = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)  # [T, T], True = attend
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


# ---------------------------------------------------------------------------
# Model


def norm(x):
    """RMSNorm without learned weights over the last dimension."""
    return F.rms_norm(x, (x.size(-1),))


def has_value_embedding(layer, n_layer):
    """Value embeddings on alternating layers, the last one included."""
    return layer % 2 == (n_layer - 1) % 2


def rotary_tables(seq_len, head_dim, base=10000.0):
    """cos, sin: [1, seq_len, 1, head_dim/2] for rotary position embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # [T, D/2]
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


def apply_rotary(x, cos, sin):
    """x: [B, T, H, D]; rotates the pairs (x[:D/2], x[D/2:]) by position-dependent angles."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model, n_head, head_dim, use_ve):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.c_q = nn.Linear(d_model, n_head * head_dim, bias=False)
        self.c_k = nn.Linear(d_model, n_head * head_dim, bias=False)
        self.c_v = nn.Linear(d_model, n_head * head_dim, bias=False)
        self.c_proj = nn.Linear(n_head * head_dim, d_model, bias=False)
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, n_head, bias=False) if use_ve else None

    def forward(self, x, ve, cos, sin, window, block_mask):
        B, T, _ = x.shape  # x: [B, T, C] (already normed)
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)  # [B, T, H, D]
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        dtype = v.dtype  # bf16 under autocast; norms and the value-embedding sum below would promote to fp32
        if ve is not None:
            gate = 2 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # [B, T, H], 1.0 at init
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_head, self.head_dim)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        y = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), window, block_mask)  # [B, H, T, D]
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, d_model):
        super().__init__()
        self.c_fc = nn.Linear(d_model, 4 * d_model, bias=False)
        self.c_proj = nn.Linear(4 * d_model, d_model, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, d_model, n_head, head_dim, use_ve):
        super().__init__()
        self.attn = CausalSelfAttention(d_model, n_head, head_dim, use_ve)
        self.mlp = MLP(d_model)

    def forward(self, x, ve, cos, sin, window, block_mask):
        x = x + self.attn(norm(x), ve, cos, sin, window, block_mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, d_model, head_dim, seq_len, window_pattern):
        super().__init__()
        self.depth, self.d_model, self.head_dim = depth, d_model, head_dim
        n_head = d_model // head_dim
        self.wte = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            [Block(d_model, n_head, head_dim, has_value_embedding(i, depth)) for i in range(depth)])
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(vocab_size, d_model) for i in range(depth) if has_value_embedding(i, depth)})
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)  # untied from wte
        self.resid_lambdas = nn.Parameter(torch.ones(depth))  # x = resid * x + x0_lambda * x0 before each block
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))
        # Rotary tables cover 10x the training context so evaluation at other lengths still works.
        cos, sin = rotary_tables(10 * seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        pattern = window_pattern.upper()
        assert pattern and set(pattern) <= {"S", "L"}, f"WINDOW_PATTERN must use only S and L, got {window_pattern!r}"
        self.windows = [seq_len // 2 if pattern[i % len(pattern)] == "S" else seq_len for i in range(depth)]
        self.windows[-1] = seq_len  # the last layer always sees the full context
        self._block_masks = {}  # T -> {window: BlockMask}, built outside the compiled graph

    @torch.no_grad()
    def init_weights(self):
        s = 3**0.5 * self.d_model**-0.5  # uniform bound with the std of a 1/sqrt(d) normal
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(lin.weight, -s, s)
            nn.init.zeros_(block.attn.c_proj.weight)  # zero-init output projections: blocks start as identity
            nn.init.zeros_(block.mlp.c_proj.weight)
            if block.attn.ve_gate is not None:
                nn.init.zeros_(block.attn.ve_gate.weight)  # gate = 2*sigmoid(0) = 1
        for emb in self.value_embeds.values():
            nn.init.uniform_(emb.weight, -s, s)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, T):
        """6 x (parameters except embedding lookups) + attention (12 x heads x head_dim x window per layer)."""
        lookups = self.wte.weight.numel() + sum(e.weight.numel() for e in self.value_embeds.values())
        scalars = self.resid_lambdas.numel() + self.x0_lambdas.numel()
        attn = sum(12 * self.d_model * min(w, T) for w in self.windows)
        return 6 * (self.num_params() - lookups - scalars) + attn

    def block_masks(self, T, device):
        """{window: BlockMask} for the windowed layers at length T (CUDA only; cached per T)."""
        if create_block_mask is None:  # CPU/MPS: attention() falls back to a boolean mask
            return {}
        if T not in self._block_masks:
            self._block_masks[T] = {w: sliding_window_block_mask(T, w, device) for w in set(self.windows) if w < T}
        return self._block_masks[T]

    if COMPILE:  # BlockMasks are built eagerly, outside the graph (torch._dynamo is only imported on this path)
        block_masks = torch.compiler.disable(block_masks)

    def forward(self, idx, targets=None):
        B, T = idx.shape  # idx: [B, T] token ids
        # A cache hit traces without a graph break; the setup below fills the cache for MAX_SEQ_LEN.
        masks = self._block_masks[T] if T in self._block_masks else self.block_masks(T, idx.device)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))  # [B, T, C]
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None  # [B, T, C]
            x = block(x, ve, cos, sin, self.windows[i], masks.get(self.windows[i]))
        logits = self.lm_head(norm(x)).float()  # [B, T, V], soft-capped in fp32
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), ignore_index=-1)


# ---------------------------------------------------------------------------
# Optimizer: Muon (Polar Express + NorMuon + cautious weight decay) for block matrices, AdamW for the rest

POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def polar_express(G, steps=5):
    """G: [..., rows, cols] -> nearest semi-orthogonal matrices (singular values ~1), in bf16."""
    X = G.bfloat16()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    tall = X.size(-2) > X.size(-1)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        if tall:  # A on the smaller side: cols x cols
            A = X.mT @ X
            X = a * X + X @ (b * A + c * (A @ A))
        else:
            A = X @ X.mT
            X = a * X + (b * A + c * (A @ A)) @ X
    return X


def muon_step(grads, params, momentum_buf, second_buf, momentum, lr, wd, beta2, red_dim: int):
    """One Muon update of a stack of same-shape matrices; grads, params: [N, rows, cols]. lr etc. are 0-D tensors."""
    momentum_buf.lerp_(grads, 1 - momentum)
    g = grads.lerp_(momentum_buf, momentum)  # Nesterov
    g = polar_express(g)
    # NorMuon: per-row (or per-column) second moment of the orthogonalised update, overall norm preserved.
    v_mean = g.float().square().mean(dim=red_dim, keepdim=True)
    red_size = g.size(red_dim)
    v_norm = (v_mean.sum(dim=(-2, -1), keepdim=True) * red_size).sqrt()
    second_buf.lerp_(v_mean.to(second_buf.dtype), 1 - beta2)
    step_size = second_buf.clamp_min(1e-10).rsqrt()
    v_norm_new = ((v_mean * red_size) * step_size.square()).sum(dim=(-2, -1), keepdim=True).sqrt()
    g = g.float() * (step_size * (v_norm / v_norm_new.clamp_min(1e-10)))
    # Cautious weight decay: only where the update and the parameter agree in sign.
    mask = (g * params) >= 0
    params.sub_(lr * g + lr * wd * params * mask)


def adamw_step(p, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, wd):
    p.mul_(1 - lr * wd)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.lerp_(grad.square(), 1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt() + eps
    p.add_(exp_avg / denom * (-lr / (1 - beta1**step)))


if COMPILE:
    muon_step = torch.compile(muon_step, dynamic=False, fullgraph=True)
    adamw_step = torch.compile(adamw_step, dynamic=False, fullgraph=True)


class MuonAdamW:
    """Groups of kind 'muon' (same-shape matrices, updated as one stack) and 'adamw'.

    A plain class: torch.optim.Optimizer's constructor imports torch._dynamo, seconds of startup on a CPU.
    """

    def __init__(self, groups):
        self.param_groups = [dict(g, params=list(g["params"])) for g in groups]
        self.state = defaultdict(dict)  # parameter -> its buffers (a muon group's stack: under its first matrix)
        # Hyperparameters live in 0-D CPU tensors so that changing them never recompiles the step functions.
        self._t = {k: torch.tensor(0.0) for k in ("lr", "wd", "momentum", "beta1", "beta2", "eps", "step")}

    def _set(self, **kw):
        for k, v in kw.items():
            self._t[k].fill_(v)
        return [self._t[k] for k in kw]

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["kind"] == "adamw":
                self._adamw(group, params)
            else:
                self._muon(group, params)

    def _adamw(self, group, params):
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = self._set(step=state["step"], lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                          eps=group["eps"], wd=group["weight_decay"])
            step, lr, beta1, beta2, eps, wd = t
            adamw_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"], step, lr, beta1, beta2, eps, wd)

    def _muon(self, group, params):
        rows, cols = params[0].shape
        state = self.state[params[0]]
        red_dim = -1 if rows >= cols else -2  # NorMuon statistics over the longer dimension
        if not state:
            state["momentum_buffer"] = torch.zeros(len(params), rows, cols, device=params[0].device)
            shape = (len(params), rows, 1) if rows >= cols else (len(params), 1, cols)
            state["second_momentum_buffer"] = torch.zeros(shape, device=params[0].device)
        lr, wd, momentum, beta2 = self._set(lr=group["lr"] * max(1.0, rows / cols) ** 0.5, wd=group["weight_decay"],
                                            momentum=group["momentum"], beta2=group["beta2"])
        grads = torch.stack([p.grad for p in params]).float()  # [N, rows, cols]
        stacked = torch.stack(params)
        muon_step(grads, stacked, state["momentum_buffer"], state["second_momentum_buffer"],
                  momentum, lr, wd, beta2, red_dim)
        torch._foreach_copy_(params, list(stacked.unbind(0)))


def build_optimizer(model):
    d_scale = (model.d_model / 768) ** -0.5  # AdamW lrs were tuned at width 768
    matrices = [p for p in model.blocks.parameters()]
    assert all(p.ndim == 2 for p in matrices)
    adam = dict(kind="adamw", betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    groups = [
        dict(adam, params=[model.lm_head.weight], lr=UNEMBEDDING_LR * d_scale),
        dict(adam, params=[model.wte.weight], lr=EMBEDDING_LR * d_scale),
        dict(adam, params=list(model.value_embeds.parameters()), lr=EMBEDDING_LR * d_scale),
        dict(adam, params=[model.resid_lambdas], lr=SCALAR_LR * 0.01),
        dict(adam, params=[model.x0_lambdas], lr=SCALAR_LR, betas=(0.96, 0.95)),
    ]
    for shape in sorted({p.shape for p in matrices}):
        groups.append(dict(kind="muon", params=[p for p in matrices if p.shape == shape], lr=MATRIX_LR,
                           momentum=MUON_MOMENTUM[0], beta2=0.95, weight_decay=WEIGHT_DECAY))
    groups = [g for g in groups if g["params"]]
    opt = MuonAdamW(groups)
    for g in opt.param_groups:
        g["initial_lr"] = g["lr"]
    return opt


def lr_multiplier(progress):
    """progress = training time / TIME_BUDGET in [0, 1]: optional warm-up, constant, then linear warm-down."""
    if progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    frac = (1.0 - progress) / WARMDOWN_RATIO
    return frac + (1.0 - frac) * FINAL_LR_FRAC


def muon_momentum(step):
    start, end, ramp = MUON_MOMENTUM
    frac = min(step / ramp, 1.0)
    return (1 - frac) * start + frac * end


# ---------------------------------------------------------------------------
# Setup

if __name__ == "__main__":
    seed = int(os.environ.get("AUTORESEARCH_SEED") or SEED)
    torch.manual_seed(seed)
    if USE_CUDA:
        torch.cuda.manual_seed(seed)
        torch.set_float32_matmul_precision("high")
    tokenizer = Tokenizer.from_directory()
    vocab_size = tokenizer.get_vocab_size()
    d_model = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM
    tokens_per_pass = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    assert TOTAL_BATCH_SIZE % tokens_per_pass == 0, (
        f"TOTAL_BATCH_SIZE ({TOTAL_BATCH_SIZE}) must be a multiple of DEVICE_BATCH_SIZE x MAX_SEQ_LEN ({tokens_per_pass})")
    grad_accum = TOTAL_BATCH_SIZE // tokens_per_pass

    # On CUDA the model is laid out on the meta device (no throw-away CPU init); on CPU, meta's init path
    # would import torch._dynamo (seconds of startup), and a small model builds in no time anyway.
    with torch.device("meta" if USE_CUDA else device):
        model = GPT(vocab_size, DEPTH, d_model, HEAD_DIM, MAX_SEQ_LEN, WINDOW_PATTERN)
    model.to_empty(device=device)
    cos, sin = rotary_tables(10 * MAX_SEQ_LEN, HEAD_DIM)  # buffers are not initialised by to_empty
    model.cos.copy_(cos)
    model.sin.copy_(sin)
    model.init_weights()
    if USE_CUDA:
        # bf16 embeddings (as upstream): the residual stream then stays bf16, which saves memory and bandwidth
        model.wte.to(dtype=torch.bfloat16)
        model.value_embeds.to(dtype=torch.bfloat16)
    num_params = model.num_params()
    flops_per_token = model.flops_per_token(MAX_SEQ_LEN)
    peak = peak_flops()
    optimizer = build_optimizer(model)
    model.block_masks(MAX_SEQ_LEN, device)
    train_model = torch.compile(model, dynamic=False) if COMPILE else model

    print(f"device: {DEVICE_TYPE}{' (' + torch.cuda.get_device_name() + ')' if USE_CUDA else ''} | "
          f"params: {num_params / 1e6:.1f}M | depth {DEPTH}, width {d_model}, heads {d_model // HEAD_DIM} | "
          f"windows {model.windows} | batch {TOTAL_BATCH_SIZE} tokens = {grad_accum} x {DEVICE_BATCH_SIZE} x "
          f"{MAX_SEQ_LEN} | budget {TIME_BUDGET}s", flush=True)

    loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train", device=device)
    x, y, epoch = next(loader)  # x, y: [B, T]

    # -----------------------------------------------------------------------
    # Training loop: runs until TIME_BUDGET seconds of training (after the first TIMING_SKIP_STEPS steps)

    step = 0
    training_time = 0.0
    smooth_loss = 0.0
    while True:
        synchronize()
        t0 = time.time()
        for _ in range(grad_accum):
            with autocast_ctx:
                loss = train_model(x, y)
            train_loss = loss.detach()
            (loss / grad_accum).backward()
            x, y, epoch = next(loader)
        progress = min(training_time / TIME_BUDGET, 1.0)
        lrm = lr_multiplier(progress)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lrm
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step)
                group["weight_decay"] = WEIGHT_DECAY * (1.0 - progress)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        loss_f = train_loss.item()  # also synchronises
        if not math.isfinite(loss_f) or loss_f > 100:
            print(f"\nFAIL: training diverged at step {step} (loss {loss_f}); aborting.", flush=True)
            sys.exit(1)
        synchronize()
        dt = time.time() - t0
        if step >= TIMING_SKIP_STEPS:
            training_time += dt

        smooth_loss = 0.9 * smooth_loss + 0.1 * loss_f
        shown_loss = smooth_loss / (1 - 0.9 ** (step + 1))  # de-biased EMA
        tok_per_sec = int(TOTAL_BATCH_SIZE / dt)
        mfu = f"{100 * flops_per_token * TOTAL_BATCH_SIZE / dt / peak:.1f}%" if peak else "n/a"
        remaining = max(0.0, TIME_BUDGET - training_time)
        print(f"\rstep {step:05d} ({100 * progress:.1f}%) | loss: {shown_loss:.6f} | lrm: {lrm:.2f} | "
              f"dt: {dt * 1000:.0f}ms | tok/sec: {tok_per_sec:,} | mfu: {mfu} | epoch: {epoch} | "
              f"remaining: {remaining:.0f}s    ", end="", flush=True)

        if step == 0:
            # Everything allocated so far lives to the end: keep the collector from rescanning it every step.
            gc.collect()
            gc.freeze()
            gc.disable()
        elif (step + 1) % 5000 == 0:
            gc.collect()
        step += 1
        if step > TIMING_SKIP_STEPS and training_time >= TIME_BUDGET:
            break
    print(flush=True)

    # -----------------------------------------------------------------------
    # Hand-over: the model leaves as an exported graph; a separate process computes val_bpb from its logits
    # on the validation data (prepare.py, the trusted metric). Under the engine hand_over returns None and
    # the engine prints the summary; run by hand it evaluates and returns val_bpb.

    counted_steps = max(step - TIMING_SKIP_STEPS, 1)
    mfu_percent = 100 * flops_per_token * TOTAL_BATCH_SIZE * counted_steps / training_time / peak if peak else 0.0
    total_tokens = step * TOTAL_BATCH_SIZE
    summary = dict(training_seconds=round(training_time, 1), mfu_percent=round(mfu_percent, 2),
                   total_tokens_M=round(total_tokens / 1e6, 1), num_steps=step, num_params_M=round(num_params / 1e6, 1),
                   depth=DEPTH)
    val_bpb = hand_over(model, x, total_seconds=round(time.time() - T_START, 1), **summary)
    if val_bpb is not None:
        total_seconds = time.time() - T_START
        print("---")
        print(f"val_bpb:          {val_bpb:.6f}")
        print(f"training_seconds: {training_time:.1f}")
        print(f"total_seconds:    {total_seconds:.1f}")
        print(f"peak_vram_mb:     {peak_memory_mb(device):.1f}")
        print(f"mfu_percent:      {mfu_percent:.2f}")
        print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
        print(f"num_steps:        {step}")
        print(f"num_params_M:     {num_params / 1e6:.1f}")
        print(f"depth:            {DEPTH}")
