#!/usr/bin/env bash
# GPU check of the trainer on an H100: throughput, MFU and peak memory of the default depth-8 config.
#
# Usage: bench/gpu_check.sh [WHEEL_DIR]
#   WHEEL_DIR (or $WHEELS): a folder with a rustbpe wheel, for a box without internet
#             (installed with pip --no-index into a temp folder; nothing on the system changes).
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET (training seconds, default 90),
#   GPU_CHECK_EVAL_TOKENS (default 4 * 524288), GPU_CHECK_ATTN=0 to skip the attention micro-benchmark,
#   GPU_CHECK_KEEP=1 to keep the temp workspace, GPU_CHECK_OUT=DIR to copy the log and metrics there.
# Needs: python3 with torch, pyarrow, tiktoken (and rustbpe, or a wheel of it). No network.
# Runs in a temp copy of the trainer files with the offline pystdlib corpus; the repo is never modified.
# Targets (upstream's H100 run): MFU >= 39.8 %, >= 1.65 M tokens/s, peak VRAM <= 45 GB. Exit 0 = all PASS.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${1:-${WHEELS:-}}"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-90}"
EVAL_TOKENS="${GPU_CHECK_EVAL_TOKENS:-$((4 * 524288))}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/autoresearch-gpucheck.XXXXXX")"
WS="$WORK/ws"

cleanup() {
    if [ "${GPU_CHECK_KEEP:-0}" = "1" ]; then echo "gpu_check: kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }
die() { echo "gpu_check: $*" >&2; exit 2; }

say "machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || die "no CUDA device visible to torch"

say "dependencies"
if ! "$PY" -c "import rustbpe" 2>/dev/null; then
    [ -n "$WHEELS" ] || die "rustbpe is not installed; pass a folder with its wheel: bench/gpu_check.sh WHEEL_DIR"
    "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$WORK/site" rustbpe \
        || die "could not install rustbpe from $WHEELS"
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import rustbpe, tiktoken, pyarrow; print('rustbpe, tiktoken, pyarrow: ok')" || die "missing python packages"

say "workspace (h100 profile, TIME_BUDGET $BUDGET s, EVAL_TOKENS $EVAL_TOKENS, pystdlib data)"
mkdir -p "$WS"
cp "$REPO/constants.py" "$REPO/prepare.py" "$REPO/train.py" "$WS/"
(cd "$REPO" && "$PY" - "$WS" "$BUDGET" "$EVAL_TOKENS" <<'EOF'
import re, sys
from pathlib import Path
from core.setup import apply_profile
ws, budget, eval_tokens = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
apply_profile(ws, "h100", "pystdlib", time_budget=budget)
c = ws / "constants.py"
c.write_text(re.sub(r"^EVAL_TOKENS = [^#\n]*", f"EVAL_TOKENS = {eval_tokens} ", c.read_text(), flags=re.M))
print((ws / "constants.py").read_text())
EOF
)
export AUTORESEARCH_CACHE="$WORK/cache"
T0=$(date +%s)
(cd "$WS" && "$PY" prepare.py --dataset pystdlib) || die "prepare.py failed"
echo "prepare: $(( $(date +%s) - T0 )) s"

if [ "${GPU_CHECK_ATTN:-1}" != "0" ]; then
    say "attention kernels (fwd+bwd, B=16 H=4 T=2048 D=128)"
    timeout 180 "$PY" "$REPO/bench/gpu_attn.py" || echo "gpu_attn: FAILED (continuing with the training run)"
fi

say "training run (train.py, budget $BUDGET s)"
LOG="$WORK/train.log"
METRICS="$WORK/metrics.json"
set +e
(cd "$WS" && AUTORESEARCH_METRICS_FILE="$METRICS" PYTHONUNBUFFERED=1 timeout $(( ${BUDGET%.*} + 420 )) "$PY" train.py) \
    > "$LOG" 2>&1
RC=$?
set -e
# progress lines are rewritten with \r: show the first line, a few status lines and everything after them
tr '\r' '\n' < "$LOG" | grep -v '^\s*$' | awk '/^step/ {n++; if (n <= 12 || n % 25 == 0) print; next} {print}'
if [ -n "${GPU_CHECK_OUT:-}" ]; then mkdir -p "$GPU_CHECK_OUT"; cp "$LOG" "$GPU_CHECK_OUT/" 2>/dev/null || true
    cp "$METRICS" "$GPU_CHECK_OUT/" 2>/dev/null || true; fi
[ "$RC" -eq 0 ] || die "train.py exited with code $RC"
[ -s "$METRICS" ] || die "train.py wrote no metrics file"

say "result"
"$PY" - "$METRICS" "$WS/train.py" <<'EOF'
import json, re, sys
m = json.load(open(sys.argv[1]))
src = open(sys.argv[2]).read()
total_batch = eval(re.search(r"^TOTAL_BATCH_SIZE = ([^#\n]+)", src, re.M).group(1))
skip = 10  # TIMING_SKIP_STEPS on CUDA: the compilation steps are not in training_seconds
tok_s = (m["num_steps"] - skip) * total_batch / m["training_seconds"]
checks = [("mfu_percent", m["mfu_percent"], ">=", 39.8, "%"),
          ("tokens_per_sec", tok_s, ">=", 1.65e6, ""),
          ("peak_vram_mb", m["peak_vram_mb"], "<=", 45 * 1024, " MB")]
print(f"device {m.get('device')} | steps {m['num_steps']} | training {m['training_seconds']} s | "
      f"total {m['total_seconds']} s | val_bpb {m['val_bpb']:.4f} (pystdlib, not comparable to climbmix)")
ok = True
for name, value, op, target, unit in checks:
    good = value >= target if op == ">=" else value <= target
    ok &= good
    print(f"{'PASS' if good else 'FAIL'}  {name:15s} {value:,.2f}{unit}  (target {op} {target:,}{unit})")
print("gpu_check: ALL PASS" if ok else "gpu_check: SOME TARGETS MISSED")
sys.exit(0 if ok else 1)
EOF
