"""GPU check of verified evaluation (needs CUDA; not run where there is none): the real trainer's model, compiled
and with flex attention under bf16, exported and scored by the separate evaluator, against the in-process
evaluation of the compiled model as it was; export, evaluator and overhead seconds against a 300 s budget.

    uv run python bench/gpu_integrity_check.py [--profile h100] [--steps 20]

Prints one line per measurement and `OK` or `FAIL: ...` for each check:
  export works for the compiled, flex-attention, bf16 model; the evaluator accepts the archive;
  |val_bpb(separate) - val_bpb(in-process)| <= 2e-3 (bf16 kernels: compiled vs compiled exported graph);
  export + evaluator - in-process evaluation <= 5 % of TIME_BUDGET.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="h100")
    ap.add_argument("--steps", type=int, default=20, help="training steps before the hand-over")
    args = ap.parse_args()
    import torch
    if not torch.cuda.is_available():
        print("FAIL: no CUDA device: this check needs a GPU")
        return 2
    from core.scaffold import create_workspace
    from core.training import integrity, launcher_argv, trainer_env

    tmp = Path(tempfile.mkdtemp(prefix="gpu-integrity-"))
    os.environ.setdefault("AUTORESEARCH_CACHE", str(tmp / "cache"))
    ws = create_workspace(tmp / "ws", profile=args.profile, dataset="pystdlib")
    subprocess.run([sys.executable, "prepare.py"], cwd=ws.root, check=True)
    os.chdir(ws.root)
    sys.path.insert(0, str(ws.root))
    import prepare

    spec = importlib.util.spec_from_file_location("train_gpu", ws.root / "train.py")
    T = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(T)
    tok = prepare.Tokenizer.from_directory()
    dev = torch.device("cuda")
    d_model = -(-T.DEPTH * T.ASPECT_RATIO // T.HEAD_DIM) * T.HEAD_DIM
    with torch.device("meta"):
        model = T.GPT(tok.get_vocab_size(), T.DEPTH, d_model, T.HEAD_DIM, prepare.MAX_SEQ_LEN, T.WINDOW_PATTERN)
    model.to_empty(device=dev)
    cos, sin = T.rotary_tables(10 * prepare.MAX_SEQ_LEN, T.HEAD_DIM)
    model.cos.copy_(cos)
    model.sin.copy_(sin)
    model.init_weights()
    model.wte.to(dtype=torch.bfloat16)
    model.value_embeds.to(dtype=torch.bfloat16)
    opt = T.build_optimizer(model)
    model.block_masks(prepare.MAX_SEQ_LEN, dev)
    train_model = torch.compile(model, dynamic=False)
    loader = prepare.make_dataloader(tok, T.DEVICE_BATCH_SIZE, prepare.MAX_SEQ_LEN, "train", device=dev)
    for _ in range(args.steps):
        x, y, _ = next(loader)
        with T.autocast_ctx:
            loss = train_model(x, y)
        loss.backward()
        opt.step()
        model.zero_grad(set_to_none=True)
    loader.close()
    fails = []
    t0 = time.perf_counter()
    with T.autocast_ctx:
        inproc = prepare.evaluate_bpb(train_model, tok, T.DEVICE_BATCH_SIZE)
    t_in = time.perf_counter() - t0
    out = tmp / "eval"
    out.mkdir()
    for name in ("prepare.py", "constants.py"):
        shutil.copy(ws.root / name, out)
    t0 = time.perf_counter()
    try:
        prepare.export_model(model, x, out / "model.pt2")
    except prepare.PrepareError as e:
        print(f"FAIL: export: {e}")
        return 1
    t_export = time.perf_counter() - t0
    level = integrity()
    data = Path(os.environ["AUTORESEARCH_CACHE"]) / "pystdlib"
    argv = launcher_argv([sys.executable, str(out / "prepare.py"), "--evaluate", str(out / "model.pt2"), "--metrics",
                          str(out / "m.json")], level, [str(data / "val"), str(data / "tokenizer")], [str(out)])
    env = dict(trainer_env(os.environ), HOME=str(out), TMPDIR=str(out), AUTORESEARCH_CACHE=os.environ["AUTORESEARCH_CACHE"])
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=out, env=env, capture_output=True, text=True)
    t_eval = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"FAIL: evaluator exit {proc.returncode}: {proc.stderr[-2000:]}")
        return 1
    m = json.loads((out / "m.json").read_text())
    diff = abs(m["val_bpb"] - inproc)
    extra = t_export + t_eval - t_in
    budget = prepare.TIME_BUDGET
    print(f"{torch.cuda.get_device_name()} | {args.profile} | integrity {level}")
    print(f"in-process eval {t_in:.1f} s | export {t_export:.1f} s | evaluator {t_eval:.1f} s (load "
          f"{m['eval_load_seconds']:.1f} s, compiled {m['eval_compiled']}) | model "
          f"{(out / 'model.pt2').stat().st_size / 2**20:.0f} MiB")
    print(f"val_bpb in-process {inproc:.6f} | separate {m['val_bpb']:.6f} | diff {diff:.2e}")
    print(f"extra per experiment {extra:.1f} s = {100 * extra / budget:.1f} % of TIME_BUDGET {budget} s")
    if diff > 2e-3:
        fails.append(f"val_bpb differs by {diff:.2e}")
    if not m["eval_compiled"]:
        fails.append("the evaluator could not compile the exported graph")
    if extra > 0.05 * budget:
        fails.append(f"overhead {extra:.1f} s is above 5 % of the budget")
    print("OK" if not fails else "FAIL: " + "; ".join(fails))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
