"""anthropic: the built-in agent, a tool-use loop on the Anthropic Messages API (read, edit train.py, submit).

Usage (the engine runs it with cwd = workspace, ANTHROPIC_API_KEY in the environment):
  python -m core.agents.anthropic_agent [--model M] [--max-turns N]

Tools: read_file(path) (workspace files only), edit_train_py(old_str, new_str), write_train_py(content),
submit(description) which ends the loop. Token usage and a cost estimated from core.agents.pricing are
written to $AUTORESEARCH_USAGE_FILE after every turn (so an aborted run still has them); an API error
is recorded there too (`error`, `error_kind`), never as the description. ANTHROPIC_BASE_URL is
honoured (the tests point it at a loopback server). The key is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..description import from_text as description_from_text
from ..errors import UserError
from ..workspace import STATE_DIR
from .base import Agent, AgentContext
from .cli import Usage, one_sentence
from .pricing import estimate_cost

DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_MAX_TURNS = 25
MAX_TOKENS = 8192
READ_LIMIT = 200_000  # characters returned by read_file; train.py is ~30 KB

SYSTEM = ("You are the research agent of autoresearch. You improve a small GPT pretraining script, train.py, "
          "one experiment at a time. You can only read workspace files and edit train.py through the tools; "
          "the engine trains and measures val_bpb after you submit. Make one focused change, then call "
          "submit with a one-line description of it.")

TOOLS = [
    {"name": "read_file",
     "description": "Read a text file of the workspace (e.g. train.py, prepare.py, constants.py, program.md).",
     "input_schema": {"type": "object", "properties": {
         "path": {"type": "string", "description": "path relative to the workspace root"}},
         "required": ["path"]}},
    {"name": "edit_train_py",
     "description": "Replace one exact, unique occurrence of old_str in train.py with new_str.",
     "input_schema": {"type": "object", "properties": {
         "old_str": {"type": "string", "description": "text to replace; must occur exactly once"},
         "new_str": {"type": "string", "description": "replacement text"}},
         "required": ["old_str", "new_str"]}},
    {"name": "write_train_py",
     "description": "Replace the whole content of train.py (use edit_train_py for small changes).",
     "input_schema": {"type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"]}},
    {"name": "submit",
     "description": "Finish: the change to train.py is ready. Give a one-line description of what you changed "
                    "and why (under 100 characters), e.g. 'MATRIX_LR 0.04 -> 0.05: faster early progress'.",
     "input_schema": {"type": "object", "properties": {"description": {"type": "string"}},
                      "required": ["description"]}},
]


class AnthropicAgent(Agent):
    """Built-in agent on the anthropic SDK, run as `python -m core.agents.anthropic_agent`."""

    name = "anthropic"

    def __init__(self, config: dict):
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise UserError("ANTHROPIC_API_KEY is not set; export your Anthropic API key "
                            "or use --agent mutate (offline) or --agent claude.")
        self.model = config.get("model") or DEFAULT_MODEL
        self.max_turns = int(config.get("max_turns") or DEFAULT_MAX_TURNS)

    def command(self, ctx: AgentContext) -> list[str]:
        return [sys.executable, "-m", "core.agents.anthropic_agent", "--model", self.model,
                "--max-turns", str(self.max_turns)]

    def describe(self) -> str:
        return f"anthropic ({self.model})"


# --- tools -------------------------------------------------------------------------------------

class ToolError(Exception):
    """A tool call the model got wrong; the message goes back to the model as an error result."""


class Tools:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.train = self.root / "train.py"
        self.edited = False
        self.description: str | None = None

    def _inside(self, path: str) -> Path:
        p = (self.root / path).resolve()
        if p != self.root and self.root not in p.parents:
            raise ToolError(f"{path} is outside the workspace")
        rel = p.relative_to(self.root).parts
        if rel and rel[0] in (".git", STATE_DIR):
            raise ToolError(f"{path} is engine or git state, not a workspace file")
        return p

    def read_file(self, path: str) -> str:
        p = self._inside(str(path))
        if p.is_dir():
            names = sorted(c.name + ("/" if c.is_dir() else "") for c in p.iterdir()
                           if c.name not in (".git", STATE_DIR))
            return "\n".join(names)
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise ToolError(f"{path} does not exist") from None
        except OSError as e:
            raise ToolError(f"cannot read {path}: {e.strerror}") from None
        return text if len(text) <= READ_LIMIT else text[:READ_LIMIT] + "\n[... truncated]"

    def _read_train(self) -> str:
        try:
            return self.train.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ToolError("train.py does not exist; recreate it with write_train_py") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ToolError(f"cannot read train.py: {e}") from None

    def _write_train(self, text: str) -> None:
        try:
            self.train.write_text(text, encoding="utf-8")
        except OSError as e:
            raise ToolError(f"cannot write train.py: {e.strerror or e}") from None

    def edit_train_py(self, old_str: str, new_str: str) -> str:
        text = self._read_train()
        n = text.count(old_str) if old_str else 0
        if n != 1:
            raise ToolError(f"old_str occurs {n} times in train.py; it must occur exactly once "
                            "(include more surrounding lines to make it unique)")
        self._write_train(text.replace(old_str, new_str, 1))
        self.edited = True
        return "train.py edited"

    def write_train_py(self, content: str) -> str:
        if not content.strip():
            raise ToolError("refusing to write an empty train.py")
        self._write_train(content)
        self.edited = True
        return f"train.py written ({len(content.splitlines())} lines)"

    def submit(self, description: str) -> str:
        desc = " ".join(str(description).split())
        if not desc:
            raise ToolError("the description is empty")
        self.description = desc
        return "submitted"

    def call(self, name: str, args: dict) -> str:
        fn = {"read_file": self.read_file, "edit_train_py": self.edit_train_py,
              "write_train_py": self.write_train_py, "submit": self.submit}.get(name)
        if fn is None:
            raise ToolError(f"unknown tool {name}")
        try:
            return fn(**(args or {}))
        except TypeError:
            raise ToolError(f"bad arguments for {name}: {sorted((args or {}).keys())}") from None


# --- the loop ----------------------------------------------------------------------------------

class Redactor:
    """Prints to stdout with the API key masked, whatever a message or an exception happens to contain."""

    def __init__(self, secret: str | None):
        self.secret = secret if secret and len(secret) >= 8 else None

    def redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text

    def __call__(self, text: str, err: bool = False) -> None:
        text = self.redact(text)
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _api_message(e) -> str:
    """The API's own error message (the SDK's str() is `Error code: 429 - {...}`)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("message"):
        return _short(body["error"]["message"])
    return _short(getattr(e, "message", e))


def _short(value, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def run(model: str, max_turns: int) -> int:
    import anthropic

    say = Redactor(os.environ.get("ANTHROPIC_API_KEY"))
    prompt_path = os.environ.get("AUTORESEARCH_PROMPT_FILE")
    prompt = Path(prompt_path).read_text(encoding="utf-8") if prompt_path else "Improve train.py."
    tools = Tools(Path.cwd())
    try:
        train_text = tools.read_file("train.py")
    except ToolError:
        train_text = "(train.py is missing)"
    # train.py goes into the first message: it saves the model a round trip it would always make.
    first = f"{prompt.rstrip()}\n\n## Current train.py\n\n```python\n{train_text}\n```\n"
    messages: list[dict] = [{"role": "user", "content": first}]
    totals = {"input": 0, "output": 0, "cache_write": 0, "cache_read": 0}
    usage = Usage(model=model, input_tokens=0, output_tokens=0, turns=0)

    def record(turns: int) -> None:
        usage.input_tokens = totals["input"] + totals["cache_write"] + totals["cache_read"]
        usage.output_tokens = totals["output"]
        usage.cost_usd = estimate_cost(model, totals["input"], totals["output"], totals["cache_write"],
                                       totals["cache_read"])
        usage.cost_estimated = usage.cost_usd is not None
        usage.turns = turns
        usage.write()

    def fail(kind: str, message: str) -> int:
        usage.error, usage.error_kind = one_sentence(say.redact(message)), kind
        usage.write()
        say(f"anthropic agent: {usage.error}", err=True)
        return 1

    client = anthropic.Anthropic(max_retries=3, timeout=300.0)
    nudged = False
    last_text = ""
    for turn in range(1, max_turns + 1):
        try:
            resp = client.messages.create(model=model, max_tokens=MAX_TOKENS, system=SYSTEM, tools=TOOLS,
                                          messages=messages)
        except anthropic.AuthenticationError:
            return fail("auth", "the API rejected ANTHROPIC_API_KEY (401); check the key")
        except anthropic.PermissionDeniedError as e:
            return fail("auth", f"the API refused this key (403): {_api_message(e)}")
        except anthropic.RateLimitError as e:
            return fail("rate_limit", f"the API is rate limiting this key (429): {_api_message(e)}")
        except anthropic.NotFoundError:
            return fail("other", f"model {model!r} was not found; pass a valid --model")
        except anthropic.APIConnectionError:
            return fail("network", "cannot reach the Anthropic API (connection failed); check the network "
                                   "or ANTHROPIC_BASE_URL")
        except anthropic.APIStatusError as e:
            return fail("other", f"the API answered HTTP {e.status_code}: {_api_message(e)}")
        u = resp.usage
        totals["input"] += int(getattr(u, "input_tokens", 0) or 0)
        totals["output"] += int(getattr(u, "output_tokens", 0) or 0)
        totals["cache_write"] += int(getattr(u, "cache_creation_input_tokens", 0) or 0)
        totals["cache_read"] += int(getattr(u, "cache_read_input_tokens", 0) or 0)
        record(turn)

        content = [b.model_dump(exclude_none=True) for b in resp.content]
        messages.append({"role": "assistant", "content": content})
        results = []
        for block in resp.content:
            if block.type == "text":
                last_text = block.text
                say(f"[turn {turn}] {block.text.strip()}")
            elif block.type == "tool_use":
                args = block.input if isinstance(block.input, dict) else {}
                shown = {k: _short(v, 80) for k, v in args.items()}
                say(f"[turn {turn}] tool {block.name} {shown}")
                try:
                    out, is_error = tools.call(block.name, args), False
                except ToolError as e:
                    out, is_error = f"error: {e}", True
                    say(f"[turn {turn}]   -> {out}")
                results.append({"type": "tool_result", "tool_use_id": block.id, "content": out,
                                "is_error": is_error})
        if tools.description is not None:
            break
        if results:
            messages.append({"role": "user", "content": results})
            continue
        # The model stopped without calling submit: ask once, then fall back to its last words.
        if nudged or resp.stop_reason == "max_tokens":
            break
        nudged = True
        messages.append({"role": "user", "content": "Call the submit tool now with a one-line description of "
                                                    "your change to train.py (or make the change first)."})
    else:
        say(f"anthropic agent: stopped after {max_turns} turns without submit.", err=True)

    description = tools.description
    if description is None and tools.edited:
        description = description_from_text(last_text)
    proposal = os.environ.get("AUTORESEARCH_PROPOSAL_FILE")
    if description and proposal:
        Path(proposal).write_text(description[:300] + "\n", encoding="utf-8")
    if not tools.edited:
        return fail("other", "no change was made to train.py")
    say(f"proposal: {description or '(no description)'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.agents.anthropic_agent")
    p.add_argument("--model", default=os.environ.get("AUTORESEARCH_MODEL") or DEFAULT_MODEL)
    p.add_argument("--max-turns", type=int, default=DEFAULT_MAX_TURNS)
    args = p.parse_args(argv)
    if not os.environ.get("ANTHROPIC_API_KEY"):
        print("anthropic agent: ANTHROPIC_API_KEY is not set; export your API key.", file=sys.stderr)
        return 1
    try:
        return run(args.model, max(1, args.max_turns))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
