"""`autoresearch setup`: profile -> constants.py and train.py knobs, validation, git commit, real data preparation."""

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main
from core.errors import UserError
from core.profiles import PROFILES, TRAIN_KNOBS
from core.setup import DATASETS, apply_profile

ROOT = Path(__file__).resolve().parents[1]


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def make_ws(tmp_path: Path, repo: bool = True) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("constants.py", "prepare.py", "train.py"):
        shutil.copyfile(ROOT / name, ws / name)
    if repo:
        git(ws, "init", "-q")
        git(ws, "config", "user.name", "t")
        git(ws, "config", "user.email", "t@example.com")
        git(ws, "add", "-A")
        git(ws, "commit", "-q", "-m", "init")
    return ws


def constants(ws: Path) -> dict:
    return {k: v for k, v in runpy.run_path(str(ws / "constants.py")).items() if k.isupper()}


def knob_lines(text: str) -> dict:
    return {line.split(" =")[0]: line for line in text.splitlines() if line.split(" =")[0] in TRAIN_KNOBS}


def knobs(ws: Path) -> dict:
    return {k: eval(line.split("=", 1)[1].split("#")[0]) for k, line in knob_lines((ws / "train.py").read_text()).items()}


def test_apply_profile_rewrites_only_constants_and_knob_lines(tmp_path):
    ws = make_ws(tmp_path, repo=False)
    original_train = (ws / "train.py").read_text()
    original_constants = (ws / "constants.py").read_text()
    info = apply_profile(ws, "cpu", "pystdlib")
    assert info["profile"] == "cpu" and info["dataset"] == "pystdlib"
    p = PROFILES["cpu"]
    assert constants(ws) == {"MAX_SEQ_LEN": p.max_seq_len, "TIME_BUDGET": p.time_budget, "EVAL_TOKENS": p.eval_tokens,
                             "VOCAB_SIZE": p.vocab_size, "DATASET": "pystdlib", "PROFILE": "cpu",
                             "STARTUP_ALLOWANCE": p.startup_allowance}
    assert '"""' in (ws / "constants.py").read_text() and "read-only to the agent" in (ws / "constants.py").read_text()
    new_train = (ws / "train.py").read_text()
    old_lines, new_lines = original_train.splitlines(), new_train.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert {b.split(" =")[0] for _, b in changed} <= set(TRAIN_KNOBS) and len(changed) >= 4
    for a, b in changed:  # the trailing comment is kept
        assert a.split("#", 1)[1] == b.split("#", 1)[1]
    assert 'WINDOW_PATTERN = "L"  #' in new_train and f"DEPTH = {p.depth}  #" in new_train
    assert "TOTAL_BATCH_SIZE = 2**13  #" in new_train
    # back to the default profile: byte for byte the files of the repository
    apply_profile(ws, "h100", "climbmix")
    assert (ws / "train.py").read_text() == original_train
    assert (ws / "constants.py").read_text() == original_constants


def test_every_profile_gives_a_consistent_batch(tmp_path):
    ws = make_ws(tmp_path, repo=False)
    for name, p in PROFILES.items():
        apply_profile(ws, name, "pystdlib")
        train = knobs(ws)
        c = constants(ws)
        assert train["TOTAL_BATCH_SIZE"] % (train["DEVICE_BATCH_SIZE"] * c["MAX_SEQ_LEN"]) == 0, name
        assert (train["DEPTH"], train["WINDOW_PATTERN"], c["PROFILE"]) == (p.depth, p.window_pattern, name)


def test_seq_len_and_time_budget_overrides(tmp_path):
    ws = make_ws(tmp_path, repo=False)
    apply_profile(ws, "24gb", "tinystories", seq_len=1000, time_budget=12.5)
    c = constants(ws)
    assert c["MAX_SEQ_LEN"] == 1000 and c["TIME_BUDGET"] == 12.5 and c["DATASET"] == "tinystories"
    k = knobs(ws)
    total, device = k["TOTAL_BATCH_SIZE"], k["DEVICE_BATCH_SIZE"]
    assert total % (device * 1000) == 0 and device * 1000 <= PROFILES["24gb"].device_batch_size * 512
    apply_profile(ws, "cpu", "pystdlib", time_budget=10)
    assert "TIME_BUDGET = 10  #" in (ws / "constants.py").read_text()
    folder = tmp_path / "my data"
    folder.mkdir()
    apply_profile(ws, "cpu", str(folder))
    assert constants(ws)["DATASET"] == str(folder.resolve())


@pytest.mark.parametrize("kwargs, message", [
    (dict(profile="h200"), "unknown profile 'h200'; choose one of: h100, a100-40gb, 24gb, 6gb, mps, cpu."),
    (dict(dataset="openwebtext"), "unknown dataset 'openwebtext'; choose one of: climbmix, fineweb-edu, "
                                  "tinystories, pystdlib, or give an existing folder of .parquet/.txt files."),
    (dict(seq_len=3), "--seq-len must be"),
    (dict(time_budget=-5), "--time-budget must be"),
])
def test_bad_values_are_one_sentence_errors(tmp_path, kwargs, message):
    ws = make_ws(tmp_path, repo=False)
    before = (ws / "train.py").read_text(), (ws / "constants.py").read_text()
    with pytest.raises(UserError) as e:
        apply_profile(ws, **{"profile": "cpu", "dataset": "pystdlib", **kwargs})
    assert str(e.value).startswith(message)
    assert ((ws / "train.py").read_text(), (ws / "constants.py").read_text()) == before  # nothing written


def test_missing_knob_line_is_reported(tmp_path):
    ws = make_ws(tmp_path, repo=False)
    train = ws / "train.py"
    train.write_text(train.read_text().replace("\nDEPTH = 8", "\nN_LAYERS = 8"))
    with pytest.raises(UserError, match=r"train.py has no top-level line `DEPTH = \.\.\.`"):
        apply_profile(ws, "cpu", "pystdlib")


def test_setup_commits_the_rewrite_in_a_clean_repo(tmp_path, capsys):
    ws = make_ws(tmp_path)
    (ws / "staged.txt").write_text("user work\n")
    git(ws, "add", "staged.txt")  # staged work of the user must not be swept into the setup commit
    assert main(["-C", str(ws), "setup", "--profile", "cpu", "--dataset", "pystdlib", "--time-budget", "20",
                 "--no-prepare"]) == 0
    out = capsys.readouterr().out
    assert "committed the rewrite" in out and "skipped data preparation" in out
    assert git(ws, "log", "-1", "--format=%s") == "setup: profile cpu, dataset pystdlib"
    assert git(ws, "show", "--name-only", "--format=", "HEAD").split() == ["constants.py", "train.py"]
    assert git(ws, "status", "--porcelain", "--", "constants.py", "train.py") == ""
    assert git(ws, "diff", "--cached", "--name-only") == "staged.txt"
    assert constants(ws)["TIME_BUDGET"] == 20
    # the same setup again: nothing changes, nothing is committed
    assert main(["-C", str(ws), "setup", "--profile", "cpu", "--dataset", "pystdlib", "--time-budget", "20",
                 "--no-prepare"]) == 0
    assert "nothing to commit" in capsys.readouterr().out
    assert git(ws, "rev-list", "--count", "HEAD") == "2"


def test_setup_leaves_uncommitted_work_alone(tmp_path, capsys):
    ws = make_ws(tmp_path)
    (ws / "train.py").write_text((ws / "train.py").read_text() + "# my experiment\n")
    assert main(["-C", str(ws), "setup", "--profile", "cpu", "--dataset", "pystdlib", "--no-prepare"]) == 0
    assert "left uncommitted" in capsys.readouterr().out
    assert git(ws, "rev-list", "--count", "HEAD") == "1"
    assert "# my experiment" in (ws / "train.py").read_text() and "DEPTH = 2  #" in (ws / "train.py").read_text()


def test_setup_outside_git_writes_the_files(tmp_path, capsys):
    ws = make_ws(tmp_path, repo=False)
    assert main(["-C", str(ws), "setup", "--profile", "6gb", "--no-prepare"]) == 0
    assert "not a git repository" in capsys.readouterr().out
    assert constants(ws)["PROFILE"] == "6gb" and constants(ws)["DATASET"] == "climbmix"


@pytest.mark.parametrize("args, message", [
    (["--profile", "tpu"], "autoresearch: unknown profile 'tpu'; choose one of: h100, a100-40gb, 24gb, 6gb, mps, cpu."),
    (["--profile", "cpu", "--dataset", "wiki"], "autoresearch: unknown dataset 'wiki'; choose one of: "),
])
def test_cli_rejects_unknown_names_with_one_sentence(tmp_path, args, message):
    ws = make_ws(tmp_path, repo=False)
    proc = subprocess.run([sys.executable, "-m", "core.cli", "-C", str(ws), "setup", *args, "--no-prepare"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_setup_prepares_data_with_prepare_py(tmp_path, capfd):
    """The real path: prepare.py runs as a subprocess in the workspace and builds data + tokenizer."""
    ws = make_ws(tmp_path)
    cache = Path(os.environ["AUTORESEARCH_CACHE"])
    assert main(["-C", str(ws), "setup", "--profile", "cpu", "--dataset", "pystdlib"]) == 0
    out = capfd.readouterr().out
    assert "python prepare.py --dataset pystdlib" in out and "ready:" in out and "setup done" in out
    assert (cache / "pystdlib" / "tokenizer" / "tokenizer.pkl").is_file()
    assert list((cache / "pystdlib" / "train").glob("*.parquet"))


def test_failed_preparation_is_one_sentence(tmp_path):
    ws = make_ws(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "core.cli", "-C", str(ws), "setup", "--profile", "cpu",
                           "--dataset", str(empty)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("autoresearch: data preparation failed: ") and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr


def test_datasets_list():
    assert DATASETS == ["climbmix", "fineweb-edu", "tinystories", "pystdlib"]
