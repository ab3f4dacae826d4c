"""codex: the Codex CLI run non-interactively (`codex exec --json`), confined by its sandbox to reading its cwd and writing inside it.

Usage (the engine runs it with cwd = the agent's checkout, a workspace or a worktree):
  python -m core.agents.codex --run [--model M]

The sandbox is Codex's workspace-write mode written as a permission profile, which can also confine
reads: the commands the model runs may read the cwd and the system's programs (without /etc), write
only inside the cwd (not .git, not /tmp, not $TMPDIR, not the engine's .autoresearch), and have no
network. Approvals are never asked for, so anything outside is refused. CODEX_HOME is a fresh folder,
removed afterwards, and the session is ephemeral: nothing carries over to the next experiment. The
engine still rejects any change but train.py. Every JSON event is copied to stdout (agent.log); only a
failed turn is fatal (a recovered `Reconnecting... 1/5` error event is not). Tokens come from
`turn.completed`, the $ from core.agents.pricing, marked as an estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from ..description import from_text as description_from_text
from .cli import (
    AgentError,
    CliAgent,
    Stop,
    Usage,
    check_version,
    child_env,
    cli_version,
    find_binary,
    private_home,
    read_prompt,
    run_wrapper,
    stream_json,
    write_proposal,
)
from .pricing import estimate_cost

PACKAGE = "@openai/codex"
TESTED_VERSION = "0.169.0"
LOWEST_VERSION = (0, 160, 0)  # permission profiles, --ephemeral, --ignore-rules, `debug models`
BELOW_VERSION = (0, 200, 0)
INSTALL = f"npm install -g {PACKAGE}@{TESTED_VERSION}"
MISSING = f"the codex CLI is not on PATH; install Codex ({INSTALL}) or use --agent anthropic|mutate."
AUTH_HINT = ("export OPENAI_API_KEY (or CODEX_API_KEY); autoresearch runs Codex with a private CODEX_HOME, "
             "so a `codex login` session is not used")
PROFILE = "autoresearch"
# Tools and services the agent does not need; each is a feature flag of this Codex version.
DISABLED_FEATURES = (
    "multi_agent", "goals", "view_image", "sleep_tool", "apps", "plugins", "image_generation", "browser_use",
    "computer_use", "in_app_browser", "memories", "tool_suggest", "skill_search", "hooks",
    "unbounded_connection_retries",  # without it, no network means "waiting for network" forever
)
CREDENTIALS = ("OPENAI_API_KEY", "CODEX_API_KEY", "CODEX_ACCESS_TOKEN")


class CodexAgent(CliAgent):
    """Codex CLI agent."""

    name = "codex"
    binary = "codex"
    module = "core.agents.codex"
    missing = MISSING


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def install_root(binary: str) -> Path:
    """The folder holding the CLI and its native binary (the sandboxed commands re-run it to sandbox themselves)."""
    real = Path(os.path.realpath(binary))
    for parent in real.parents:
        if parent.name == "@openai":
            return parent
    return real.parent


def permission_profile(cwd: Path, codex_root: Path) -> str:
    """The filesystem table of the profile, as TOML."""
    inside = {".": "write"}
    if (cwd / ".autoresearch").exists():  # the engine's state, when the agent runs in the workspace itself
        inside[".autoresearch"] = "none"
    inner = ", ".join(f"{toml_str(k)}={toml_str(v)}" for k, v in inside.items())
    return (f'{{":minimal"="read", "/etc"="none", {toml_str(str(codex_root))}="read", '
            f'":project_roots"={{{inner}}}}}')


def codex_argv(binary: str, model: str | None, cwd: Path, base_url: str | None = None) -> list[str]:
    """The CLI call; `-` makes codex read the prompt from stdin."""
    argv = [binary, "exec", "--json", "--ephemeral", "--skip-git-repo-check", "--ignore-rules", "--color", "never",
            "-c", 'approval_policy="never"',
            "-c", f"default_permissions={toml_str(PROFILE)}",
            "-c", f"permissions.{PROFILE}.filesystem={permission_profile(cwd, install_root(binary))}",
            "-c", f"permissions.{PROFILE}.network.enabled=false",
            "-c", 'web_search="disabled"', "-c", 'history.persistence="none"']
    for feature in DISABLED_FEATURES:
        argv += ["--disable", feature]
    if base_url:  # an OpenAI-compatible Responses endpoint instead of OpenAI's own
        argv += ["-c", 'model_provider="autoresearch"',
                 "-c", f"model_providers.autoresearch={{name=\"OPENAI_BASE_URL\", base_url={toml_str(base_url)}, "
                       'env_key="OPENAI_API_KEY", wire_api="responses"}']
    if model:
        argv += ["--model", model]
    return argv + ["-"]


def default_model(binary: str, env: dict[str, str]) -> str | None:
    """The model codex picks when none is given: the first of its catalog (lowest priority number)."""
    try:
        out = subprocess.run([binary, "debug", "models"], capture_output=True, text=True, timeout=60, env=env,
                             stdin=subprocess.DEVNULL)
        models = json.loads(out.stdout).get("models") or []
    except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
        return None
    listed = [m for m in models if isinstance(m, dict) and m.get("visibility") == "list" and m.get("slug")]
    return min(listed, key=lambda m: m.get("priority") or 1 << 30)["slug"] if listed else None


_URL_TAIL = re.compile(r",? ?(url|request id): [^\s,)]+", re.I)
_RETRY = re.compile(r"^Reconnecting\.\.\. \d+/\d+ \((.*)\)$", re.S)


def clean(message: str) -> str:
    """An error message without the key (if a server echoes it), the URL and request id codex appends."""
    for var in CREDENTIALS:
        secret = os.environ.get(var)
        if secret and len(secret) >= 6:
            message = message.replace(secret, "***")
    return _URL_TAIL.sub("", message).strip().rstrip(",")


def classify(message: str) -> AgentError:
    low = message.lower()
    if "401" in message or "403" in message or "unauthorized" in low or "invalid_api_key" in low \
            or "incorrect api key" in low or "not logged in" in low:
        return AgentError("auth", f"the API rejected the credentials ({message}); {AUTH_HINT}")
    if "429" in message or "rate limit" in low or "too many requests" in low or "quota" in low:
        return AgentError("rate_limit", f"the API is rate limiting this key ({message}); wait, or lower the "
                                        "request rate (fewer parallel engines)")
    if any(s in low for s in ("connection failed", "error sending request", "lookup address", "connection refused",
                              "timed out", "stream disconnected", "waiting for network")):
        return AgentError("network", f"cannot reach the model API ({message}); check the network, a proxy, or "
                                     "OPENAI_BASE_URL")
    return AgentError("other", f"the Codex turn failed: {message}")


def run(usage: Usage, model: str | None) -> None:
    binary = find_binary("codex")
    if not binary:
        raise AgentError("other", MISSING)
    check_version("Codex", cli_version(binary), LOWEST_VERSION, BELOW_VERSION, INSTALL)
    if not any(os.environ.get(v) for v in CREDENTIALS):
        raise AgentError("auth", f"Codex has no credentials: {AUTH_HINT}")
    prompt = read_prompt()  # the engine worded the hand-in for this agent (Agent.hand_in)
    state: dict = {"messages": [], "failed": None, "last_error": None, "argv_error": None, "completed": 0}
    usage.extra.update(cached_input_tokens=0, reasoning_output_tokens=0)

    def on_event(ev: dict) -> None:
        kind = ev.get("type")
        if kind == "item.completed":
            item = ev.get("item") or {}
            if item.get("type") == "agent_message":
                state["messages"].append(item.get("text") or "")
        elif kind == "turn.completed":
            u = ev.get("usage") or {}
            state["completed"] += 1
            usage.input_tokens = (usage.input_tokens or 0) + int(u.get("input_tokens") or 0)
            usage.output_tokens = (usage.output_tokens or 0) + int(u.get("output_tokens") or 0)
            usage.extra["cached_input_tokens"] += int(u.get("cached_input_tokens") or 0)
            usage.extra["reasoning_output_tokens"] += int(u.get("reasoning_output_tokens") or 0)
            usage.turns = state["completed"]
        elif kind == "turn.failed":
            err = ev.get("error") if isinstance(ev.get("error"), dict) else {}
            state["failed"] = clean(str(err.get("message") or "the turn failed"))
        elif kind == "error":
            # "Reconnecting... 1/5 (...)" is a retry codex may recover from; only turn.failed is fatal.
            msg = clean(_RETRY.sub(r"\1", str(ev.get("message") or "")))
            state["last_error"] = msg
            if re.search(r"\b(401|403)\b", msg) or "unauthorized" in msg.lower():
                raise Stop(classify(msg))

    def on_stderr(line: str) -> None:
        if line.startswith("error: ") and ("argument" in line or "invalid value" in line):
            state["argv_error"] = line.strip()

    cwd = Path.cwd()
    with private_home("codex-home-") as home:
        env = child_env({"CODEX_HOME": str(home), "TMPDIR": str(home / "tmp")})
        model = model or default_model(binary, env)
        usage.model = model
        argv = codex_argv(binary, model, cwd, os.environ.get("OPENAI_BASE_URL") or None)
        rc = stream_json(argv, on_event, stdin_text=prompt, env=env, on_stderr=on_stderr)
    if usage.input_tokens is not None:
        cached = usage.extra["cached_input_tokens"]
        usage.cost_usd = estimate_cost(model, max(0, usage.input_tokens - cached), usage.output_tokens or 0,
                                       cache_read=cached)
        usage.cost_estimated = usage.cost_usd is not None
    if state["argv_error"]:
        raise AgentError("version", f"Codex rejected the arguments autoresearch passes ({state['argv_error']}); "
                                    f"install the tested version: {INSTALL}")
    if state["failed"]:
        raise classify(state["failed"])
    if rc != 0 or not state["completed"]:
        why = state["last_error"] or f"exit code {rc}"
        raise AgentError("other", f"Codex ended without finishing its turn ({why}); see agent.log")
    write_proposal(description_from_text(state["messages"][-1] if state["messages"] else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.agents.codex")
    p.add_argument("--run", action="store_true", help="run Codex on $AUTORESEARCH_PROMPT_FILE")
    p.add_argument("--model", default=None)
    args = p.parse_args(argv)
    if not args.run:
        p.print_help()
        return 2
    return run_wrapper("codex agent", lambda usage: run(usage, args.model))


if __name__ == "__main__":
    sys.exit(main())
