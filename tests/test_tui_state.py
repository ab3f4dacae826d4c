"""tui.state: snapshots rebuilt from files only (engine.json, results.tsv, events.jsonl, git HEAD)."""

import json
import os

import pytest

from core.errors import UserError
from core.ledger import Finished, Row
from core.status import STALE_AFTER_S
from core.workspace import Workspace
from tests.tui_fixtures import T0, big_results, make_upstream_repo, make_workspace, parallel_engine, write_engine
from tui.state import UPSTREAM, WORKSPACE, StateReader, build_rows, classify, parse_engine, read_experiment
from tui.widgets.results import filter_rows


def test_snapshot_of_a_workspace(tmp_path):
    root = make_workspace(tmp_path / "ws")
    snap = StateReader(root).load()
    assert snap.mode == WORKSPACE and snap.controllable and snap.engine_alive
    assert [r.exp_id for r in snap.rows] == ["0001", "0002", "0003", "0004", "0005", "0006", "0007"]
    assert snap.best == 0.9875 and snap.best_commit == "0000007" and snap.baseline == 1.0
    assert snap.counts == {"keep": 4, "discard": 2, "crash": 1}
    assert snap.branch == "autoresearch/nov26"
    crash = snap.rows[3]
    assert crash.status == "crash" and crash.val_bpb is None and crash.memory_gb is None
    assert snap.rows[4].delta == pytest.approx(0.9902 - 0.995) and snap.rows[4].reference == 0.995
    assert snap.best_exp_id == "0007"
    e = snap.engine
    assert (e.status, e.phase, e.tag, e.agent) == ("running", "training", "nov26", "mutate")
    cur = snap.current
    assert cur.id == "0008" and cur.time_budget == 300 and cur == e.current()


def test_engine_liveness(tmp_path):
    root = make_workspace(tmp_path / "ws", engine="dead")
    snap = StateReader(root).load()
    assert snap.engine.status == "running" and not snap.engine_alive and snap.current is None
    write_engine(root, status="stopped")
    assert not StateReader(root).load().engine_alive
    # an engine on another host (shared filesystem): alive while its heartbeat is fresh
    ws = Workspace(root)
    other = {"pid": 1, "hostname": "elsewhere", "status": "running", "heartbeat_at": T0}
    assert parse_engine(other, ws, now=T0 + 10).alive
    assert parse_engine(other, ws, now=T0 + STALE_AFTER_S - 1).alive  # the engine beats every HEARTBEAT_S
    assert not parse_engine(other, ws, now=T0 + STALE_AFTER_S + 1).alive


def test_garbage_engine_json_never_crashes(tmp_path):
    root = make_workspace(tmp_path / "ws")
    ws = Workspace(root)
    assert parse_engine(None, ws, T0) is None and parse_engine([1, 2], ws, T0) is None
    e = parse_engine({"pid": "x", "status": None, "slots": [{"id": 0, "experiment": 3, "time_budget": "soon"}, 7],
                      "proposals": "no", "best": "nope", "experiments_done": True}, ws, T0)
    assert e.pid is None and e.status == "stopped" and not e.alive
    assert e.slots[0].experiment == "3" and e.slots[0].time_budget is None and len(e.slots) == 1
    assert e.best is None and e.experiments_done == 0 and e.proposals == ()
    (root / ".autoresearch" / "engine.json").write_text('{"pid": 12, "sta')  # half-written by hand
    snap = StateReader(root).load()
    assert snap.engine is None and len(snap.rows) == 7


def test_hostile_experiment_ids_are_dropped(tmp_path):
    # ids name folders (experiments/<id>/) and appear on screen: no "../", no escapes, no markup
    for bad in ("../../etc", "00\x1b[2J01", "[bold]7[/bold]", "", "a" * 41, "..", "0001/x"):
        e = parse_engine({"status": "running", "slots": [{"id": "0", "experiment": bad}],
                          "proposals": [{"id": bad}]}, Workspace(tmp_path), T0)
        assert e.current() is None and e.proposals == ()
        assert read_experiment(tmp_path, bad).meta == {}
    e = parse_engine({"status": "running", "slots": [{"id": "0", "experiment": "0012"}]}, Workspace(tmp_path), T0)
    assert e.current().id == "0012"
    rows = build_rows([Row("abc1234", 1.0, 1.0, "keep", "a"), Row("def5678", 0.9, 1.0, "keep", "b")],
                      [Finished("../x", "abc1234", "keep"), Finished("0002", "def5678", "keep")])
    assert [r.exp_id for r in rows] == [None, "0002"]


def test_rows_are_matched_to_ids_in_order_with_repeated_commits():
    rows = [Row("aaaaaaa", 1.0, 1.0, "keep", "base"), Row("aaaaaaa", 0.0, 0.0, "crash", "rejected"),
            Row("aaaaaaa", 0.0, 0.0, "crash", "rejected again"), Row("bbbbbbb", 0.9, 1.0, "keep", "x"),
            Row("ccccccc", 0.95, 1.0, "discard", "hand-added row")]
    finished = [Finished("0001", "aaaaaaa" + "0" * 33, "keep"), Finished("0002", "aaaaaaa", "crash"),
                Finished("0003", "aaaaaaa", "crash"), Finished("0004", "bbbbbbb", "keep")]
    out = build_rows(rows, finished)
    assert [r.exp_id for r in out] == ["0001", "0002", "0003", "0004", None]
    assert [r.label for r in out][-1] == "#5"
    assert [r.reference for r in out] == [None, 1.0, 1.0, 1.0, 0.9]


def test_events_are_read_incrementally_and_reread_after_truncation(tmp_path):
    root = make_workspace(tmp_path / "ws")
    reader = StateReader(root)
    assert reader.load().rows[-1].exp_id == "0007"
    events = root / ".autoresearch" / "events.jsonl"
    with open(root / "results.tsv", "a") as f:
        f.write("0000008\t0.980000\t44.0\tkeep\tnext\n")
    with open(events, "a") as f:
        f.write(json.dumps({"ts": T0, "type": "experiment_finished", "id": "0008", "status": "keep",
                            "commit": "0000008"}) + "\n")
        f.write('{"ts": 1, "type": "experiment_sta')  # being written right now
    offset = reader._events_offset
    snap = reader.load()
    assert snap.rows[-1].exp_id == "0008" and reader._events_offset > offset
    events.write_text(json.dumps({"ts": T0, "type": "engine_started", "id": None}) + "\n")
    snap = reader.load()
    assert all(r.exp_id is None for r in snap.rows)


def test_signature_changes_with_the_files(tmp_path):
    root = make_workspace(tmp_path / "ws")
    reader = StateReader(root)
    sig = reader.signature()
    assert reader.signature() == sig
    write_engine(root, status="paused")
    assert reader.signature() != sig


def test_classify(tmp_path):
    root = make_workspace(tmp_path / "ws")
    assert classify(root) == WORKSPACE
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "constants.py").write_text("")
    assert classify(fresh) == WORKSPACE  # never run yet: `s` can start the first engine
    up, _ = make_upstream_repo(tmp_path / "up")
    assert classify(up) == UPSTREAM
    snap = StateReader(up).load()
    assert not snap.controllable and snap.engine is None and len(snap.rows) == 4 and snap.rows[0].exp_id is None
    with pytest.raises(UserError, match="does not exist"):
        classify(tmp_path / "nope")
    (tmp_path / "f").write_text("")
    with pytest.raises(UserError, match="is not a directory"):
        classify(tmp_path / "f")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not an autoresearch workspace"):
        classify(tmp_path / "empty")


def test_ten_thousand_rows_load_and_filter(tmp_path):
    # how fast: bench/tui_bench.py (results); a unit test on a loaded 2-core machine only checks the answers
    root = tmp_path / "big"
    root.mkdir()
    (root / "results.tsv").write_text(big_results(10_000))
    snap = StateReader(root).load()
    assert len(snap.rows) == 10_000
    hay = [f"{r.exp_id or ''} {r.commit} {r.description}".lower() for r in snap.rows]
    kept = filter_rows(snap.rows, "keep", "", hay)
    found = filter_rows(snap.rows, None, "tweak lr 7", hay)
    assert len(kept) == 2500 and kept[0].n == 9997 and len(found) > 700
    assert all("tweak lr 7" in f"{r.exp_id or ''} {r.commit} {r.description}".lower() for r in found)


def test_read_experiment(tmp_path):
    root = make_workspace(tmp_path / "ws")
    files = read_experiment(root, "0004")
    assert files.meta["status"] == "crash" and files.metrics == {} and "MATRIX_LR" in files.diff
    assert files.train_log.name == "train.log" and files.agent_log.name == "agent.log"
    assert read_experiment(root, None).diff is None


def test_deltas_are_the_numbers_decisions_were_made_on(tmp_path):
    """A row's delta is against the best it was decided against (the events' `reference`), never today's best:
    it does not move when a later run is kept, and a run decided against an older best (it trained while
    another slot kept something) shows that older best."""
    from core.ledger import Finished
    rows = [Row("aaaaaaa", 1.0, 1.0, "keep", "baseline"), Row("bbbbbbb", 0.99, 1.0, "keep", "b"),
            Row("ccccccc", 0.995, 1.0, "discard", "c"), Row("ddddddd", 0.98, 1.0, "keep", "d")]
    finished = [Finished("0001", "aaaaaaa", "keep", None, 1.0), Finished("0002", "bbbbbbb", "keep", 1.0, 0.99),
                # 0003 started from the baseline and finished after 0002 was kept: decided against 1.0
                Finished("0003", "ccccccc", "discard", 1.0, 0.99), Finished("0004", "ddddddd", "keep", 0.99, 0.98)]
    before = build_rows(rows[:3], finished[:3])
    after = build_rows(rows, finished)
    assert [r.delta for r in before] == [r.delta for r in after[:3]]
    assert [None if r.delta is None else round(r.delta, 6) for r in after] == [None, -0.01, -0.005, -0.01]
    assert after[0].reference is None and after[0].val_bpb == 1.0
    assert [r.best_after for r in after] == [1.0, 0.99, 0.99, 0.98]


def test_best_is_the_engines_best_after_the_last_decision(tmp_path):
    """As `autoresearch results` says (core.report): the best after the last decision, which a revert can make
    differ from the lowest kept val_bpb in results.tsv."""
    from core.report import summarize
    root = make_workspace(tmp_path / "ws", engine="stopped")
    events = root / ".autoresearch" / "events.jsonl"
    with open(root / "results.tsv", "a") as f:
        f.write("0000009\t0.970000\t44.0\tkeep\tlucky\n")
    with open(events, "a") as f:  # kept, then the engine found it not reproducible and went back to 0007
        f.write(json.dumps({"ts": T0, "type": "experiment_finished", "id": "0009", "status": "keep",
                            "commit": "0000009", "reference": 0.9875, "best": 0.9875}) + "\n")
    snap = StateReader(root).load()
    from core import ledger
    from core.events import read_finished
    cli = summarize(ledger.read(root / "results.tsv"), read_finished(events))
    assert snap.best == cli.best.val_bpb == 0.9875 and snap.best_commit == cli.best.commit == "0000007"
    assert snap.best_exp_id == "0007"


def test_parallel_engine_state(tmp_path):
    root = make_workspace(tmp_path / "ws")
    snap = StateReader(root).load()
    assert not snap.parallel and len(snap.slots) == 1 and snap.running[0].experiment == "0008"
    running = parallel_engine(root, n_slots=3, proposals=2)
    snap = StateReader(root).load()
    assert snap.parallel and [s.label for s in snap.slots] == ["GPU 0", "GPU 1", "GPU 2"]
    assert [s.experiment for s in snap.running] == running == ["0008", "0009"]
    assert [p.id for p in snap.proposals] == ["0011", "0012"]
    # one slot with lookahead 0 and nothing ahead: milestone 1's dashboard
    write_engine(root, status="running", phase="training", options={"slots": 1, "lookahead": 0})
    assert not StateReader(root).load().parallel
    # a dead engine's slots say nothing about now
    write_engine(root, status="stopped", phase="idle", exp_id=None)
    snap = StateReader(root).load()
    assert snap.slots == () and snap.proposals == () and not snap.parallel


def test_ideas_are_counted(tmp_path):
    from core import control
    from core.workspace import Workspace
    root = make_workspace(tmp_path / "ws")
    control.queue_idea(Workspace(root), "one")
    control.queue_idea(Workspace(root), "two")
    assert StateReader(root).load().pending_ideas == 2


def test_worktree_branch(tmp_path):
    from tests.tui_fixtures import git
    root = make_workspace(tmp_path / "ws")
    wt = tmp_path / "wt"
    git(root, "worktree", "add", "-q", "-b", "exp/other", str(wt))
    from tui.state import git_branch
    assert git_branch(wt) == "exp/other"
    assert os.path.isfile(wt / ".git")
