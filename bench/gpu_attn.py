"""Attention kernels on this GPU: correctness of the sliding-window flex path and fwd+bwd speed of each option.

Usage: python3 bench/gpu_attn.py [--batch 16] [--seq 2048] [--heads 4] [--head-dim 128]
Prints one line per kernel (ms per forward+backward, effective TFLOP/s counting only unmasked work).
"""

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

flex = torch.compile(flex_attention, dynamic=False)


def window_mask(T, window):
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window)

    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device="cuda")


def timed(fn, q, k, v, iters=20):
    """Median ms of forward+backward over iters runs (after 3 warm-ups)."""
    for _ in range(3):
        fn(q, k, v).sum().backward()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(q, k, v).sum().backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_attn: no CUDA device", file=sys.stderr)
        return 1
    B, H, T, D = a.batch, a.heads, a.seq, a.head_dim
    win = T // 2
    print(f"gpu_attn: {torch.cuda.get_device_name()} torch {torch.__version__} B={B} H={H} T={T} D={D}", flush=True)
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    full, sw = window_mask(T, T), window_mask(T, win)

    # Correctness: flex with the window mask equals SDPA with the same boolean mask.
    i = torch.arange(T, device="cuda")
    allowed = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < win)
    with torch.no_grad():
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=allowed)
        err_w = (flex(q, k, v, block_mask=sw).float() - ref).abs().max().item()
        ref_c = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
        err_c = (flex(q, k, v, block_mask=full).float() - ref_c).abs().max().item()
    ok = err_w < 3e-2 and err_c < 3e-2
    print(f"correctness: flex window max err {err_w:.2e}, flex causal max err {err_c:.2e} -> {'OK' if ok else 'FAIL'}")

    causal_flops = 4 * B * H * D * T * (T + 1) / 2 * 3.5  # fwd (2 matmuls) + bwd (~2.5x fwd)
    window_flops = 4 * B * H * D * (win * (win + 1) / 2 + (T - win) * win) * 3.5
    options = [
        ("sdpa causal (default backend)", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
         None, causal_flops),
        ("sdpa causal (flash)", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
         SDPBackend.FLASH_ATTENTION, causal_flops),
        ("sdpa causal (cudnn)", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
         SDPBackend.CUDNN_ATTENTION, causal_flops),
        ("flex causal", lambda q, k, v: flex(q, k, v, block_mask=full), None, causal_flops),
        (f"flex window {win}", lambda q, k, v: flex(q, k, v, block_mask=sw), None, window_flops),
    ]
    for name, fn, backend, flops in options:
        try:
            if backend is None:
                ms = timed(fn, q, k, v)
            else:
                with sdpa_kernel([backend]):
                    ms = timed(fn, q, k, v)
            print(f"  {name:32s} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TFLOP/s", flush=True)
        except Exception as e:  # a backend this build or GPU lacks is reported, not fatal
            print(f"  {name:32s} unavailable ({type(e).__name__}: {str(e).splitlines()[0][:100]})", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
