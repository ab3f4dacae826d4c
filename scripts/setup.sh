#!/usr/bin/env bash
# One-time setup: hardware profile -> constants.py and train.py size knobs, then data and tokenizer.
# Usage: bash scripts/setup.sh [--profile P] [--dataset D] [--seq-len N] [--num-shards N] [--no-prepare]
# A thin wrapper over `uv run autoresearch setup`, run from the repository root.
set -euo pipefail

NAME=setup.sh
usage() { echo "usage: bash scripts/setup.sh [--profile P] [--dataset D] [--seq-len N] [--num-shards N] [--no-prepare]"; echo "One-time setup: hardware profile -> constants.py and train.py size knobs, then data and tokenizer."; }
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

args=(setup)
while [ $# -gt 0 ]; do
  case "$1" in
    --profile|--dataset) need_value "$1" $#; args+=("$1" "$2"); shift 2 ;;
    --seq-len|--num-shards) need_value "$1" $#; need_int "$1" "$2"; args+=("$1" "$2"); shift 2 ;;
    --no-prepare) args+=("$1"); shift ;;
    -h|--help) usage; exit 0 ;;
    *) unknown_option "$1" ;;
  esac
done

run_cli "${args[@]}"
