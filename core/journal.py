"""The ratchet's journal (.autoresearch/ratchet.json): where the branch must be, written before it moves.

Intent first, then act, then confirm: before the engine moves its branch it writes the commit it stands on
now and the commit it is about to move to (with the experiment whose results.tsv row decides it). After a
kill -9 at any instruction, recovery reads this and puts the branch where the recorded rows say it belongs;
an agent that moved the branch itself (git update-ref from its worktree) is undone the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .workspace import Workspace, atomic_write_json, read_json


@dataclass(frozen=True)
class Journal:
    branch: str
    head: str  # where the branch is (a measured commit, or a program.md commit on top of one)
    next: str | None = None  # where it is about to move
    next_id: str | None = None  # the experiment whose keep row makes `next` the head (None: a program.md commit)
    program_blob: str | None = None  # about to commit a person's program.md: the git blob id of its new text

    def to_json(self) -> dict:
        return {"branch": self.branch, "head": self.head, "next": self.next, "next_id": self.next_id,
                "program_blob": self.program_blob}

    @classmethod
    def from_json(cls, data) -> "Journal | None":
        if not isinstance(data, dict) or not isinstance(data.get("branch"), str) or not isinstance(data.get("head"), str):
            return None
        nxt, nid, blob = data.get("next"), data.get("next_id"), data.get("program_blob")
        return cls(data["branch"], data["head"], nxt if isinstance(nxt, str) else None,
                   nid if isinstance(nid, str) else None, blob if isinstance(blob, str) else None)


def path(ws: Workspace):
    return ws.state_dir / "ratchet.json"


def read(ws: Workspace) -> Journal | None:
    return Journal.from_json(read_json(path(ws), None))


def write(ws: Workspace, journal: Journal) -> None:
    atomic_write_json(path(ws), journal.to_json())  # fsynced: the intent is on disk before the branch moves
