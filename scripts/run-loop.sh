#!/usr/bin/env bash
# Autonomous loop: the agent edits train.py, the engine trains, keeps improvements, reverts the rest.
# Usage: bash scripts/run-loop.sh [--max N] [--desc TAG] [--agent A] [--agent-cmd CMD] [--model M] [--detach]
# A thin wrapper over `uv run autoresearch loop`, run from the repository root.
set -euo pipefail

NAME=run-loop.sh
usage() { echo "usage: bash scripts/run-loop.sh [--max N] [--desc TAG] [--agent A] [--agent-cmd CMD] [--model M] [--detach]"; echo "Autonomous loop: the agent edits train.py, the engine trains, keeps improvements, reverts the rest."; }
fail() { echo "$NAME: $*" >&2; exit 1; }
need_value() { [ "$2" -ge 2 ] || fail "$1 needs a value; run with --help for the valid options."; }
need_int() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$1 needs a whole number, not '$2'."; }

args=(loop)
while [ $# -gt 0 ]; do
  case "$1" in
    --max) need_value "$1" $#; need_int "$1" "$2"; args+=(--max "$2"); shift 2 ;;
    --desc|--tag) need_value "$1" $#; args+=(--tag "$2"); shift 2 ;;
    --agent|--agent-cmd|--model) need_value "$1" $#; args+=("$1" "$2"); shift 2 ;;
    --detach) args+=(--detach); shift ;;
    -h|--help) usage; exit 0 ;;
    *) fail "unknown option '$1'; run with --help for the valid options." ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v uv >/dev/null 2>&1 || fail "uv is not installed; install it with: curl -LsSf https://astral.sh/uv/install.sh | sh"
exec uv run autoresearch "${args[@]}"
