#!/usr/bin/env bash
# Autonomous loop: the agent edits train.py, the engine trains, keeps improvements, reverts the rest.
# Usage: bash scripts/run-loop.sh [--max N] [--desc TAG] [--agent A] [--agent-cmd CMD] [--model M] [--detach]
# A thin wrapper over `uv run autoresearch loop`, run from the repository root.
set -euo pipefail

NAME=run-loop.sh
usage() { echo "usage: bash scripts/run-loop.sh [--max N] [--desc TAG] [--agent A] [--agent-cmd CMD] [--model M] [--detach]"; echo "Autonomous loop: the agent edits train.py, the engine trains, keeps improvements, reverts the rest."; }
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"

args=(loop)
while [ $# -gt 0 ]; do
  case "$1" in
    --max) need_value "$1" $#; need_int "$1" "$2"; args+=(--max "$2"); shift 2 ;;
    --desc|--tag) need_value "$1" $#; args+=(--tag "$2"); shift 2 ;;
    --agent|--agent-cmd|--model) need_value "$1" $#; args+=("$1" "$2"); shift 2 ;;
    --detach) args+=(--detach); shift ;;
    -h|--help) usage; exit 0 ;;
    *) unknown_option "$1" ;;
  esac
done

run_cli "${args[@]}"
