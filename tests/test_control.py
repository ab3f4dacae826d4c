"""Control of a detached engine through the real CLI: pause, resume, abort, stop, SIGTERM; the control files."""

from __future__ import annotations

import json
import os
import signal
import time

from engine_fixtures import (
    cli,
    git,
    make_workspace,
    meta,
    read_events,
    set_fake,
    tsv_rows,
    wait_event,
    wait_for,
    write_agent_files,
)

from core import control
from core.procs import pid_alive
from core.workspace import Workspace


def engine_json(ws):
    return json.loads(ws.engine_json.read_text())


def finished(ws):
    return [e for e in read_events(ws) if e["type"] == "experiment_finished"]


def test_control_files_priority_and_privacy(tmp_path):
    ws = Workspace.at(tmp_path)
    for cmd in ("resume", "pause", "stop", "abort"):
        control.send(ws, cmd)
    control.send(ws, "abort", exp_id="0007")
    assert control.take(ws) == [("abort", None), ("abort", "0007"), ("stop", None), ("pause", None),
                                ("resume", None)]
    assert control.take(ws) == []
    assert (ws.control_dir.stat().st_mode & 0o777) == 0o700


def test_detached_engine_pause_resume_abort_stop_and_sigterm(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    agent_cmd = write_agent_files(tmp_path, [{"quality": 0.9 - i / 100, "desc": f"step {i}"} for i in range(30)])
    set_fake(ws, mode="spawn", sleep=0.1)  # the baseline spawns a grandchild and hangs
    r = cli("-C", str(ws.root), "loop", "--detach", "--tag", "t", "--agent", "command", "--agent-cmd", agent_cmd)
    assert r.returncode == 0, r.stderr
    pid = engine_json(ws)["pid"]
    assert f"pid {pid}" in r.stdout and "autoresearch" in r.stdout and "stop" in r.stdout
    assert pid_alive(pid)

    # abort: the trainer and its grandchild die at once, the experiment is a crash, the engine holds
    pidfile = ws.root / "grandchild.pid"
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="grandchild")
    grandchild = int(pidfile.read_text())
    st = json.loads(cli("-C", str(ws.root), "status", "--json").stdout)
    assert st["alive"] and st["phase"] == "training" and st["slots"][0]["experiment"] == "0001"
    r = cli("-C", str(ws.root), "abort")
    assert r.returncode == 0, r.stderr
    ev = wait_event(ws, "experiment_finished", id="0001")
    assert ev["status"] == "crash" and ev["reason"] == "aborted by user"
    assert not pid_alive(grandchild)
    wait_for(lambda: engine_json(ws)["status"] == "paused" and engine_json(ws)["phase"] == "idle", what="paused")
    assert "status: paused" not in cli("-C", str(ws.root), "status").stdout
    assert "engine: paused" in cli("-C", str(ws.root), "status").stdout

    # resume: the baseline again (no best yet), then proposals
    set_fake(ws, sleep=0.1)
    assert cli("-C", str(ws.root), "resume").returncode == 0
    wait_event(ws, "experiment_finished", id="0003")
    assert cli("-C", str(ws.root), "pause").returncode == 0
    wait_for(lambda: engine_json(ws)["status"] == "paused" and engine_json(ws)["phase"] == "idle", what="holding")
    n = len(finished(ws))
    time.sleep(1.0)  # it holds: nothing new starts while paused
    assert len(finished(ws)) == n and not any(s["experiment"] for s in engine_json(ws)["slots"])

    # stop during training: the current experiment finishes normally, then the engine exits
    set_fake(ws, sleep=1.5)
    assert cli("-C", str(ws.root), "resume").returncode == 0
    wait_for(lambda: [e for e in read_events(ws) if e["type"] == "training_started"
                      and e["id"] not in {f["id"] for f in finished(ws)}], what="training")
    assert cli("-C", str(ws.root), "stop").returncode == 0
    assert engine_json(ws)["status"] in ("stopping", "running")
    wait_for(lambda: not pid_alive(pid), what="engine exit")
    assert finished(ws)[-1]["status"] in ("keep", "discard")
    assert engine_json(ws)["status"] == "stopped"
    assert git(ws.root, "status", "--porcelain") == ""
    assert "engine: stopped" in cli("-C", str(ws.root), "status").stdout
    log = ws.engine_log.read_text()
    assert "running on branch autoresearch/t" in log and "Traceback" not in log

    # a second detached start reuses config.json; SIGTERM stops it soon, recording the run it cut short
    set_fake(ws, sleep=60)
    r = cli("-C", str(ws.root), "loop", "--detach")
    assert r.returncode == 0, r.stderr
    pid2 = engine_json(ws)["pid"]
    started = wait_for(lambda: [e for e in read_events(ws) if e["type"] == "training_started"
                                and e["id"] not in {f["id"] for f in finished(ws)}], what="training")[0]
    best_before = git(ws.root, "rev-parse", f"{started['commit']}~1")
    t0 = time.monotonic()
    os.kill(pid2, signal.SIGTERM)
    wait_for(lambda: not pid_alive(pid2), what="engine exit after SIGTERM")
    assert time.monotonic() - t0 < 10
    cut = [f for f in finished(ws) if f["id"] == started["id"]]
    assert len(cut) == 1 and cut[0]["status"] == "crash" and cut[0]["reason"] == "engine stopped (SIGTERM)"
    # the proposal made ahead while it trained (lookahead 1) is recorded once: a crash if its agent was cut
    # short, skipped (no row: it never trained) if it was already waiting for the slot
    ahead = [f for f in finished(ws) if int(f["id"]) > int(started["id"])]
    assert len(ahead) == 1 and len({f["id"] for f in ahead}) == 1
    assert (ahead[0]["status"], ahead[0]["reason"]) in (("crash", "engine stopped (SIGTERM)"),
                                                        ("skipped", "not trained: the engine was stopping"))
    assert tsv_rows(ws)[-1][3] == "crash"
    assert git(ws.root, "rev-parse", "HEAD") == best_before and git(ws.root, "status", "--porcelain") == ""
    assert engine_json(ws)["status"] == "stopped"
    assert meta(ws, started["id"])["status"] == "crash"
