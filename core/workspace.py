"""Paths of a research workspace and of its runtime state folder .autoresearch/ (DESIGN.md section 3)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".autoresearch"
TRAINER_FILES = ("program.md", "constants.py", "prepare.py", "train.py")
EDITABLE_FILE = "train.py"


@dataclass(frozen=True)
class Workspace:
    """A git repository holding the trainer files; all runtime state lives under .autoresearch/."""

    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike | None = None) -> "Workspace":
        return cls(Path(path or ".").resolve())

    # --- runtime state (.autoresearch/) ---
    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def engine_json(self) -> Path:
        return self.state_dir / "engine.json"

    @property
    def engine_lock(self) -> Path:
        return self.state_dir / "engine.lock"

    @property
    def events(self) -> Path:
        return self.state_dir / "events.jsonl"

    @property
    def control_dir(self) -> Path:
        return self.state_dir / "control"

    @property
    def ideas_dir(self) -> Path:
        return self.state_dir / "ideas"

    @property
    def config_json(self) -> Path:
        return self.state_dir / "config.json"

    @property
    def engine_log(self) -> Path:
        """stdout/stderr of a detached engine."""
        return self.state_dir / "engine.log"

    @property
    def experiments_dir(self) -> Path:
        return self.state_dir / "experiments"

    def experiment_dir(self, exp_id: str) -> Path:
        return self.experiments_dir / exp_id

    # --- upstream-compatible files at the top level ---
    @property
    def results_tsv(self) -> Path:
        return self.root / "results.tsv"

    @property
    def run_log(self) -> Path:
        return self.root / "run.log"

    @property
    def train_py(self) -> Path:
        return self.root / EDITABLE_FILE

    @property
    def program_md(self) -> Path:
        return self.root / "program.md"

    def has_state(self) -> bool:
        return self.state_dir.is_dir()


def format_experiment_id(n: int) -> str:
    """Experiment ids are zero-padded (0001, 0002, ...) and never reused."""
    return f"{n:04d}"


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write text to path so that readers see either the old or the new file, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, default=None):
    """Read a JSON file; a missing, half-written or invalid file gives default (the UI must never crash on it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default
