"""codex: the Codex CLI run non-interactively (`codex exec --full-auto --json`), its JSONL events post-processed.

Usage (the engine runs it with cwd = workspace):
  python -m core.agents.codex --run [--model M]

`--full-auto` is Codex's workspace-write sandbox: the agent can edit files in the workspace only (the
engine still rejects any change outside train.py). Every event line is copied to stdout (agent.log);
token usage from `turn.completed` goes to $AUTORESEARCH_USAGE_FILE (Codex reports no price, so cost_usd
is null) and the final agent message gives the description when the agent did not write
$AUTORESEARCH_PROPOSAL_FILE itself.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..errors import UserError
from .claude import ARG_LIMIT, CliAgent, description_from_text, finish, prompt_with_paths, read_prompt, stream_json

MISSING = "the codex CLI is not on PATH; install Codex (npm i -g @openai/codex) or use --agent anthropic|mutate."


class CodexAgent(CliAgent):
    """Codex CLI agent."""

    name = "codex"
    module = "core.agents.codex"
    missing = MISSING


def codex_argv(binary: str, prompt: str | None, model: str | None) -> list[str]:
    """The CLI call; prompt None means the prompt is read from stdin (`-`)."""
    argv = [binary, "exec", "--full-auto", "--json"]
    if model:
        argv += ["--model", model]
    return argv + [prompt if prompt is not None else "-"]


def run(model: str | None) -> int:
    binary = shutil.which("codex")
    if not binary:
        raise UserError(MISSING)
    prompt = prompt_with_paths(read_prompt(), Path.cwd())
    state: dict = {"messages": [], "input": 0, "output": 0, "turns": 0, "failed": None}

    def on_event(ev: dict) -> None:
        kind = ev.get("type")
        if kind == "item.completed":
            item = ev.get("item") or {}
            # the item kind was called item_type in early releases of the JSON event stream
            if (item.get("type") or item.get("item_type")) in ("agent_message", "assistant_message"):
                state["messages"].append(item.get("text") or "")
        elif kind == "turn.completed":
            usage = ev.get("usage") or {}
            state["input"] += int(usage.get("input_tokens") or 0)
            state["output"] += int(usage.get("output_tokens") or 0)
            state["turns"] += 1
        elif kind in ("turn.failed", "error"):
            err = ev.get("error") if isinstance(ev.get("error"), dict) else ev
            state["failed"] = str(err.get("message") or kind)

    via_stdin = len(prompt.encode("utf-8")) > ARG_LIMIT
    rc = stream_json(codex_argv(binary, None if via_stdin else prompt, model), on_event,
                     stdin_text=prompt if via_stdin else None)
    usage = None
    if state["turns"]:
        usage = {"model": model, "input_tokens": state["input"], "output_tokens": state["output"],
                 "cost_usd": None, "turns": state["turns"]}
    last = state["messages"][-1] if state["messages"] else ""
    finish(description_from_text(last), usage)
    if state["failed"]:
        print(f"codex: the turn failed ({state['failed'][:200]}).", file=sys.stderr)
        return rc or 1
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.agents.codex")
    p.add_argument("--run", action="store_true", help="run Codex on $AUTORESEARCH_PROMPT_FILE")
    p.add_argument("--model", default=None)
    args = p.parse_args(argv)
    if not args.run:
        p.print_help()
        return 2
    try:
        return run(args.model)
    except UserError as e:
        print(f"codex agent: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
