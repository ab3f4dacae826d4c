"""Agent registry: make_agent(name, config) builds the agent the engine runs as a subprocess."""

from __future__ import annotations

import os

from ..errors import UserError
from .base import Agent, AgentContext, agent_env
from .cli import find_binary

AGENTS = ("auto", "claude", "codex", "anthropic", "command", "mutate")

__all__ = ["AGENTS", "Agent", "AgentContext", "agent_env", "make_agent", "resolve_auto"]


def resolve_auto(config: dict | None = None) -> tuple[str, str | None]:
    """`auto` picks claude if its CLI is on PATH, else anthropic if a key is set, else mutate (with a notice)."""
    if find_binary("claude"):
        return "claude", None
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "anthropic", None
    return "mutate", ("no claude CLI on PATH and no ANTHROPIC_API_KEY set, so the offline mutate agent is used "
                      "(it only tunes hyperparameter constants); install Claude Code or export ANTHROPIC_API_KEY "
                      "for an LLM agent")


def make_agent(name: str | None, config: dict | None = None) -> Agent:
    """Build an agent by name; UserError (one sentence with the fix) if it cannot run here."""
    config = dict(config or {})
    name = (name or "auto").strip().lower()
    notice = None
    if name == "auto":
        name, notice = resolve_auto(config)
    if name == "claude":
        from .claude import ClaudeAgent as cls
    elif name == "codex":
        from .codex import CodexAgent as cls
    elif name == "anthropic":
        from .anthropic_agent import AnthropicAgent as cls
    elif name == "command":
        from .command import CommandAgent as cls
    elif name == "mutate":
        from .mutate import MutateAgent as cls
    else:
        raise UserError(f"unknown agent {name!r}; choose one of {', '.join(AGENTS)}.")
    agent = cls(config)
    agent.notice = notice
    return agent
