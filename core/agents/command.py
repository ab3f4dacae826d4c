"""command: any command line the user gives (`--agent command --agent-cmd "CMD"`), run through /bin/sh."""

from __future__ import annotations

from ..errors import UserError
from .base import Agent, AgentContext


class CommandAgent(Agent):
    """Runs CMD with `/bin/sh -c` in the workspace; it gets the AUTORESEARCH_* variables like every agent."""

    name = "command"

    def __init__(self, config: dict):
        cmd = (config.get("agent_cmd") or "").strip()
        if not cmd:
            raise UserError('the command agent needs a command line; pass --agent-cmd "CMD" '
                            '(CMD edits train.py and may write a description to $AUTORESEARCH_PROPOSAL_FILE).')
        self.cmd = cmd

    def command(self, ctx: AgentContext) -> list[str]:
        return ["/bin/sh", "-c", self.cmd]

    def describe(self) -> str:
        short = self.cmd if len(self.cmd) <= 40 else self.cmd[:37] + "..."
        return f"command ({short})"
