#!/usr/bin/env bash
# One-time setup: hardware profile -> constants.py and train.py size knobs, then data and tokenizer.
# Usage: bash scripts/setup.sh [--profile P] [--dataset D] [--seq-len N] [--num-shards N] [--no-prepare]
# A thin wrapper over `uv run autoresearch setup`, run from the repository root.
set -euo pipefail

NAME=setup.sh
usage() { echo "usage: bash scripts/setup.sh [--profile P] [--dataset D] [--seq-len N] [--num-shards N] [--no-prepare]"; echo "One-time setup: hardware profile -> constants.py and train.py size knobs, then data and tokenizer."; }
fail() { echo "$NAME: $*" >&2; exit 1; }
need_value() { [ "$2" -ge 2 ] || fail "$1 needs a value; run with --help for the valid options."; }
need_int() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$1 needs a whole number, not '$2'."; }

args=(setup)
while [ $# -gt 0 ]; do
  case "$1" in
    --profile|--dataset) need_value "$1" $#; args+=("$1" "$2"); shift 2 ;;
    --seq-len|--num-shards) need_value "$1" $#; need_int "$1" "$2"; args+=("$1" "$2"); shift 2 ;;
    --no-prepare) args+=("$1"); shift ;;
    -h|--help) usage; exit 0 ;;
    *) fail "unknown option '$1'; run with --help for the valid options." ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v uv >/dev/null 2>&1 || fail "uv is not installed; install it with: curl -LsSf https://astral.sh/uv/install.sh | sh"
exec uv run autoresearch "${args[@]}"
