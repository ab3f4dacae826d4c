"""claude: the Claude Code CLI run non-interactively with edit tools only, its stream JSON post-processed.

Usage (the engine runs it with cwd = workspace):
  python -m core.agents.claude --run [--model M] [--max-turns N]

The wrapper starts `claude -p PROMPT --output-format stream-json --verbose --permission-mode acceptEdits
--allowedTools Read,Edit,Write,Glob,Grep ...`, copies every stream line to its stdout (the engine's
agent.log), and afterwards writes the usage/cost of the final `result` message to
$AUTORESEARCH_USAGE_FILE and, when the agent did not write $AUTORESEARCH_PROPOSAL_FILE itself, the
description taken from the agent's final message. No `--dangerously-skip-permissions`: acceptEdits with
an allow-list works as root too, and the agent never gets a shell.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

from ..errors import UserError
from ..workspace import atomic_write_json
from .base import Agent, AgentContext

ALLOWED_TOOLS = "Read,Edit,Write,Glob,Grep"
# Listed explicitly so that a permissive user settings file cannot hand the agent a shell or the web.
DISALLOWED_TOOLS = "Bash,WebFetch,WebSearch,NotebookEdit,Task"
DEFAULT_MAX_TURNS = 40
MISSING = "the claude CLI is not on PATH; install Claude Code or use --agent anthropic|mutate."


class CliAgent(Agent):
    """An agent that is a vendor CLI, run through this package's wrapper module (`python -m MODULE --run`)."""

    module = ""
    missing = ""

    def __init__(self, config: dict):
        if not shutil.which(self.name):
            raise UserError(self.missing)
        self.model = config.get("model") or None

    def wrapper_args(self) -> list[str]:
        return []

    def command(self, ctx: AgentContext) -> list[str]:
        argv = [sys.executable, "-m", self.module, "--run", *self.wrapper_args()]
        if self.model:
            argv += ["--model", self.model]
        return argv

    def describe(self) -> str:
        return f"{self.name} ({self.model})" if self.model else self.name


class ClaudeAgent(CliAgent):
    """Claude Code CLI agent."""

    name = "claude"
    module = "core.agents.claude"
    missing = MISSING

    def __init__(self, config: dict):
        super().__init__(config)
        self.max_turns = int(config.get("max_turns") or DEFAULT_MAX_TURNS)

    def wrapper_args(self) -> list[str]:
        return ["--max-turns", str(self.max_turns)]


ARG_LIMIT = 100_000  # Linux refuses a single argv string over 128 KiB; longer prompts go through stdin


def claude_argv(binary: str, prompt: str | None, model: str | None, max_turns: int) -> list[str]:
    """The CLI call; prompt None means `claude -p` reads it from stdin."""
    argv = [binary, "-p"] + ([prompt] if prompt is not None else []) + ["--output-format", "stream-json", "--verbose",
            "--permission-mode", "acceptEdits", "--allowedTools", ALLOWED_TOOLS,
            "--disallowedTools", DISALLOWED_TOOLS, "--max-turns", str(max_turns)]
    if model:
        argv += ["--model", model]
    return argv


# --- helpers shared with the codex wrapper -----------------------------------------------------

def prompt_with_paths(prompt: str, workspace: Path) -> str:
    """The engine's prompt plus the concrete proposal path (a CLI agent cannot expand $VARIABLES)."""
    proposal = os.environ.get("AUTORESEARCH_PROPOSAL_FILE")
    if not proposal:
        return prompt
    try:
        shown = str(Path(proposal).resolve().relative_to(workspace.resolve()))
    except ValueError:
        shown = proposal
    return (prompt.rstrip() + "\n\nAUTORESEARCH_PROPOSAL_FILE is `" + shown + "`: write your one-line "
            "description there. If you cannot, end your final message with `DESCRIPTION: <one line>`.\n")


def read_prompt() -> str:
    path = os.environ.get("AUTORESEARCH_PROMPT_FILE")
    if not path:
        raise UserError("AUTORESEARCH_PROMPT_FILE is not set; this wrapper is run by `autoresearch loop`.")
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read the prompt file {path} ({e.strerror}).") from None


def description_from_text(text: str) -> str | None:
    """`DESCRIPTION: ...` from the agent's final message, else its last non-empty line."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        low = ln.lstrip("*_`# ").lower()
        if low.startswith("description:"):
            return ln.split(":", 1)[1].strip(" *_`") or None
    return lines[-1].strip("*_` ") if lines else None


def finish(description: str | None, usage: dict | None) -> None:
    """Write the usage file, and the proposal file unless the agent already wrote a non-empty one."""
    usage_path = os.environ.get("AUTORESEARCH_USAGE_FILE")
    if usage_path and usage:
        atomic_write_json(Path(usage_path), usage)
    proposal = os.environ.get("AUTORESEARCH_PROPOSAL_FILE")
    if proposal and description:
        p = Path(proposal)
        try:
            existing = p.read_text(encoding="utf-8").strip()
        except OSError:
            existing = ""
        if not existing:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(" ".join(description.split())[:300] + "\n", encoding="utf-8")


def stream_json(argv: list[str], on_event: Callable[[dict], None], stdin_text: str | None = None) -> int:
    """Run argv, copy its stdout line by line to ours as it arrives, and hand each JSON line to on_event.

    stderr is inherited (it lands in agent.log beside stdout). The engine kills our whole process group
    on timeout/abort, which takes the child with us.
    """
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                stdin=subprocess.PIPE if stdin_text else subprocess.DEVNULL)
    except OSError as e:
        raise UserError(f"cannot start {argv[0]} ({e.strerror}); check that the CLI is installed and executable.") from None
    if stdin_text:
        proc.stdin.write(stdin_text.encode("utf-8"))
        proc.stdin.close()
    out = sys.stdout.buffer
    for raw in _lines(proc.stdout):
        out.write(raw)
        out.flush()
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict):
            on_event(event)
    return proc.wait()


def _lines(stream) -> Iterable[bytes]:
    for raw in iter(stream.readline, b""):
        yield raw if raw.endswith(b"\n") else raw + b"\n"


# --- the wrapper process -----------------------------------------------------------------------

def run(model: str | None, max_turns: int) -> int:
    binary = shutil.which("claude")
    if not binary:
        raise UserError(MISSING)
    prompt = prompt_with_paths(read_prompt(), Path.cwd())
    state: dict = {"result": None, "model": model, "texts": []}

    def on_event(ev: dict) -> None:
        kind = ev.get("type")
        if kind == "system" and ev.get("subtype") == "init" and ev.get("model"):
            state["model"] = ev["model"]
        elif kind == "assistant":
            for block in (ev.get("message") or {}).get("content") or []:
                if isinstance(block, dict) and block.get("type") == "text":
                    state["texts"].append(block.get("text") or "")
        elif kind == "result":
            state["result"] = ev

    via_stdin = len(prompt.encode("utf-8")) > ARG_LIMIT
    rc = stream_json(claude_argv(binary, None if via_stdin else prompt, model, max_turns), on_event,
                     stdin_text=prompt if via_stdin else None)
    result = state["result"] or {}
    usage = result.get("usage") or {}
    input_tokens = sum(int(usage.get(k) or 0) for k in
                       ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
    record = {"model": state["model"], "input_tokens": input_tokens,
              "output_tokens": int(usage.get("output_tokens") or 0),
              "cost_usd": result.get("total_cost_usd", result.get("cost_usd")),
              "turns": result.get("num_turns")}
    final_text = result.get("result") if isinstance(result.get("result"), str) else "\n".join(state["texts"])
    finish(description_from_text(final_text), record if result else None)
    if result.get("is_error"):
        print(f"claude: the run ended with an error ({result.get('subtype') or 'error'}).", file=sys.stderr)
        return rc or 1
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.agents.claude")
    p.add_argument("--run", action="store_true", help="run Claude Code on $AUTORESEARCH_PROMPT_FILE")
    p.add_argument("--model", default=None)
    p.add_argument("--max-turns", type=int, default=DEFAULT_MAX_TURNS)
    args = p.parse_args(argv)
    if not args.run:
        p.print_help()
        return 2
    try:
        return run(args.model, args.max_turns)
    except UserError as e:
        print(f"claude agent: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
