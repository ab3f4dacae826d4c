#!/usr/bin/env bash
# Human-readable results.tsv report (counts, best val_bpb, top improvements).
# Usage: bash scripts/show-results.sh [--kept-only] [--json]
# A thin wrapper over `uv run autoresearch results`, run from the repository root.
set -euo pipefail

NAME=show-results.sh
usage() { echo "usage: bash scripts/show-results.sh [--kept-only] [--json]"; echo "Human-readable results.tsv report (counts, best val_bpb, top improvements)."; }
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

args=(results)
while [ $# -gt 0 ]; do
  case "$1" in
    --kept-only|--json) args+=("$1"); shift ;;
    -h|--help) usage; exit 0 ;;
    *) unknown_option "$1" ;;
  esac
done

run_cli "${args[@]}"
