"""scripts/*.sh: the seed's flags become the right `uv run autoresearch ...` call; bad flags are one sentence."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("check-hardware.sh", "setup.sh", "run-experiment.sh", "run-loop.sh", "show-results.sh")


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A copy of scripts/ in a fake repository, with a fake `uv` first on PATH that records its call."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "scripts", root / "scripts")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    uv = bin_dir / "uv"
    uv.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                  "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd()}))\n")
    uv.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    return root


def run(repo: Path, script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "scripts" / script), *args], cwd=cwd or repo.parent,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script, args, expected", [
    ("check-hardware.sh", [], ["check"]),
    ("run-experiment.sh", [], ["run"]),
    ("setup.sh", [], ["setup"]),
    ("setup.sh", ["--profile", "24gb", "--dataset", "tinystories", "--seq-len", "512"],
     ["setup", "--profile", "24gb", "--dataset", "tinystories", "--seq-len", "512"]),
    ("run-loop.sh", ["--max", "100", "--desc", "session-1"], ["loop", "--max", "100", "--tag", "session-1"]),
    ("run-loop.sh", ["--agent", "command", "--agent-cmd", "echo 'a b' > x", "--detach"],
     ["loop", "--agent", "command", "--agent-cmd", "echo 'a b' > x", "--detach"]),
    ("show-results.sh", ["--kept-only"], ["results", "--kept-only"]),
    ("show-results.sh", [], ["results"]),
])
def test_flags_map_to_the_cli(repo, script, args, expected):
    proc = run(repo, script, *args)
    assert proc.returncode == 0, proc.stderr
    call = json.loads(proc.stdout)
    assert call["argv"] == ["run", "autoresearch", *expected]
    assert Path(call["cwd"]) == repo  # run from the repository root, wherever the user stands


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_is_one_sentence(repo, script):
    proc = run(repo, script, "--bogus")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"{script}: unknown option '--bogus'; run with --help for the valid options.\n"
    help_ = run(repo, script, "--help")
    assert help_.returncode == 0 and help_.stdout.startswith(f"usage: bash scripts/{script}")


@pytest.mark.parametrize("script, args, message", [
    ("run-loop.sh", ["--max"], "--max needs a value"),
    ("run-loop.sh", ["--max", "ten"], "--max needs a whole number, not 'ten'."),
    ("setup.sh", ["--seq-len", "5x"], "--seq-len needs a whole number"),
    ("setup.sh", ["--profile"], "--profile needs a value"),
])
def test_bad_values(repo, script, args, message):
    proc = run(repo, script, *args)
    assert proc.returncode == 1 and message in proc.stderr and proc.stderr.count("\n") == 1


def test_missing_uv(repo):
    (repo.parent / "bin" / "uv").unlink()
    proc = run(repo, "check-hardware.sh")
    assert proc.returncode == 1
    assert "uv is not installed; install it with: curl -LsSf https://astral.sh/uv/install.sh | sh" in proc.stderr


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv")
def test_show_results_through_real_uv():
    """The real chain: bash -> uv run -> autoresearch results, in this repository (read-only)."""
    proc = subprocess.run(["bash", str(REPO / "scripts" / "show-results.sh"), "--kept-only"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, UV_OFFLINE="1"), cwd=REPO)
    # the wrapper runs in the repository root, so it reports this repo's results.tsv (or its absence)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Session summary" in proc.stdout or "there is no results.tsv" in proc.stderr


def test_hardware_doc_matches_the_profiles():
    """docs/hardware-config.md's table is what core/profiles.py really sets."""
    from core.profiles import PROFILES

    text = (REPO / "docs" / "hardware-config.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and cells[0] in PROFILES:
            rows[cells[0]] = cells
    assert set(rows) == set(PROFILES)
    for name, p in PROFILES.items():
        _, _, seq, ev, budget, vocab, depth, head, window, total, device = rows[name]
        num = lambda s: int(s.replace(",", ""))  # noqa: E731
        assert (num(seq), num(ev), num(budget), num(vocab)) == (p.max_seq_len, p.eval_tokens, p.time_budget,
                                                                p.vocab_size), name
        assert (num(depth), num(head), window, num(total), num(device)) == (
            p.depth, p.head_dim, p.window_pattern, p.total_batch_size, p.device_batch_size), name
        assert p.aspect_ratio == 64  # the doc states it once for all profiles
