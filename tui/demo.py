"""--demo: a self-contained workspace (offline corpus, CPU profile, mutate agent, short budget) and its engine."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from core.errors import UserError

# Seconds of training per experiment. Measured on a shared 2-core box (cpu profile): an experiment takes
# startup + budget + evaluation ≈ 35 s + budget, data preparation ≈ 10 s, so with 20 s the baseline and
# the first proposal have finished (keep/discard) well inside 4 minutes of `autoresearch-tui --demo`.
DEMO_TIME_BUDGET = 20
DEMO_PROFILE = "cpu"
DEMO_DATASET = "pystdlib"
DEMO_AGENT = "mutate"
MARKER = "demo.json"  # in .autoresearch/ (git-ignored): the data for this workspace was prepared
SETUP_LOG = "demo-setup.log"  # in .autoresearch/: the output of the preparation, kept for a failure's reader


def cache_root() -> Path:
    env = os.environ.get("AUTORESEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch"


def default_demo_dir() -> Path:
    return cache_root() / "demo"


def resolve_demo_dir(arg: str | None) -> Path:
    """The demo folder; UserError if it exists but holds something else (we never write into foreign files)."""
    path = (Path(arg).expanduser() if arg else default_demo_dir()).resolve()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path} is not a directory; pass another --demo-dir.")
        if any(path.iterdir()) and not (path / "train.py").is_file():
            raise UserError(f"{path} exists and is not a demo workspace; pass an empty or new --demo-dir.")
    return path


def is_created(path: Path) -> bool:
    return (path / "train.py").is_file() and (path / ".git").exists()


def is_prepared(path: Path) -> bool:
    return (path / ".autoresearch" / MARKER).is_file() and (cache_root() / DEMO_DATASET).exists()


def setup_command(path: Path) -> list[str]:
    # --time-budget again: setup rewrites constants.py from the profile (whose budget is 45 s)
    return [sys.executable, "-m", "core.cli", "-C", str(path), "setup", "--profile", DEMO_PROFILE,
            "--dataset", DEMO_DATASET, "--time-budget", str(DEMO_TIME_BUDGET)]


def start_args() -> list[str]:
    """Extra arguments of `autoresearch loop --detach` for the demo engine."""
    return ["--agent", DEMO_AGENT]


def create(path: Path) -> None:
    try:
        from core.scaffold import create_workspace  # lazy: written by the engine's author, may not exist yet
    except ImportError as e:
        raise UserError(f"this installation cannot build the demo workspace ({e}); update autoresearch.") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    create_workspace(path, profile=DEMO_PROFILE, dataset=DEMO_DATASET, time_budget=DEMO_TIME_BUDGET)


def prepare(path: Path, on_output: Callable[[bytes], None], cancel: threading.Event | None = None) -> None:
    """Create the workspace if needed, then run `autoresearch setup` once, streaming its output.

    The first run builds the offline corpus and trains the tokenizer (a minute or two on a CPU). The setup runs
    through core.runner.run like every child of autoresearch: in its own process group, so that cancelling
    (quitting the dashboard sets `cancel`) ends prepare.py and its helpers too.
    """
    from core.runner import run
    if not is_created(path):
        on_output(f"creating the demo workspace in {path}\n".encode())
        create(path)
    if is_prepared(path):
        return
    on_output(b"preparing data: building the offline corpus and tokenizer (first run only)\n")
    log = path / ".autoresearch" / SETUP_LOG
    res = run(setup_command(path), cwd=path, env=None, logs=[log], timeout=None, cancel=cancel, on_output=on_output)
    if res.cancelled:
        raise UserError("demo preparation was cancelled.")
    if res.error or res.returncode != 0:
        why = res.error or f"exit code {res.returncode}"
        raise UserError(f"preparing the demo data failed ({why}); see the log above ({log}), then run "
                        f"`autoresearch -C {path} setup --profile {DEMO_PROFILE} --dataset {DEMO_DATASET}`.")
    marker = path / ".autoresearch" / MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"prepared_at": time.time(), "profile": DEMO_PROFILE, "dataset": DEMO_DATASET,
                                  "time_budget": DEMO_TIME_BUDGET}) + "\n")
