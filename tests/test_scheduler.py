"""Several slots and proposals ahead on one exact ratchet: real git, real agent and trainer subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from engine_fixtures import (
    AGENT_SCRIPT,
    FAKE_TRAIN,
    ROOT,
    cli,
    cli_env,
    git,
    make_workspace,
    meta,
    read_events,
    set_fake,
    tsv_rows,
    wait_event,
    wait_for,
)

from core import control
from core.agents.base import Agent
from core.config import LoopConfig
from core.engine import Engine
from core.executors.local import LocalExecutor, cpu_slots
from core.procs import pid_alive

# a second knob on its own line, so that two changes can be merged: the trainer reports QUALITY - BONUS; and
# WAIT_FOR, a file in the workspace the run waits for before it reports (the test decides who finishes first)
TRAIN = FAKE_TRAIN.replace("SLEEP = 0.2  # seconds of training",
                           "SLEEP = 0.2  # seconds of training\nBONUS = 0.0  # subtracted from QUALITY\n"
                           "WAIT_FOR = ''  # a file the run waits for")
TRAIN = TRAIN.replace("evaluate(QUALITY,", "while WAIT_FOR and not os.path.exists(os.path.join(_ctl_dir, WAIT_FOR)):\n"
                      "    time.sleep(0.05)\nevaluate(QUALITY - BONUS,")
assert "BONUS = 0.0" in TRAIN and "QUALITY - BONUS" in TRAIN and "WAIT_FOR = ''" in TRAIN


class IdAgent(Agent):
    """Plans chosen by experiment id (proposals made at the same time start in any order); a list per id
    gives the plans of successive attempts (a proposal that went back to its agent)."""

    name = "script"

    def __init__(self, plans: dict[str, dict | list[dict]], default: dict | None = None):
        self.plans = {k: list(v) if isinstance(v, list) else [v] for k, v in plans.items()}
        self.default = default or {"set": {"QUALITY": 2.0}, "desc": "default plan"}
        self.prompts: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def command(self, ctx):
        with self._lock:
            self.prompts.setdefault(ctx.exp_id, []).append(ctx.prompt)
            queue = self.plans.get(ctx.exp_id) or []
            plan = queue.pop(0) if queue else self.default
        return [sys.executable, "-c", AGENT_SCRIPT, json.dumps(plan)]


def engine(ws, agent, slots=2, lookahead=0, max_experiments=None, **cfg) -> Engine:
    cfg.setdefault("decide", "plain")
    return Engine(ws, LoopConfig(tag="t", max_experiments=max_experiments, lookahead=lookahead, **cfg),
                  agent=agent, executor=LocalExecutor(ws.root, cpu_slots(slots)), handle_signals=False,
                  log=lambda m: None)


def finished(ws) -> dict[str, dict]:
    return {e["id"]: e for e in read_events(ws) if e["type"] == "experiment_finished"}


def assert_exact_ratchet(ws):
    """The branch only ever stood on measured commits: every commit of its first-parent history since the
    start carries a keep row (or only touched program.md), and the tree is clean at the best."""
    rows = tsv_rows(ws)
    kept = {r[0] for r in rows if r[3] == "keep"}
    for sha in git(ws.root, "rev-list", "--first-parent", "autoresearch/t").split():
        if sha[:7] in kept:
            continue
        subject = git(ws.root, "log", "-1", "--format=%s", sha)
        assert subject in ("init", "program.md: directives updated"), f"unmeasured commit {sha[:7]} {subject!r}"
    best = [r for r in rows if r[3] == "keep"][-1]
    assert git(ws.root, "rev-parse", "--short=7", "HEAD") == best[0]
    assert git(ws.root, "status", "--porcelain") == ""
    assert "worktrees" not in git(ws.root, "worktree", "list")
    for exp in sorted(p.name for p in ws.experiments_dir.iterdir()):
        m = meta(ws, exp)
        assert m["status"] in ("keep", "discard", "crash", "skipped"), (exp, m["status"])
        if m["status"] != "skipped":
            assert m["commit"] and git(ws.root, "rev-parse", f"refs/autoresearch/experiments/{exp}") == m["commit"]
            assert (ws.experiment_dir(exp) / "agent.log").exists()
        assert m["slot"] or m["status"] in ("crash", "skipped")


def test_a_keep_while_another_run_trains_is_confirmed_on_the_new_best(tmp_path):
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    agent = IdAgent({"0002": {"set": {"BONUS": 0.1, "WAIT_FOR": "go"}, "desc": "slow, better"},
                     "0003": {"set": {"QUALITY": 0.95}, "desc": "fast, a bit better"}})
    set_fake(ws)  # the trainers look for WAIT_FOR beside this file, in the workspace
    eng = engine(ws, agent, max_experiments=4)
    t = threading.Thread(target=eng.run)
    t.start()
    wait_event(ws, "experiment_finished", id="0003")  # kept while 0002 still trains
    (ws.root / "go").write_text("")
    t.join(60)
    assert not t.is_alive() and eng.exit_code == 0
    (ws.root / "go").unlink()
    fin = finished(ws)
    conf = meta(ws, "0002")["confirmed_by"]
    assert len(tsv_rows(ws)) == 5  # --max 4 experiments, and the confirmation one of them needed
    assert conf is not None
    assert [fin[i]["status"] for i in ("0001", "0003", "0002", conf)] == ["keep", "keep", "discard", "keep"]
    # each run is decided against the best it started from, the confirmation against the best it started on
    assert fin["0003"]["reference"] == 1.0 and fin["0002"]["reference"] == 1.0
    assert fin[conf]["reference"] == 0.95 and fin[conf]["val_bpb"] == pytest.approx(0.85)
    assert f"trains again on it as {conf}" in fin["0002"]["reason"]
    m = meta(ws, conf)
    assert m["kind"] == "confirmation" and m["confirms"] == "0002" and m["parent"] == meta(ws, "0003")["commit"]
    commits = [r[0] for r in tsv_rows(ws)]  # rows in finish order: the confirmation after the run it confirms
    assert commits.index(meta(ws, conf)["commit"][:7]) > commits.index(meta(ws, "0002")["commit"][:7])
    best_train = git(ws.root, "show", "HEAD:train.py")
    assert "QUALITY = 0.95" in best_train and "BONUS = 0.1" in best_train  # both improvements on the branch
    assert_exact_ratchet(ws)
    slots = {meta(ws, i)["slot"]["id"] for i in ("0002", "0003")}
    assert slots == {"0", "1"}  # they trained side by side


@pytest.mark.parametrize("slow", ["better", "worse"])
def test_two_runs_finish_in_either_order(tmp_path, slow):
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    better = {"set": {"QUALITY": 0.9, "WAIT_FOR": "go-2" if slow == "better" else "go-1"}, "desc": "better"}
    worse = {"set": {"BONUS": -0.5, "WAIT_FOR": "go-2" if slow == "worse" else "go-1"}, "desc": "worse"}
    fast_id = "0003" if slow == "better" else "0002"
    set_fake(ws)  # the trainers look for WAIT_FOR beside this file, in the workspace
    eng = engine(ws, IdAgent({"0002": better, "0003": worse}), max_experiments=3)
    t = threading.Thread(target=eng.run)
    t.start()
    wait_event(ws, "training_started", id="0002")
    wait_event(ws, "training_started", id="0003")  # both in flight
    (ws.root / "go-1").write_text("")
    wait_event(ws, "experiment_finished", id=fast_id)
    (ws.root / "go-2").write_text("")
    t.join(60)
    assert not t.is_alive() and eng.exit_code == 0
    for name in ("go-1", "go-2"):
        (ws.root / name).unlink()
    fin = finished(ws)
    order = [r[4] for r in tsv_rows(ws)]
    assert order == (["baseline", "worse", "better"] if slow == "better" else ["baseline", "better", "worse"])
    assert fin["0002"]["status"] == "keep" and fin["0003"]["status"] == "discard"
    assert fin["0003"]["reference"] == 1.0  # decided against the best it started from, whichever finished first
    assert_exact_ratchet(ws)


def test_a_proposal_that_no_longer_applies_goes_back_to_its_agent(tmp_path):
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    agent = IdAgent({"0002": {"set": {"QUALITY": 0.9, "SLEEP": 1.5}, "desc": "first"},
                     # made from the baseline while 0002 trains; the same line as 0002's change: a conflict
                     "0003": [{"set": {"QUALITY": 0.8}, "desc": "clashes"},
                              {"set": {"QUALITY": 0.85}, "desc": "redone on the new best"}]})
    rc = engine(ws, agent, slots=1, lookahead=1, max_experiments=3).run()
    assert rc == 0
    assert [(r[3], r[4]) for r in tsv_rows(ws)] == [("keep", "baseline"), ("keep", "first"),
                                                    ("keep", "redone on the new best")]
    assert len(agent.prompts["0003"]) == 2 and "no longer applies" in agent.prompts["0003"][1]
    assert [e["id"] for e in read_events(ws) if e["type"] == "rebase_needed"] == ["0003"]
    assert meta(ws, "0003")["parent"] == meta(ws, "0002")["commit"]  # no GPU time was spent on the clash
    assert (ws.experiment_dir("0003") / "agent.1.log").exists()  # the first attempt's log is kept
    assert_exact_ratchet(ws)


def test_abort_of_one_slot_and_pause_with_two_runs_in_flight(tmp_path):
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    agent = IdAgent({"0002": {"set": {"QUALITY": 0.9, "SLEEP": 60}, "desc": "aborted"},
                     "0003": {"set": {"QUALITY": 0.8, "SLEEP": 2.0}, "desc": "goes on"}},
                    default={"set": {"QUALITY": 0.7, "SLEEP": 2.0}, "desc": "later"})
    eng = engine(ws, agent)
    t = threading.Thread(target=eng.run)
    t.start()
    try:
        wait_event(ws, "training_started", id="0002")
        wait_event(ws, "training_started", id="0003")
        control.send(ws, "abort", exp_id="0002")
        ev = wait_event(ws, "experiment_finished", id="0002")
        assert ev["status"] == "crash" and ev["reason"] == "aborted by user"
        assert json.loads(ws.engine_json.read_text())["status"] == "running"  # one abort does not pause
        assert "0003" not in finished(ws)  # the other slot goes on
        # pause with two runs in flight: both finish, nothing new starts
        wait_event(ws, "training_started", id="0004")
        control.send(ws, "pause")
        wait_for(lambda: json.loads(ws.engine_json.read_text())["status"] == "paused", what="paused")
        wait_for(lambda: {"0003", "0004"} <= set(finished(ws)), timeout=30, what="both runs finish")
        n = len(read_events(ws))
        time.sleep(1.0)
        assert not [e for e in read_events(ws)[n:] if e["type"] in ("experiment_started", "training_started")]
        st = json.loads(ws.engine_json.read_text())
        assert not any(s["experiment"] for s in st["slots"])
    finally:
        control.send(ws, "stop")
        control.send(ws, "resume")
        t.join(60)
    assert not t.is_alive()
    assert_exact_ratchet(ws)


def _id_agent_file(tmp_path, plans: dict[str, dict]) -> str:
    """An agent command line for engines in other processes: the plan of $AUTORESEARCH_EXPERIMENT."""
    (tmp_path / "plans_by_id.json").write_text(json.dumps(plans))
    (tmp_path / "agent_plan.py").write_text(AGENT_SCRIPT)
    (tmp_path / "agent_by_id.py").write_text(
        "import json, os, subprocess, sys\n"
        "plans = json.load(open(sys.argv[1]))\n"
        "plan = plans.get(os.environ['AUTORESEARCH_EXPERIMENT'], {'set': {'QUALITY': 2.0}, 'desc': 'default'})\n"
        "sys.exit(subprocess.run([sys.executable, '-c', open(sys.argv[2]).read(), json.dumps(plan)]).returncode)\n")
    return f"{sys.executable} {tmp_path / 'agent_by_id.py'} {tmp_path / 'plans_by_id.json'} {tmp_path / 'agent_plan.py'}"


def test_kill_9_with_two_runs_and_a_proposal_in_flight(tmp_path):
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    agent_cmd = _id_agent_file(tmp_path, {
        "0002": {"set": {"QUALITY": 0.9, "SLEEP": 60}, "desc": "run a"},
        "0003": {"set": {"BONUS": 0.05, "SLEEP": 60}, "desc": "run b"},
        "0004": {"set": {"QUALITY": 0.8}, "desc": "proposal", "sleep": 60},
        "0005": {"set": {"QUALITY": 0.85}, "desc": "after restart"}})
    p = subprocess.Popen([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--tag", "t", "--agent",
                          "command", "--agent-cmd", agent_cmd, "--slots", "2", "--lookahead", "1"],
                         cwd=ROOT, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_event(ws, "training_started", id="0002", timeout=60)
        wait_event(ws, "training_started", id="0003", timeout=60)
        wait_for(lambda: (ws.state_dir / "worktrees" / "0004").exists(), what="the proposal's worktree")
        st = json.loads(ws.engine_json.read_text())
        children = [s["child"]["pid"] for s in st["slots"]] + [q["child"]["pid"] for q in st["proposals"]
                                                                if q["child"]]
        assert len(children) == 3 and all(pid_alive(c) for c in children)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    r = cli("-C", str(ws.root), "loop", "--max", "1", timeout=120)
    assert r.returncode == 0, r.stderr
    assert not any(pid_alive(c) for c in children)
    rows = tsv_rows(ws)
    assert [(x[3], x[4]) for x in rows] == [("keep", "baseline"), ("crash", "run a (engine interrupted)"),
                                            ("crash", "run b (engine interrupted)"),
                                            ("crash", "(interrupted proposal) (engine interrupted)"),
                                            ("keep", "after restart")]
    assert [e["id"] for e in read_events(ws) if e["type"] == "recovered"] == ["0002", "0003", "0004"]
    assert_exact_ratchet(ws)
    assert not (ws.state_dir / "runs").exists() or not any((ws.state_dir / "runs").iterdir())
