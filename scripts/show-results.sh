#!/usr/bin/env bash
# Human-readable results.tsv report (counts, best val_bpb, top improvements).
# Usage: bash scripts/show-results.sh [--kept-only] [--json]
# A thin wrapper over `uv run autoresearch results`, run from the repository root.
set -euo pipefail

NAME=show-results.sh
usage() { echo "usage: bash scripts/show-results.sh [--kept-only] [--json]"; echo "Human-readable results.tsv report (counts, best val_bpb, top improvements)."; }
fail() { echo "$NAME: $*" >&2; exit 1; }

args=(results)
while [ $# -gt 0 ]; do
  case "$1" in
    --kept-only|--json) args+=("$1"); shift ;;
    -h|--help) usage; exit 0 ;;
    *) fail "unknown option '$1'; run with --help for the valid options." ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v uv >/dev/null 2>&1 || fail "uv is not installed; install it with: curl -LsSf https://astral.sh/uv/install.sh | sh"
exec uv run autoresearch "${args[@]}"
