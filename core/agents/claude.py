"""claude: the Claude Code CLI run non-interactively, confined by its own permission system to reading its cwd and editing train.py.

Usage (the engine runs it with cwd = the agent's checkout, a workspace or a worktree):
  python -m core.agents.claude --run [--model M] [--max-turns N]

The wrapper starts (prompt on stdin, see docs/agents.md for why each flag is there)
  claude -p --output-format stream-json --verbose --tools Read,Edit,Write,Glob,Grep
         --permission-mode dontAsk --allowedTools Edit(./train.py) --setting-sources "" --strict-mcp-config
         --disable-slash-commands --no-session-persistence --max-turns N [--model M]
with CLAUDE_CONFIG_DIR pointed at a fresh folder that is removed afterwards. dontAsk denies every tool
call no rule allows: reads outside the cwd, writes to anything but train.py. Every stream line is copied
to stdout (agent.log). An authentication error ends the CLI at once (Claude Code would retry it for
minutes). The result event gives tokens, cost and the final message (the description).
"""

from __future__ import annotations

import argparse
import sys

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

PACKAGE = "@anthropic-ai/claude-code"
TESTED_VERSION = "2.1.328"
LOWEST_VERSION = (2, 1, 0)  # --tools, dontAsk, --setting-sources and the api_retry event
BELOW_VERSION = (2, 2, 0)
INSTALL = f"npm install -g {PACKAGE}@{TESTED_VERSION}"
TOOLS = "Read,Edit,Write,Glob,Grep"  # the only built-in tools the CLI offers the model
ALLOW = "Edit(./train.py)"  # Edit rules cover Write too; relative to the cwd, so a worktree works the same
DEFAULT_MAX_TURNS = 40
MISSING = (f"the claude CLI is not on PATH; install Claude Code ({INSTALL}) or use --agent anthropic|mutate.")
# Credentials a run with a private config folder can use (a `claude login` session lives in ~/.claude).
AUTH_HINT = ("export ANTHROPIC_API_KEY, or run `claude setup-token` and export CLAUDE_CODE_OAUTH_TOKEN "
             "(autoresearch runs Claude Code with a private config folder, so a `claude login` session is not used)")

# Environment of the CLI: no memory, no CLAUDE.md, no background work, no traffic but the model API.
ENV = {
    "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
    "CLAUDE_CODE_DISABLE_CLAUDE_MDS": "1",
    "CLAUDE_CODE_DISABLE_CRON": "1",
    "CLAUDE_CODE_DISABLE_BACKGROUND_TASKS": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
}


class ClaudeAgent(CliAgent):
    """Claude Code CLI agent."""

    name = "claude"
    binary = "claude"
    module = "core.agents.claude"
    missing = MISSING

    def __init__(self, config: dict):
        super().__init__(config)
        self.max_turns = int(config.get("max_turns") or DEFAULT_MAX_TURNS)

    def wrapper_args(self) -> list[str]:
        return ["--max-turns", str(self.max_turns)]


def claude_argv(binary: str, model: str | None, max_turns: int) -> list[str]:
    """The CLI call; the prompt goes to its stdin."""
    argv = [binary, "-p", "--output-format", "stream-json", "--verbose",
            "--tools", TOOLS, "--permission-mode", "dontAsk", "--allowedTools", ALLOW,
            "--setting-sources", "", "--strict-mcp-config", "--disable-slash-commands",
            "--no-session-persistence", "--max-turns", str(max_turns)]
    if model:
        argv += ["--model", model]
    return argv


def classify(result: dict, assistant_error: dict | None) -> AgentError:
    """The error of an is_error result, as one sentence of the CLI's own message and its kind."""
    message = result.get("result") if isinstance(result.get("result"), str) else ""
    status = result.get("api_error_status")
    code = str(result.get("api_error") or (assistant_error or {}).get("error") or "")
    etype = str(result.get("api_error_type") or "")
    subtype = str(result.get("subtype") or "")
    if subtype.startswith("error_max_turns"):
        return AgentError("other", f"Claude Code stopped after {result.get('num_turns')} turns without finishing "
                                   "(error_max_turns); raise --max-turns or simplify program.md")
    if subtype.startswith("error") and not message:
        message = ", ".join(str(e) for e in result.get("errors") or []) or subtype
    if "not logged in" in message.lower():
        return AgentError("auth", f"Claude Code is not logged in ({message}): {AUTH_HINT}")
    if status in (401, 403) or code == "authentication_failed" or "authentication" in etype:
        return AgentError("auth", f"the API rejected the credentials ({message or code}); {AUTH_HINT}")
    if status == 429 or code == "rate_limit" or "rate_limit" in etype:
        return AgentError("rate_limit", f"the API is rate limiting this key ({message or code}); wait, or "
                                        "lower the request rate (fewer parallel engines)")
    if code == "connection_failed" or (status is None and ("connect" in message.lower()
                                                          or "ENOTFOUND" in message or "ETIMEDOUT" in message)):
        return AgentError("network", f"cannot reach the model API ({message or code}); check the network, "
                                     "a proxy, or ANTHROPIC_BASE_URL")
    return AgentError("other", f"Claude Code ended with an error: {message or code or subtype or 'unknown'}")


def run(usage: Usage, model: str | None, max_turns: int) -> None:
    binary = find_binary("claude")
    if not binary:
        raise AgentError("other", MISSING)
    check_version("Claude Code", cli_version(binary), LOWEST_VERSION, BELOW_VERSION, INSTALL)
    prompt = read_prompt()  # the engine worded the hand-in for this agent (Agent.hand_in)
    usage.model = model
    state: dict = {"result": None, "texts": [], "api_error": None}

    def on_event(ev: dict) -> None:
        kind, sub = ev.get("type"), ev.get("subtype")
        if kind == "system" and sub == "init":
            usage.model = ev.get("model") or usage.model
            usage.extra["tools"] = ev.get("tools")
            usage.extra["memory_paths"] = ev.get("memory_paths")
        elif kind == "system" and sub == "api_retry":
            # Claude Code retries a rejected key for minutes; a wrong key does not become right meanwhile.
            if ev.get("error_status") in (401, 403) or ev.get("error") == "authentication_failed":
                raise Stop(AgentError("auth", f"the API rejected the credentials (HTTP {ev.get('error_status')}, "
                                              f"{ev.get('error')}); {AUTH_HINT}"))
        elif kind == "assistant":
            if ev.get("is_api_error_message") or ev.get("error"):
                state["api_error"] = ev
            for block in (ev.get("message") or {}).get("content") or []:
                if isinstance(block, dict) and block.get("type") == "text":
                    state["texts"].append(block.get("text") or "")
        elif kind == "result":
            state["result"] = ev

    with private_home("claude-home-") as home:
        env = child_env({**ENV, "CLAUDE_CONFIG_DIR": str(home), "TMPDIR": str(home / "tmp"),
                         "CLAUDE_CODE_TMPDIR": str(home / "tmp")})
        rc = stream_json(claude_argv(binary, model, max_turns), on_event, stdin_text=prompt, env=env)
    result = state["result"]
    if result is None:
        raise AgentError("other", f"Claude Code exited with code {rc} without a result (see agent.log)")
    fill_usage(usage, result)
    if result.get("is_error"):
        raise classify(result, state["api_error"])
    if rc != 0:
        raise AgentError("other", f"Claude Code exited with code {rc} (see agent.log)")
    final = result.get("result") if isinstance(result.get("result"), str) else "\n".join(state["texts"])
    write_proposal(description_from_text(final))


def fill_usage(usage: Usage, result: dict) -> None:
    u = result.get("usage") or {}
    cached = int(u.get("cache_read_input_tokens") or 0)
    written = int(u.get("cache_creation_input_tokens") or 0)
    usage.input_tokens = int(u.get("input_tokens") or 0) + cached + written
    usage.output_tokens = int(u.get("output_tokens") or 0)
    usage.cost_usd = result.get("total_cost_usd", result.get("cost_usd"))
    usage.cost_estimated = False  # Claude Code's own figure
    usage.turns = result.get("num_turns")
    usage.extra.update(cache_read_tokens=cached, cache_write_tokens=written,
                       permission_denials=len(result.get("permission_denials") or []))
    models = result.get("modelUsage") or {}
    if isinstance(models, dict) and models:
        # the model that did the work: the one with the most output tokens
        usage.model = max(models, key=lambda m: (models[m] or {}).get("outputTokens") or 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.agents.claude")
    p.add_argument("--run", action="store_true", help="run Claude Code on $AUTORESEARCH_PROMPT_FILE")
    p.add_argument("--model", default=None)
    p.add_argument("--max-turns", type=int, default=DEFAULT_MAX_TURNS)
    args = p.parse_args(argv)
    if not args.run:
        p.print_help()
        return 2
    return run_wrapper("claude agent", lambda usage: run(usage, args.model, max(1, args.max_turns)))


if __name__ == "__main__":
    sys.exit(main())
