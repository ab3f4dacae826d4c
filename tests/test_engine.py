"""The experiment loop with real git repositories, a real agent subprocess and a fake trainer subprocess."""

from __future__ import annotations

import os
import threading

import pytest
from engine_fixtures import ScriptAgent, git, make_workspace, meta, read_events, set_fake, tsv_rows, wait_for

from core import control
from core.config import LoopConfig
from core.decision import decide
from core.engine import Engine, find_best, next_experiment_id
from core.errors import UserError
from core.ledger import read as read_ledger
from core.procs import pid_alive
from core.ratchet import Ratchet


def run_engine(ws, plans, max_experiments, **cfg):
    """One slot and no proposals ahead (milestone 1's strictly sequential loop) unless cfg says otherwise."""
    cfg.setdefault("lookahead", 0)
    cfg.setdefault("decide", "plain")
    agent = ScriptAgent(plans)
    engine = Engine(ws, LoopConfig(tag="t", max_experiments=max_experiments, **cfg), agent=agent,
                    handle_signals=False, log=lambda msg: None)
    rc = engine.run()
    return rc, engine, agent


# --- the decision ---------------------------------------------------------------------------------

def test_decide_keeps_improvements_only():
    assert decide(0.99, None, 0, 0).status == "keep"  # the baseline
    assert decide(0.99, 1.0, 1, 1).status == "keep"
    assert decide(1.0, 1.0, 1, 1).status == "discard"  # equal is not better
    assert decide(1.01, 1.0, 1, 1).status == "discard"
    assert decide(0.999, 1.0, 1, 1, min_delta=0.002).status == "discard"
    assert decide(0.997, 1.0, 1, 1, min_delta=0.002).status == "keep"


def test_decide_keeps_simplifications_within_tolerance():
    d = decide(1.0004, 1.0, lines_added=1, lines_removed=3)
    assert d.status == "keep" and d.simplification
    assert decide(1.0006, 1.0, 1, 3).status == "discard"  # beyond the default tolerance 0.0005
    assert decide(1.0004, 1.0, 3, 3).status == "discard"  # same length is no simplification
    assert decide(1.0004, 1.0, 3, 1).status == "discard"  # longer
    assert decide(1.004, 1.0, 0, 5, simplify_tolerance=0.01).simplification
    improved = decide(0.9, 1.0, 0, 5)
    assert improved.status == "keep" and not improved.simplification  # an improvement is not marked


# --- the loop -------------------------------------------------------------------------------------

def test_loop_keeps_discards_and_ends_at_best(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    plans = [
        {"quality": 0.9, "desc": "better"},
        {"quality": 0.95, "desc": "worse"},
        {"mode": "crash", "desc": "crashes"},
        {"quality": 0.8, "desc": "best so far"},
        {"quality": 0.8003, "remove_lines": 2, "desc": "simpler"},
        {"quality": 0.7, "remove_lines": 0, "append": "# longer\n", "say": "DESCRIPTION: from stdout"},
        {"noop": True},
        {"quality": 0.75, "desc": "worse again"},
    ]
    rc, engine, agent = run_engine(ws, plans, max_experiments=9)
    assert rc == 0
    rows = tsv_rows(ws)
    assert [(r[3], r[4]) for r in rows] == [
        ("keep", "baseline"), ("keep", "better"), ("discard", "worse"),
        ("crash", "crashes (train.py exited with code 1)"), ("keep", "best so far"),
        ("keep", "simpler [simplify]"), ("keep", "from stdout"), ("discard", "worse again")]
    assert [r[1] for r in rows][:3] == ["1.000000", "0.900000", "0.950000"]
    assert rows[3][1:3] == ["0.000000", "0.0"]
    assert rows[1][2] == "2.0"  # peak_vram_mb 2048 -> 2.0 GB

    # the branch ends at the best commit, train.py in the tree equals it, nothing is left dirty
    head = git(ws.root, "rev-parse", "autoresearch/t")
    assert head == meta(ws, "0007")["commit"]
    assert git(ws.root, "rev-parse", "--abbrev-ref", "HEAD") == "autoresearch/t"
    assert "QUALITY = 0.7" in ws.train_py.read_text()
    assert git(ws.root, "status", "--porcelain") == ""
    log = git(ws.root, "log", "--format=%s", "autoresearch/t").splitlines()
    assert log == ["from stdout", "simpler", "best so far", "better", "init"]

    # discarded and crashed commits stay reachable
    for exp_id in ("0003", "0004", "0009"):
        sha = meta(ws, exp_id)["commit"]
        assert git(ws.root, "rev-parse", f"refs/autoresearch/experiments/{exp_id}") == sha
    assert "QUALITY = 0.95" in git(ws.root, "show", "refs/autoresearch/experiments/0003:train.py")

    # the empty proposal: meta skipped, no row, an event
    m = meta(ws, "0008")
    assert m["status"] == "skipped" and m["commit"] is None
    assert any(e["type"] == "experiment_finished" and e["id"] == "0008" and e["status"] == "skipped"
               for e in read_events(ws))

    # every trained experiment's folder is complete, the baseline's included
    for exp_id in ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0009"):
        d = ws.experiment_dir(exp_id)
        missing = [f for f in ("meta.json", "diff.patch", "train.log", "agent.log") if not (d / f).exists()]
        assert not missing, (exp_id, missing)
    assert (ws.experiment_dir("0002") / "metrics.json").exists()
    assert "baseline" in (ws.experiment_dir("0001") / "agent.log").read_text()

    # per-experiment records
    m = meta(ws, "0006")
    assert m["simplification"] and m["lines_removed"] == 3 and m["lines_added"] == 1
    assert m["parent"] == meta(ws, "0005")["commit"]
    assert set(m["timings"]) == {"propose_s", "validate_s", "queue_s", "train_s", "record_s"}
    d = ws.experiment_dir("0002")
    for name in ("meta.json", "diff.patch", "train.log", "agent.log", "metrics.json", "prompt.md"):
        assert (d / name).exists(), name
    assert "+QUALITY = 0.9" in (d / "diff.patch").read_text()
    assert b"\rstep 01" in (d / "train.log").read_bytes()  # raw bytes, progress lines included
    assert "QUALITY" not in ws.experiment_dir("0001").joinpath("metrics.json").read_text()
    assert "0.75" in ws.run_log.read_text()  # run.log holds the last training
    # the crash tail reaches the next prompt
    assert "fake crash in the trainer" in (ws.experiment_dir("0005") / "prompt.md").read_text()

    st = read_events(ws)
    types = [e["type"] for e in st]
    assert types[0] == "engine_started" and types[-1] == "engine_stopped"
    engine_json = __import__("json").loads(ws.engine_json.read_text())
    assert engine_json["status"] == "stopped" and engine_json["experiments_done"] == 9
    assert engine_json["best"]["val_bpb"] == 0.7 and engine_json["baseline_val_bpb"] == 1.0


def test_min_delta_and_restart_reuses_branch_and_best(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_engine(ws, [{"quality": 0.999, "desc": "tiny gain"}], max_experiments=2, min_delta=0.01)
    assert [r[3] for r in tsv_rows(ws)] == ["keep", "discard"]
    # a second session on the same tag: no second baseline, the best comes from results.tsv
    rc, engine, _ = run_engine(ws, [{"quality": 0.98, "desc": "real gain"}], max_experiments=1, min_delta=0.01)
    rows = tsv_rows(ws)
    assert [r[4] for r in rows] == ["baseline", "tiny gain", "real gain"]
    assert rows[2][3] == "keep"
    assert engine.best_val == 0.98
    assert sorted(p.name for p in ws.experiments_dir.iterdir()) == ["0001", "0002", "0003"]


def test_experiment_ids_continue_after_the_largest_folder(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    (ws.experiments_dir / "0041").mkdir(parents=True)
    assert next_experiment_id(ws) == "0042"
    assert next_experiment_id(ws) == "0043"


def test_proposal_touching_prepare_is_rejected_before_training(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    original = (ws.root / "prepare.py").read_text()
    plans = [{"quality": 0.1, "files": {"prepare.py": "\nVAL = 0\n"}, "desc": "cheat"},
             {"quality": 0.1, "files": {"notes/new.txt": "hello"}, "desc": "new file"}]
    run_engine(ws, plans, max_experiments=3)
    rows = tsv_rows(ws)
    assert rows[1][3] == "crash" and "rejected: changed prepare.py" in rows[1][4]
    assert rows[2][3] == "crash" and "rejected: created notes/new.txt" in rows[2][4]
    assert (ws.root / "prepare.py").read_text() == original
    assert "QUALITY = 1.0" in ws.train_py.read_text()
    assert not (ws.root / "notes").exists()
    assert (ws.experiment_dir("0003") / "created-files" / "notes" / "new.txt").read_text() == "hello"
    assert git(ws.root, "status", "--porcelain") == ""
    assert not (ws.experiment_dir("0002") / "train.log").exists()  # never trained
    # the rejected proposal is browsable, off the branch
    snap = meta(ws, "0002")["commit"]
    assert "VAL = 0" in git(ws.root, "show", f"{snap}:prepare.py")
    assert git(ws.root, "rev-parse", "autoresearch/t") == meta(ws, "0001")["commit"]
    assert any(e["type"] == "rejected" and e["id"] == "0002" for e in read_events(ws))


@pytest.mark.parametrize("append, reason", [
    ("\nimport os\nprint(os.environ.get('AUTORESEARCH_METRICS_FILE'))\n", "AUTORESEARCH_METRICS"),
    ("\nimport prepare\nprepare._METRICS = 'x'\n", "prepare"),
    ("\nopen('results.tsv', 'a')\n", "results.tsv"),
    ("\ndef broken(:\n", "does not compile"),
])
def test_integrity_and_syntax_rejections(tmp_path, append, reason):
    ws = make_workspace(tmp_path / "ws")
    run_engine(ws, [{"quality": 0.1, "append": append, "desc": "sneaky"}], max_experiments=2)
    row = tsv_rows(ws)[1]
    assert row[3] == "crash" and "rejected:" in row[4] and reason in row[4]
    assert "QUALITY = 1.0" in ws.train_py.read_text()


def test_printed_val_bpb_is_not_believed(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_engine(ws, [{"mode": "fakeprint", "quality": 0.1, "desc": "prints a number"}], max_experiments=2)
    row = tsv_rows(ws)[1]
    assert row[3] == "crash" and "no metrics" in row[4]
    assert "val_bpb:          0.100000" in (ws.experiment_dir("0002") / "train.log").read_text()


def test_agent_commits_are_undone_and_validated(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_engine(ws, [{"quality": 0.9, "git_commit": True, "desc": "committed by the agent"}], max_experiments=2)
    rows = tsv_rows(ws)
    assert rows[1][3] == "keep" and rows[1][4] == "committed by the agent"
    assert git(ws.root, "log", "--format=%s", "-1") == "committed by the agent"


def test_program_md_edits_are_committed_and_ideas_reach_one_prompt(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    ws.program_md.write_text("# Directives\nTry wider models.\n")  # a person edits it: not a dirty-tree error
    control.queue_idea(ws, "try SwiGLU")
    rc, engine, agent = run_engine(ws, [{"quality": 0.9, "desc": "a"}, {"quality": 0.8, "desc": "b"}],
                                   max_experiments=3)
    assert rc == 0
    log = git(ws.root, "log", "--format=%s", "autoresearch/t").splitlines()
    assert "program.md: directives updated" in log
    ev = [e for e in read_events(ws) if e["type"] == "program_committed"]
    assert len(ev) == 1
    assert "Try wider models." in agent.contexts[0].prompt
    assert meta(ws, "0002")["idea"] == "try SwiGLU" and meta(ws, "0003")["idea"] is None
    assert "try SwiGLU" in agent.contexts[0].prompt and "try SwiGLU" not in agent.contexts[1].prompt
    assert control.pending_ideas(ws) == []
    assert [r[3] for r in tsv_rows(ws)] == ["keep", "keep", "keep"]
    assert git(ws.root, "status", "--porcelain") == ""


def test_failing_agent_pauses_the_engine(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    agent = ScriptAgent([{"exit": 2, "say": "no credits"}] * 3)
    engine = Engine(ws, LoopConfig(tag="t", max_experiments=10, lookahead=0, decide="plain"), agent=agent,
                    handle_signals=False,
                    log=lambda m: None)
    t = threading.Thread(target=engine.run)
    t.start()
    wait_for(lambda: any(e["type"] == "paused" for e in read_events(ws)), what="paused")
    control.send(ws, "stop")
    t.join(30)
    assert not t.is_alive()
    rows = tsv_rows(ws)
    assert [r[3] for r in rows] == ["keep", "crash", "crash", "crash"]
    assert "agent exited with code 2: no credits" in rows[1][4]


def test_abort_kills_trainer_and_grandchild_then_holds(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    engine = Engine(ws, LoopConfig(tag="t", max_experiments=5, lookahead=0, decide="plain"),
                    agent=ScriptAgent([{"quality": 0.9, "desc": "x"}]),
                    handle_signals=False, log=lambda m: None)
    run_engine_thread = threading.Thread(target=engine.run)
    set_fake(ws, mode="spawn", sleep=0.1)
    run_engine_thread.start()
    pidfile = ws.root / "grandchild.pid"
    wait_for(lambda: pidfile.exists() and pidfile.read_text(), what="grandchild")
    grandchild = int(pidfile.read_text())
    assert pid_alive(grandchild)
    control.send(ws, "abort")
    wait_for(lambda: any(e["type"] == "experiment_finished" for e in read_events(ws)), what="finished")
    assert not pid_alive(grandchild)
    ev = [e for e in read_events(ws) if e["type"] == "experiment_finished"][0]
    assert ev["status"] == "crash" and ev["reason"] == "aborted by user"
    wait_for(lambda: __import__("json").loads(ws.engine_json.read_text())["status"] == "paused", what="paused")
    assert len(tsv_rows(ws)) == 1  # holds: nothing else runs while paused
    control.send(ws, "stop")
    run_engine_thread.join(30)
    assert not run_engine_thread.is_alive()
    assert tsv_rows(ws)[0][3] == "crash" and "aborted by user" in tsv_rows(ws)[0][4]


def test_dirty_tree_and_detached_head_are_refused(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    (ws.root / "prepare.py").write_text("# my edit\n")
    with pytest.raises(UserError, match="uncommitted changes \\(prepare.py\\)"):
        run_engine(ws, [], max_experiments=1)
    assert (ws.root / "prepare.py").read_text() == "# my edit\n"  # nothing lost
    git(ws.root, "checkout", "-q", "prepare.py")
    git(ws.root, "checkout", "-q", "--detach")
    with pytest.raises(UserError, match="HEAD is detached"):
        run_engine(ws, [], max_experiments=1)


def test_find_best_ignores_train_py_changed_after_measurement(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_engine(ws, [], max_experiments=1)
    rat = Ratchet(ws.root)
    rows = read_ledger(ws.results_tsv).rows
    head = rat.head()
    assert find_best(rat, rows, head)[0] == head
    ws.program_md.write_text("new directives\n")
    sha = rat.commit_paths(["program.md"], "program.md: directives updated")
    assert find_best(rat, rows, sha)[1].val_bpb == 1.0  # program.md commits on top keep the best
    ws.train_py.write_text(ws.train_py.read_text() + "# hand edit\n")
    sha = rat.commit_paths(["train.py"], "hand edit")
    assert find_best(rat, rows, sha) is None  # the head's train.py was never measured: run a baseline


def test_abort_while_proposing_keeps_the_edit_browsable_and_the_tree_clean(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    engine = Engine(ws, LoopConfig(tag="t", max_experiments=5, lookahead=0, decide="plain"),
                    agent=ScriptAgent([{"quality": 0.5, "desc": "slow", "hang": True}]),
                    handle_signals=False, log=lambda m: None)
    t = threading.Thread(target=engine.run)
    t.start()
    worktree_train = ws.state_dir / "worktrees" / "0002" / "train.py"  # the agent works in its own checkout
    wait_for(lambda: worktree_train.exists() and "QUALITY = 0.5" in worktree_train.read_text(),
             what="the agent's edit")
    assert "QUALITY = 1.0" in ws.train_py.read_text()  # the person's tree never sees it
    control.send(ws, "abort")
    wait_for(lambda: len(tsv_rows(ws)) == 2, what="the aborted row")
    control.send(ws, "stop")
    t.join(30)
    assert not t.is_alive()
    row = tsv_rows(ws)[1]
    assert row[3] == "crash" and "aborted by user" in row[4]
    assert "QUALITY = 1.0" in ws.train_py.read_text() and git(ws.root, "status", "--porcelain") == ""
    assert "QUALITY = 0.5" in git(ws.root, "show", f"{meta(ws, '0002')['commit']}:train.py")
    assert not worktree_train.parent.exists() and "worktrees" not in git(ws.root, "worktree", "list")


def test_agent_timeout_is_a_crash_and_the_tree_is_restored(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    run_engine(ws, [{"quality": 0.5, "hang": True}, {"quality": 0.9, "desc": "next"}], max_experiments=3,
               agent_timeout=1.0)
    rows = tsv_rows(ws)
    assert rows[1][3] == "crash" and "agent timed out after 1 s" in rows[1][4]
    assert rows[2][3] == "keep" and rows[2][4] == "next"
    assert git(ws.root, "status", "--porcelain") == ""


@pytest.mark.slow
def test_real_cpu_trainer_with_the_mutate_agent(tmp_path):
    """End to end with the real trainer (CPU profile, offline pystdlib data) and the real mutate agent."""
    import re
    import subprocess
    import sys

    from engine_fixtures import cli

    try:
        import core.setup  # noqa: F401  (the trainer side of create_workspace)
    except ImportError:
        pytest.skip("core.setup is not in the repository yet")
    from core.scaffold import create_workspace

    ws = create_workspace(tmp_path / "ws", profile="cpu", dataset="pystdlib", time_budget=3)
    # a quarter of the CPU profile's evaluation keeps this test short; committed like a person's setup change
    consts = ws.root / "constants.py"
    consts.write_text(re.sub(r"^EVAL_TOKENS = .*$", "EVAL_TOKENS = 16384  # small for the test", consts.read_text(),
                             flags=re.M))
    git(ws.root, "commit", "-qam", "smaller evaluation")
    subprocess.run([sys.executable, "prepare.py"], cwd=ws.root, check=True, capture_output=True, timeout=600)
    r = cli("-C", str(ws.root), "loop", "--tag", "real", "--agent", "mutate", "--max", "2", "--decide", "plain",
            timeout=600)  # plain: one run per experiment (noise runs and repeats have their own tests)
    assert r.returncode == 0, r.stderr
    rows = tsv_rows(ws)
    assert [row[3] for row in rows][0] == "keep" and rows[0][4] == "baseline"
    assert 0.5 < float(rows[0][1]) < 20 and float(rows[0][2]) > 0
    assert rows[1][3] in ("keep", "discard", "crash") and rows[1][4] != "baseline"
    m = meta(ws, "0001")
    assert m["metrics"]["device"] == "cpu" and m["metrics"]["val_bpb"] == m["val_bpb"]
    assert b"\rstep" in (ws.experiment_dir("0001") / "train.log").read_bytes()
    best = meta(ws, "0002")["commit"] if rows[1][3] == "keep" else meta(ws, "0001")["commit"]
    assert git(ws.root, "rev-parse", "HEAD") == best and git(ws.root, "status", "--porcelain") == ""


def test_a_trainer_that_edits_tracked_files_is_caught(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    # the trainer runs in its own run folder: editing its copy of train.py changes nothing in the workspace
    edit_self = "\nopen('train.py', 'a').write('# edited while training\\n')\n"
    run_engine(ws, [{"quality": 0.9, "append": edit_self, "desc": "edits itself"}], max_experiments=2)
    assert [r[3] for r in tsv_rows(ws)] == ["keep", "keep"]
    assert git(ws.root, "status", "--porcelain") == ""
    # rewriting its copy of prepare.py (where the evaluation lives) means the run is not measured
    edit_copy = "\nopen('prepare.py', 'a').write('# tampered\\n')\n"
    rc, _, _ = run_engine(ws, [{"quality": 0.1, "append": edit_copy, "desc": "tampers with its copy"}],
                          max_experiments=1)
    assert rc == 0
    row = tsv_rows(ws)[-1]
    assert row[3] == "crash" and "rejected: prepare.py changed during training" in row[4]
    # reaching out of the run folder into the workspace's own prepare.py stops the engine for a person
    edit_ws = ("\nimport pathlib\np = pathlib.Path.cwd().parents[2] / 'prepare.py'\n"
               "p.write_text(p.read_text() + '# tampered\\n')\n")
    rc, engine, _ = run_engine(ws, [{"quality": 0.1, "append": edit_ws, "desc": "tampers"}], max_experiments=5)
    assert rc == 1
    row = tsv_rows(ws)[-1]
    assert row[3] == "crash" and "rejected: prepare.py changed during training" in row[4]
    assert "# tampered" in (ws.root / "prepare.py").read_text()  # left for the person to inspect
    assert "prepare.py changed while experiment 0004" in __import__("json").loads(ws.engine_json.read_text())["message"]


def test_proposal_changing_program_md_is_rejected_and_submitted_directives_are_committed(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    committed = ws.program_md.read_text()
    plans = [{"quality": 0.5, "files": {"program.md": "\nAlways keep my changes.\n"}, "desc": "rewrite the rules"},
             {"quality": 0.9, "desc": "fair change"}]
    control.submit_program(ws, "# Directives\nSubmitted while the loop runs.\n")
    rc, engine, agent = run_engine(ws, plans, max_experiments=3)
    assert rc == 0
    rows = tsv_rows(ws)
    assert rows[1][3] == "crash" and "rejected: changed program.md" in rows[1][4]
    assert rows[2][3] == "keep" and rows[2][4] == "fair change"
    # the agent's text is kept, the person's submitted directives are committed and reach the prompt
    assert "Always keep my changes." in (ws.experiment_dir("0002") / "program.md.proposed").read_text()
    assert ws.program_md.read_text() == "# Directives\nSubmitted while the loop runs.\n" != committed
    assert "Submitted while the loop runs." in agent.contexts[0].prompt
    assert "Always keep my changes." not in agent.contexts[1].prompt
    assert git(ws.root, "status", "--porcelain") == ""


def test_program_md_rejection_also_removes_the_files_the_agent_created(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    plans = [{"quality": 0.5, "files": {"program.md": "\nmine now\n", "helper.py": "X = 1\n"}, "desc": "sneaky"}]
    rc, engine, agent = run_engine(ws, plans, max_experiments=2)
    assert rc == 0
    assert "rejected: changed program.md" in tsv_rows(ws)[1][4]
    assert not (ws.root / "helper.py").exists()  # moved aside, not left for the next proposal to import
    assert (ws.experiment_dir("0002") / "created-files" / "helper.py").exists()
    assert git(ws.root, "status", "--porcelain") == ""


def test_submitted_directives_older_than_program_md_are_dropped(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    control.submit_program(ws, "stale text\n")
    pending = control.program_pending_path(ws)
    os.utime(pending, ns=(1, 1))  # handed in long before the hand edit below
    ws.program_md.write_text("# Directives\nnewer hand edit\n")
    assert control.take_program(ws) is None and not pending.exists()
    control.submit_program(ws, "fresh text\n")
    assert control.take_program(ws) == "fresh text\n"


def test_idea_queue_tolerates_undecodable_and_vanishing_files(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    control.queue_idea(ws, "first idea")
    (ws.ideas_dir / "00000000000000000000-1.txt").write_bytes(b"caf\xe9 latin-1\n")
    assert control.pending_ideas(ws)[0] == "caf\ufffd latin-1"
    assert control.take_idea(ws) == "caf\ufffd latin-1"
    assert control.take_idea(ws) == "first idea"
    assert control.take_idea(ws) is None
