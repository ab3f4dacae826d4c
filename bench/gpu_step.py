"""Time and profile train.py's training step on this GPU with random tokens (no data, no evaluation).

Usage (in a workspace whose constants.py/prepare.py import): python3 PATH/bench/gpu_step.py [--steps 12] [--profile]
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of two steps")
    a = ap.parse_args()
    sys.path.insert(0, str(Path.cwd()))
    spec = importlib.util.spec_from_file_location("train", Path.cwd() / "train.py")
    T = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(T)  # the __main__ block does not run
    dev = torch.device("cuda")
    torch.set_float32_matmul_precision("high")
    d = -(-T.DEPTH * T.ASPECT_RATIO // T.HEAD_DIM) * T.HEAD_DIM
    import constants

    V, S = constants.VOCAB_SIZE, T.MAX_SEQ_LEN
    with torch.device("meta"):
        model = T.GPT(V, T.DEPTH, d, T.HEAD_DIM, S, T.WINDOW_PATTERN)
    model.to_empty(device=dev)
    cos, sin = T.rotary_tables(10 * S, T.HEAD_DIM)
    model.cos.copy_(cos)
    model.sin.copy_(sin)
    model.init_weights()
    model.wte.to(dtype=torch.bfloat16)
    model.value_embeds.to(dtype=torch.bfloat16)
    opt = T.build_optimizer(model)
    model.block_masks(S, dev)
    cm = torch.compile(model, dynamic=False)
    accum = T.TOTAL_BATCH_SIZE // (T.DEVICE_BATCH_SIZE * S)
    x = torch.randint(0, V, (T.DEVICE_BATCH_SIZE, S), device=dev)

    def step():
        for _ in range(accum):
            with T.autocast_ctx:
                loss = cm(x, x)
            (loss / accum).backward()
        opt.step()
        model.zero_grad(set_to_none=True)
        return loss

    t0 = time.time()
    step().item()
    print(f"gpu_step: first step (compile) {time.time() - t0:.1f} s", flush=True)
    times = []
    for _ in range(a.steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        step().item()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    ms = sorted(times)[len(times) // 2] * 1000
    fpt = model.flops_per_token(S)
    mfu = 100 * fpt * T.TOTAL_BATCH_SIZE / (ms / 1000) / (T.peak_flops() or float("nan"))
    print(f"gpu_step: {ms:.1f} ms/step, {T.TOTAL_BATCH_SIZE / ms * 1000:,.0f} tok/s, mfu {mfu:.1f}%, "
          f"peak {torch.cuda.max_memory_allocated() / 2**20:,.0f} MB", flush=True)
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step().item()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
