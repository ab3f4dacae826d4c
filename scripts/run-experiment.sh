#!/usr/bin/env bash
# Single experiment of the current train.py: prints val_bpb and peak_vram_mb.
# Usage: bash scripts/run-experiment.sh
# A thin wrapper over `uv run autoresearch run`, run from the repository root.
set -euo pipefail

NAME=run-experiment.sh
usage() { echo "usage: bash scripts/run-experiment.sh"; echo "Single experiment of the current train.py: prints val_bpb and peak_vram_mb."; }
fail() { echo "$NAME: $*" >&2; exit 1; }

args=(run)
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    *) fail "unknown option '$1'; run with --help for the valid options." ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v uv >/dev/null 2>&1 || fail "uv is not installed; install it with: curl -LsSf https://astral.sh/uv/install.sh | sh"
exec uv run autoresearch "${args[@]}"
