"""The one small interface every agent implements: a command line (run as a subprocess) plus its environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..workspace import Workspace


@dataclass
class AgentContext:
    """What the engine hands an agent for one proposal."""

    workspace: Workspace
    exp_id: str
    prompt: str
    prompt_file: Path  # AUTORESEARCH_PROMPT_FILE: the prompt, already written by the engine
    proposal_file: Path  # AUTORESEARCH_PROPOSAL_FILE: where the agent may write its one-line description
    # AUTORESEARCH_USAGE_FILE: where the agent may write its usage as JSON (see core.agents.cli.Usage):
    # {"model", "input_tokens", "output_tokens", "cost_usd", "cost_estimated", "turns", "error", "error_kind"}
    usage_file: Path
    log_file: Path  # experiments/NNNN/agent.log (the runner streams the subprocess output there)
    timeout: float
    extra: dict = field(default_factory=dict)


class Agent:
    """An agent proposes one change to train.py by running as a subprocess in the workspace."""

    name: str = "agent"
    # how the description reaches the engine: "file" ($AUTORESEARCH_PROPOSAL_FILE) or "final_message" (a CLI
    # that may write train.py only; its wrapper takes the `DESCRIPTION:` line of its final message)
    hand_in: str = "file"

    def command(self, ctx: AgentContext) -> list[str]:
        """argv of the subprocess (cwd = the agent's checkout: the workspace, or its worktree)."""
        raise NotImplementedError

    def env(self, ctx: AgentContext) -> dict[str, str]:
        """Extra environment variables (the engine adds the AUTORESEARCH_* paths itself)."""
        return {}

    def describe(self) -> str:
        """Short label for status displays, e.g. 'anthropic (claude-sonnet-4-5)'."""
        return self.name


def agent_env(ctx: AgentContext) -> dict[str, str]:
    """The AUTORESEARCH_* variables every agent subprocess gets."""
    return {
        "AUTORESEARCH_PROMPT_FILE": str(ctx.prompt_file),
        "AUTORESEARCH_PROPOSAL_FILE": str(ctx.proposal_file),
        "AUTORESEARCH_USAGE_FILE": str(ctx.usage_file),
        "AUTORESEARCH_EXPERIMENT": ctx.exp_id,
    }
