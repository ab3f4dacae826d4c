# Shared helpers of the scripts/*.sh wrappers (sourced, not run). Each script sets NAME and usage() first.
fail() { echo "$NAME: $*" >&2; exit 1; }
need_value() { [ "$2" -ge 2 ] || fail "$1 needs a value; run with --help for the valid options."; }
need_int() { [[ "$2" =~ ^[0-9]+$ ]] || fail "$1 needs a whole number, not '$2'."; }
unknown_option() { fail "unknown option '$1'; run with --help for the valid options."; }

# run_cli ARGS...: the autoresearch CLI from the repository root, through uv
run_cli() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  command -v uv >/dev/null 2>&1 || fail "uv is not installed; install it with: curl -LsSf https://astral.sh/uv/install.sh | sh"
  exec uv run autoresearch "$@"
}
