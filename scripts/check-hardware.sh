#!/usr/bin/env bash
# GPU/CUDA/torch/uv availability check (JSON output).
# Usage: bash scripts/check-hardware.sh
# A thin wrapper over `uv run autoresearch check`, run from the repository root.
set -euo pipefail

NAME=check-hardware.sh
usage() { echo "usage: bash scripts/check-hardware.sh"; echo "GPU/CUDA/torch/uv availability check (JSON output)."; }
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

args=(check)
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    *) unknown_option "$1" ;;
  esac
done

run_cli "${args[@]}"
