"""create_workspace: a fresh research workspace (trainer files, profile applied, .gitignore, first commit)."""

from __future__ import annotations

import shutil
from pathlib import Path

import core

from .errors import UserError
from .workspace import TRAINER_FILES, Workspace

GITIGNORE = "results.tsv\nrun.log\n.autoresearch/\n__pycache__/\n*.pyc\n"


def template_dir() -> Path:
    """The trainer files: the project root next to core/, else a copy packaged inside core/ (wheel installs)."""
    root = Path(core.__file__).resolve().parent.parent
    if all((root / f).is_file() for f in TRAINER_FILES):
        return root
    packaged = Path(core.__file__).resolve().parent / "_trainer"
    if all((packaged / f).is_file() for f in TRAINER_FILES):
        return packaged
    raise UserError(f"the trainer files ({', '.join(TRAINER_FILES)}) were not found next to the core package; "
                    "reinstall autoresearch from its repository.")


def _apply_profile(root: Path, profile: str, dataset: str | None, time_budget: float | None) -> None:
    from .setup import apply_profile  # the trainer's side: rewrites constants.py and train.py's size knobs

    apply_profile(root, profile, dataset=dataset, time_budget=time_budget)


def create_workspace(path, profile: str = "cpu", dataset: str = "pystdlib",
                     time_budget: float | None = None) -> Workspace:
    """Copy program.md, constants.py, prepare.py and train.py into path, apply the hardware profile, write
    .gitignore and make the first commit. Data preparation is not done here (`autoresearch setup` does it)."""
    import git

    root = Path(path).expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        if (root / ".git").exists() or any((root / f).exists() for f in TRAINER_FILES):
            raise UserError(f"{root} already holds a workspace or a git repository; pick an empty folder.")
    root.mkdir(parents=True, exist_ok=True)
    src = template_dir()
    for name in TRAINER_FILES:
        shutil.copyfile(src / name, root / name)
    _apply_profile(root, profile, dataset, time_budget)
    (root / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    from .ratchet import identity_env

    repo = git.Repo.init(root)
    repo.git.add("--", ".gitignore", *TRAINER_FILES)
    with repo.git.custom_environment(**identity_env(repo.git)):
        repo.git.commit("-q", "--no-verify", "-m", f"autoresearch workspace ({profile} profile, {dataset} data)")
    return Workspace(root)
