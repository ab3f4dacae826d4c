"""Recovery after kill -9: the interrupted experiment is recorded exactly once and the branch goes back to the best."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from engine_fixtures import (
    ROOT,
    ScriptAgent,
    cli,
    cli_env,
    git,
    make_workspace,
    meta,
    read_events,
    set_fake,
    tsv_rows,
    wait_event,
    write_agent_files,
)

from core import ledger
from core.config import LoopConfig
from core.engine import Engine
from core.errors import UserError
from core.events import EventLog
from core.procs import pid_alive
from core.ratchet import Ratchet
from core.recovery import recover
from core.workspace import atomic_write_json


def engine_proc(ws, agent_cmd, *extra):
    return subprocess.Popen([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--tag", "t",
                             "--agent", "command", "--agent-cmd", agent_cmd, *extra],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_during_training_then_restart(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    agent_cmd = write_agent_files(tmp_path, [{"quality": 0.9, "desc": "first"}, {"quality": 0.8, "desc": "killed"},
                                             {"quality": 0.85, "desc": "after restart"}])
    r = cli("-C", str(ws.root), "loop", "--tag", "t", "--agent", "command", "--agent-cmd", agent_cmd, "--max", "2")
    assert r.returncode == 0, r.stderr
    best = meta(ws, "0002")["commit"]

    set_fake(ws, sleep=60)  # the next training runs until we kill the engine
    p = engine_proc(ws, agent_cmd)
    wait_event(ws, "training_started", id="0003", timeout=60)
    st = json.loads(ws.engine_json.read_text())
    trainer = st["slots"][0]["child"]["pid"]  # named in engine.json before training_started is emitted
    assert pid_alive(trainer)
    assert git(ws.root, "rev-parse", "HEAD") == meta(ws, "0003")["commit"]  # the branch is mid-experiment
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert pid_alive(trainer)  # the orphaned trainer lives on until the next engine stops it

    set_fake(ws, sleep=0.1)
    r = cli("-C", str(ws.root), "loop", "--max", "1")  # options come back from config.json
    assert r.returncode == 0, r.stderr
    assert "0003 was interrupted" in r.stderr
    assert not pid_alive(trainer)
    rows = tsv_rows(ws)
    assert [(x[3], x[4]) for x in rows] == [("keep", "baseline"), ("keep", "first"),
                                            ("crash", "killed (engine interrupted)"), ("keep", "after restart")]
    assert rows[2][0] == meta(ws, "0003")["commit"][:7]
    assert meta(ws, "0003")["status"] == "crash" and meta(ws, "0003")["reason"] == "engine interrupted"
    assert meta(ws, "0004")["parent"] == best  # the branch went back to the best before going on
    assert git(ws.root, "status", "--porcelain") == ""
    assert git(ws.root, "rev-parse", "HEAD") == meta(ws, "0004")["commit"]
    assert [e["id"] for e in read_events(ws) if e["type"] == "recovered"] == ["0003"]

    # a further start finds nothing to recover: still exactly one crash row for 0003
    r = cli("-C", str(ws.root), "loop", "--max", "1")
    assert r.returncode == 0, r.stderr
    assert sum(1 for x in tsv_rows(ws) if "engine interrupted" in x[4]) == 1


def _interrupted(ws, exp_id, **fields):
    rat = Ratchet(ws.root)
    m = {"id": exp_id, "tag": "t", "branch": "autoresearch/t", "status": "running", "description": None,
         "commit": None, "parent": rat.head(), "tsv_offset": ws.results_tsv.stat().st_size}
    m.update(fields)
    ws.experiment_dir(exp_id).mkdir(parents=True)
    atomic_write_json(ws.experiment_dir(exp_id) / "meta.json", m)
    return rat, m


def _baseline(ws):
    Engine(ws, LoopConfig(tag="t", max_experiments=1), agent=ScriptAgent(), handle_signals=False,
           log=lambda m: None).run()


def test_interrupted_while_proposing_restores_train_py(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    _baseline(ws)
    rat, m = _interrupted(ws, "0002")
    ws.train_py.write_text(ws.train_py.read_text().replace("QUALITY = 1.0", "QUALITY = 0.5"))
    events = EventLog(ws.events)
    assert recover(ws, rat, events, lambda s: None) == ["0002"]
    assert git(ws.root, "status", "--porcelain") == ""
    rows = tsv_rows(ws)
    assert rows[-1][3] == "crash" and "engine interrupted" in rows[-1][4]
    snap = meta(ws, "0002")["commit"]
    assert "QUALITY = 0.5" in git(ws.root, "show", f"{snap}:train.py")  # the half-done proposal is kept
    assert recover(ws, rat, events, lambda s: None) == []  # exactly once


def test_decision_recorded_before_the_kill_is_not_duplicated(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    _baseline(ws)
    rat = Ratchet(ws.root)
    ws.train_py.write_text(ws.train_py.read_text().replace("QUALITY = 1.0", "QUALITY = 0.5"))
    sha = rat.commit_paths(["train.py"], "kept before the kill")
    parent = git(ws.root, "rev-parse", "HEAD~1")
    _, m = _interrupted(ws, "0002", commit=sha, parent=parent, description="kept before the kill")
    ledger.append(ws.results_tsv, sha, 0.5, 1.0, "keep", "kept before the kill")
    recover(ws, rat, EventLog(ws.events), lambda s: None)
    assert len(tsv_rows(ws)) == 2
    assert meta(ws, "0002")["status"] == "keep"
    assert git(ws.root, "rev-parse", "HEAD") == sha  # a kept commit stays


def test_a_discard_recorded_before_the_kill_moves_the_branch_back(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    _baseline(ws)
    rat = Ratchet(ws.root)
    parent = rat.head()
    ws.train_py.write_text(ws.train_py.read_text().replace("QUALITY = 1.0", "QUALITY = 2.0"))
    sha = rat.commit_paths(["train.py"], "worse")
    _interrupted(ws, "0002", commit=sha, parent=parent)
    ledger.append(ws.results_tsv, sha, 2.0, 1.0, "discard", "worse")
    recover(ws, rat, EventLog(ws.events), lambda s: None)
    assert len(tsv_rows(ws)) == 2 and git(ws.root, "rev-parse", "HEAD") == parent
    assert "QUALITY = 1.0" in ws.train_py.read_text()


def test_an_older_row_with_the_same_commit_does_not_count(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    _baseline(ws)
    rat = Ratchet(ws.root)
    head = rat.head()
    _interrupted(ws, "0002", commit=head, baseline=True)  # a baseline re-run on the same commit
    recover(ws, rat, EventLog(ws.events), lambda s: None)
    assert [r[3] for r in tsv_rows(ws)] == ["keep", "crash"]


def test_recovery_never_resets_work_it_cannot_vouch_for(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    _baseline(ws)
    rat, m = _interrupted(ws, "0002")
    (ws.root / "prepare.py").write_text("# someone's edit\n")
    ws.train_py.write_text("# edited\n")
    with pytest.raises(UserError, match="prepare.py have uncommitted changes"):
        recover(ws, rat, EventLog(ws.events), lambda s: None)
    assert (ws.root / "prepare.py").read_text() == "# someone's edit\n"
    assert ws.train_py.read_text() == "# edited\n"
    assert len(tsv_rows(ws)) == 1


def test_stale_engine_json_reads_as_stopped(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    ws.state_dir.mkdir(exist_ok=True)
    atomic_write_json(ws.engine_json, {"pid": p.pid, "hostname": os.uname().nodename, "status": "running",
                                       "phase": "training", "experiment": {"id": "0001"}})
    r = cli("-C", str(ws.root), "status", "--json")
    st = json.loads(r.stdout)
    assert st["status"] == "stopped" and st["alive"] is False and st["stale_status"] == "running"
    r = cli("-C", str(ws.root), "pause")
    assert r.returncode == 1 and "no engine is running" in r.stderr


def test_interrupted_proposal_does_not_commit_the_agents_program_md(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    _baseline(ws)
    rat, m = _interrupted(ws, "0002")
    committed = ws.program_md.read_text()
    ws.program_md.write_text(committed + "\nthe agent's own rules\n")  # written during the proposal
    assert recover(ws, rat, EventLog(ws.events), lambda s: None) == ["0002"]
    assert ws.program_md.read_text() == committed
    assert "the agent's own rules" in (ws.experiment_dir("0002") / "program.md.proposed").read_text()
    assert git(ws.root, "status", "--porcelain") == ""
