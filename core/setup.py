"""`autoresearch setup`: apply a hardware profile to constants.py and train.py's size knobs, then prepare data."""

from __future__ import annotations

import sys
from pathlib import Path

from . import pyconst
from .errors import UserError
from .profiles import DEFAULT_PROFILE, TRAIN_KNOBS, Profile, get_profile
from .profiles import PROFILES as _PROFILES

PROFILES = list(_PROFILES)
DATASETS = ["climbmix", "fineweb-edu", "tinystories", "pystdlib"]
DEFAULT_DATASET = "climbmix"
SETUP_FILES = ("constants.py", "train.py")

CONSTANTS_TEMPLATE = '''"""Fixed evaluation constants of this workspace: read-only to the agent, written by `autoresearch setup`."""

MAX_SEQ_LEN = {MAX_SEQ_LEN}  # tokens per training row and per evaluation row
TIME_BUDGET = {TIME_BUDGET}  # seconds of training per experiment (compilation steps excluded)
STARTUP_ALLOWANCE = {STARTUP_ALLOWANCE}  # seconds beyond TIME_BUDGET to hand over the model (imports, compile, export)
EVAL_TOKENS = {EVAL_TOKENS}  # validation tokens scored by evaluate_bpb
VOCAB_SIZE = {VOCAB_SIZE}  # BPE vocabulary size, 4 special tokens included
DATASET = {DATASET}  # data source: climbmix, fineweb-edu, tinystories, pystdlib or a folder path
PROFILE = {PROFILE}  # hardware profile these values came from (see core/profiles.py)
'''


def resolve_dataset(dataset: str | None) -> str:
    """A built-in dataset name, or the absolute path of an existing folder of .parquet/.txt files."""
    if dataset is None:
        return DEFAULT_DATASET
    if dataset in DATASETS:
        return dataset
    path = Path(dataset).expanduser()
    if path.is_dir():
        return str(path.resolve())
    raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}, or give an existing "
                    "folder of .parquet/.txt files.")


def _sized(profile: Profile, seq_len: int | None) -> dict:
    """The profile's train.py knobs, with the batch sizes adapted to a MAX_SEQ_LEN override.

    Keeps the tokens per forward pass and the gradient-accumulation count of the profile, so memory and
    optimizer steps stay roughly where the profile put them and TOTAL_BATCH_SIZE stays divisible.
    """
    knobs = profile.knobs()
    if seq_len is None or seq_len == profile.max_seq_len:
        return knobs
    per_pass = profile.device_batch_size * profile.max_seq_len
    accum = profile.total_batch_size // per_pass
    device_batch = max(1, per_pass // seq_len)
    knobs["DEVICE_BATCH_SIZE"] = device_batch
    knobs["TOTAL_BATCH_SIZE"] = device_batch * seq_len * accum
    return knobs


def _rewrite_knobs(text: str, knobs: dict) -> str:
    """Replace the value of each top-level `NAME = value  # comment` line of train.py, keeping the comment."""
    try:
        text, missing = pyconst.rewrite(text, {k: pyconst.source_text(v, k) for k, v in knobs.items()})
    except SyntaxError as e:
        raise UserError(f"train.py does not parse (line {e.lineno}: {e.msg}); fix it or restore it from the "
                        "project's train.py, then run setup again.") from None
    if missing:
        raise UserError(f"train.py has no top-level line `{missing[0]} = ...` (needed: {', '.join(TRAIN_KNOBS)}); "
                        "restore it from the project's train.py and run setup again.")
    return text


def apply_profile(ws_root, profile: str = DEFAULT_PROFILE, dataset: str | None = None,
                  seq_len: int | None = None, time_budget: float | None = None) -> dict:
    """Write constants.py and the size-knob lines of train.py for a profile (no data prep, no commit).

    Returns {"profile", "dataset", "constants": {...}, "knobs": {...}}.
    """
    root = Path(ws_root)
    prof = get_profile(profile)
    dataset = resolve_dataset(dataset)
    if seq_len is not None and (not isinstance(seq_len, int) or seq_len < 16 or seq_len > 65536):
        raise UserError(f"--seq-len must be a whole number of tokens between 16 and 65536, not {seq_len!r}.")
    if time_budget is not None:
        try:
            time_budget = float(time_budget)
        except (TypeError, ValueError):
            time_budget = -1.0
        if not 0 < time_budget <= 7 * 86400:
            raise UserError("--time-budget must be a positive number of seconds (at most a week).")
    train_path = root / "train.py"
    try:
        train_text = train_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{root} has no train.py; run setup inside a workspace (a copy of the autoresearch "
                        "repository).") from None
    constants = prof.constants()
    if seq_len is not None:
        constants["MAX_SEQ_LEN"] = seq_len
    if time_budget is not None:
        constants["TIME_BUDGET"] = int(time_budget) if time_budget.is_integer() else time_budget
    knobs = _sized(prof, seq_len)
    new_train = _rewrite_knobs(train_text, knobs)
    values = {k: pyconst.source_text(v, k) for k, v in constants.items()}
    values.update(DATASET=pyconst.source_text(dataset), PROFILE=pyconst.source_text(prof.name))
    (root / "constants.py").write_text(CONSTANTS_TEMPLATE.format(**values), encoding="utf-8")
    if new_train != train_text:
        train_path.write_text(new_train, encoding="utf-8")
    return {"profile": prof.name, "dataset": dataset, "constants": constants, "knobs": knobs}


# ---------------------------------------------------------------------------------------------------
# git: commit the rewrite so that `autoresearch loop` starts on a clean tree


def _open_repo(root: Path):
    """The workspace's own git repository, or None when it is not one (setup then only writes the files)."""
    import git

    if not (root / ".git").exists():
        return None
    try:
        return git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None


def _files_clean(repo) -> bool:
    """True when constants.py and train.py are tracked and have no uncommitted changes."""
    try:
        _ = repo.head.commit
    except ValueError:  # no commits yet
        return False
    tracked = repo.git.ls_files("--", *SETUP_FILES).split()
    if set(tracked) != set(SETUP_FILES):
        return False
    return repo.git.status("--porcelain", "--", *SETUP_FILES).strip() == ""


def _commit(repo, message: str) -> str:
    """Commit only constants.py and train.py (other staged work of the user stays staged, uncommitted)."""
    from .ratchet import identity_env

    with repo.git.custom_environment(**identity_env(repo.git)):
        repo.git.commit("-q", "--no-verify", "-m", message, "--", *SETUP_FILES)
    return repo.head.commit.hexsha


# ---------------------------------------------------------------------------------------------------
# data preparation (prepare.py in the workspace, as a subprocess)


def run_prepare(root: Path, dataset: str, num_shards: int | None = None) -> None:
    """Run the workspace's prepare.py, streaming its output; a failure becomes a UserError with its last line."""
    if not (root / "prepare.py").is_file():
        raise UserError(f"{root} has no prepare.py; run setup inside a workspace (a copy of the autoresearch "
                        "repository).")
    from .runner import run

    argv = [sys.executable, "prepare.py", "--dataset", dataset]
    if num_shards is not None:
        argv += ["--num-shards", str(num_shards)]

    def echo(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()

    # in its own process group, like every child of the engine: an interrupt (^C) ends downloads and workers too
    res = run(argv, cwd=root, env=None, logs=[], timeout=None, cancel=None, on_output=echo)
    if res.error:
        raise UserError(f"data preparation could not start: {res.error}; check the Python installation.")
    rc = res.returncode
    if rc != 0:
        tail = [ln.strip() for ln in res.tail if ln.strip()]
        last = tail[-1] if tail else f"exit code {rc}"
        last = last.removeprefix("prepare.py: ")
        raise UserError(f"data preparation failed: {last.rstrip('.')}; fix that and run setup again "
                        "(finished downloads are kept).")


def cmd_setup(ws, args) -> int:
    """autoresearch setup --profile P --dataset D [--seq-len N] [--time-budget S] [--num-shards N] [--no-prepare]"""
    root = Path(ws.root)
    profile = args.profile or DEFAULT_PROFILE
    get_profile(profile)
    dataset = resolve_dataset(args.dataset)
    repo = _open_repo(root)
    clean_before = repo is not None and _files_clean(repo)
    info = apply_profile(root, profile, dataset, seq_len=getattr(args, "seq_len", None),
                         time_budget=getattr(args, "time_budget", None))
    c, k = info["constants"], info["knobs"]
    print(f"profile {profile}: MAX_SEQ_LEN {c['MAX_SEQ_LEN']}, TIME_BUDGET {c['TIME_BUDGET']} s, EVAL_TOKENS "
          f"{c['EVAL_TOKENS']:,}, VOCAB_SIZE {c['VOCAB_SIZE']}, DEPTH {k['DEPTH']}, WINDOW_PATTERN "
          f"{k['WINDOW_PATTERN']}, TOTAL_BATCH_SIZE {k['TOTAL_BATCH_SIZE']:,}, DEVICE_BATCH_SIZE "
          f"{k['DEVICE_BATCH_SIZE']}; dataset {dataset}")
    if args.profile is None:
        try:
            from .hardware import recommend_profile

            recommended = recommend_profile()
        except Exception:  # the hint is optional; never fail setup over it
            recommended = profile
        if recommended != profile:
            print(f"note: this machine looks like the {recommended!r} profile; "
                  f"run `autoresearch setup --profile {recommended}` to use it.")
    print("wrote constants.py and the size knobs of train.py")

    if repo is None:
        print("not a git repository: nothing committed (`autoresearch loop` needs one).")
    elif not clean_before:
        print("constants.py/train.py had uncommitted changes (or were not tracked): left uncommitted; "
              "commit them before `autoresearch loop`.")
    elif repo.git.status("--porcelain", "--", *SETUP_FILES).strip():
        sha = _commit(repo, f"setup: profile {profile}, dataset {Path(dataset).name if '/' in dataset else dataset}")
        print(f"committed the rewrite as {sha[:7]} (setup: profile {profile}); the tree is ready for `autoresearch loop`.")
    else:
        print("constants.py/train.py already had these values: nothing to commit.")

    if getattr(args, "no_prepare", False):
        print("skipped data preparation (--no-prepare); run `python prepare.py` before the first experiment.")
        return 0
    print(f"preparing data and tokenizer: python prepare.py --dataset {dataset}", flush=True)
    run_prepare(root, dataset, getattr(args, "num_shards", None))
    print("setup done: run `autoresearch run` for a baseline, then `autoresearch loop`.")
    return 0
