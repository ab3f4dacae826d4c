#!/usr/bin/env bash
# GPU/CUDA/torch/uv availability check (JSON output).
# Usage: bash scripts/check-hardware.sh
# A thin wrapper over `uv run autoresearch check`, run from the repository root.
set -euo pipefail

NAME=check-hardware.sh
usage() { echo "usage: bash scripts/check-hardware.sh"; echo "GPU/CUDA/torch/uv availability check (JSON output)."; }
fail() { echo "$NAME: $*" >&2; exit 1; }

args=(check)
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    *) fail "unknown option '$1'; run with --help for the valid options." ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v uv >/dev/null 2>&1 || fail "uv is not installed; install it with: curl -LsSf https://astral.sh/uv/install.sh | sh"
exec uv run autoresearch "${args[@]}"
