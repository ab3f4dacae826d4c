"""kill -9 of the engine in every phase, then a restart: the branch at the best measured commit, the tree clean,
one row per experiment, nothing left running, no temporary files.

Each case kills a real engine (`python -m core.cli loop`) at one point: either the engine SIGKILLs itself at a
named crash point (core.faults, exactly where a power cut could land) or the test SIGKILLs it when the
agent has reached a state (edited, committed) as seen on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from engine_fixtures import AGENT_SCRIPT, ROOT, cli_env, git, make_workspace, meta, read_events, tsv_rows, wait_for

# point -> (how the kill lands, the plan of experiment 0002)
CASES = {
    "agent spawned": ("agent_spawned:1", {"quality": 0.9, "desc": "second", "hang": True}),
    "agent edited": ("external:edited", {"quality": 0.9, "desc": "second", "hang": True}),
    "agent committed": ("external:committed", {"quality": 0.9, "desc": "second", "git_commit": True, "hang": True}),
    "experiment committed": ("committed:1", {"quality": 0.9, "desc": "second"}),
    "trainer spawned": ("trainer_spawned:2", {"quality": 0.9, "desc": "second"}),
    "row written (keep)": ("row_written:2", {"quality": 0.9, "desc": "second"}),
    "row written (discard)": ("row_written:2", {"quality": 1.5, "desc": "second"}),
    "meta written": ("meta_written:2", {"quality": 0.9, "desc": "second"}),
    "between experiments": ("between_experiments:2", {"quality": 0.9, "desc": "second"}),
}


def _agent_cmd(tmp_path: Path, plans: dict[str, dict]) -> str:
    (tmp_path / "plans.json").write_text(json.dumps(plans))
    (tmp_path / "plan.py").write_text(AGENT_SCRIPT)
    (tmp_path / "agent.py").write_text(
        "import json, os, subprocess, sys\n"
        "plan = json.load(open(sys.argv[1])).get(os.environ['AUTORESEARCH_EXPERIMENT'], {'quality': 2.0})\n"
        "sys.exit(subprocess.run([sys.executable, '-c', open(sys.argv[2]).read(), json.dumps(plan)]).returncode)\n")
    return f"{sys.executable} {tmp_path / 'agent.py'} {tmp_path / 'plans.json'} {tmp_path / 'plan.py'}"


def _engine(ws, agent_cmd: str, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--tag", "t",
                             "--agent", "command", "--agent-cmd", agent_cmd, "--lookahead", "0", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _ours(ws) -> list[psutil.Process]:
    """Processes working for this workspace (an agent in its worktree, a trainer in its run folder)."""
    root = str(ws.root)
    out = []
    for p in psutil.process_iter(["cwd", "pid"]):
        cwd = p.info.get("cwd") or ""
        if p.pid != os.getpid() and (cwd == root or cwd.startswith(root + os.sep)):
            out.append(p)
    return out


def _check(ws, tmpdir: Path) -> None:
    rows = tsv_rows(ws)
    kept = [r for r in rows if r[3] == "keep"]
    assert git(ws.root, "rev-parse", "--short=7", "HEAD") == kept[-1][0]  # the best measured commit
    assert git(ws.root, "rev-parse", "HEAD") == git(ws.root, "rev-parse", "autoresearch/t")
    assert git(ws.root, "status", "--porcelain") == ""
    recorded = 0
    finished = [e["id"] for e in read_events(ws) if e["type"] == "experiment_finished"]
    for exp in sorted(p.name for p in ws.experiments_dir.iterdir()):  # each experiment recorded exactly once
        m = meta(ws, exp)
        assert m["status"] in ("keep", "discard", "crash", "skipped")
        assert finished.count(exp) == 1, (exp, finished)
        if m["status"] != "skipped":
            recorded += 1
            assert any(r[0] == m["commit"][:7] and r[3] == m["status"] for r in rows), (exp, rows)
    assert len(rows) == recorded
    assert not _ours(ws)
    assert "worktrees" not in git(ws.root, "worktree", "list")
    assert not list(ws.state_dir.glob("runs/*")) and not list(ws.state_dir.glob("worktrees/*"))
    assert not list(ws.state_dir.rglob(".*.tmp"))
    assert not list(tmpdir.iterdir()), list(tmpdir.iterdir())  # nothing left in the engine's TMPDIR


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_kill_9_then_restart(tmp_path, case):
    how, plan = CASES[case]
    ws = make_workspace(tmp_path / "ws")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    agent_cmd = _agent_cmd(tmp_path, {"0002": plan, "0003": {"quality": 0.8, "desc": "after restart"}})
    env = cli_env()
    env["TMPDIR"] = str(tmpdir)
    if not how.startswith("external"):
        env["AUTORESEARCH_KILL_AT"] = how
    p = _engine(ws, agent_cmd, env)
    try:
        wt = ws.state_dir / "worktrees" / "0002"
        if how == "external:edited":
            wait_for(lambda: (wt / "train.py").exists() and "QUALITY = 0.9" in (wt / "train.py").read_text(),
                     timeout=60, what="the agent's edit")
        elif how == "external:committed":
            def committed():
                try:
                    return "agent commit" in git(wt, "log", "-1", "--format=%s")
                except (subprocess.CalledProcessError, FileNotFoundError):  # the worktree is still being made
                    return False
            wait_for(committed, timeout=60, what="the agent's commit")
        if how.startswith("external"):
            p.send_signal(signal.SIGKILL)
        assert p.wait(60) == -signal.SIGKILL, p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
    env.pop("AUTORESEARCH_KILL_AT", None)
    r = subprocess.run([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--max", "1"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    _check(ws, tmpdir)
    rows = tsv_rows(ws)
    assert rows[0][4] == "baseline" and rows[-1][3] in ("keep", "discard")
    if case == "row written (keep)" or case in ("meta written", "between experiments"):
        assert ("keep", "second") in [(r[3], r[4]) for r in rows]  # a keep recorded before the kill holds
