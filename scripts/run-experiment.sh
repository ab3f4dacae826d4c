#!/usr/bin/env bash
# Single experiment of the current train.py: prints val_bpb and peak_vram_mb.
# Usage: bash scripts/run-experiment.sh
# A thin wrapper over `uv run autoresearch run`, run from the repository root.
set -euo pipefail

NAME=run-experiment.sh
usage() { echo "usage: bash scripts/run-experiment.sh"; echo "Single experiment of the current train.py: prints val_bpb and peak_vram_mb."; }
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

args=(run)
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    *) unknown_option "$1" ;;
  esac
done

run_cli "${args[@]}"
