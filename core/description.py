"""An experiment's one-line description: from the agent's proposal file, its final message, or the diff size."""

from __future__ import annotations

from pathlib import Path

from .ledger import clean_description

MAX_CHARS = 200


def from_text(text: str | None) -> str | None:
    """`DESCRIPTION: ...` from an agent's final message (markdown decoration allowed), else its last non-empty
    line; None when there is no text."""
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        low = ln.lstrip("*_`# ").lower()
        if low.startswith("description:"):
            return ln.split(":", 1)[1].strip(" *_`") or None
    return lines[-1].strip("*_` ") or None if lines else None


def of_proposal(proposal_file: Path, agent_tail: list[str], added: int, removed: int,
                editable: str = "train.py") -> str:
    """The description the engine records: the agent's proposal file, else its `DESCRIPTION:` or last output
    line, else the diff size."""
    try:
        for line in proposal_file.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return clean_description(line)[:MAX_CHARS]
    except OSError:
        pass
    text = from_text("\n".join(agent_tail))
    if text:
        return clean_description(text)[:MAX_CHARS]
    return f"edit {editable} (+{added} -{removed} lines)"
