"""The noise rule in the engine: noise runs, sigma stored and reused, borderline wins re-run, early stop, and a
person's keep and revert (real git, real agent and trainer subprocesses)."""

from __future__ import annotations

import json
import threading

from engine_fixtures import (
    FAKE_TRAIN,
    ScriptAgent,
    git,
    make_workspace,
    meta,
    read_events,
    tsv_rows,
    wait_event,
    wait_for,
)

from core import control
from core.config import LoopConfig
from core.engine import Engine

# The fake trainer with seed noise the test controls (no seed: -0.02; seeds 1 and 2: 0 and +0.02; any other seed,
# i.e. a repeat of a proposal: -0.04) and progress lines in train.py's format, so that curves can be read.
TRAIN = FAKE_TRAIN.replace(
    "QUALITY = 1.0  # the val_bpb this run reports",
    "QUALITY = 1.0  # the val_bpb this run reports\nLOSS_OFFSET = 0.0  # added to the printed training loss\n"
    "PLAIN_PROGRESS = False  # print progress in another format")
TRAIN = TRAIN.replace(
    '''    print(f"\\rstep {i:02d} loss {QUALITY + (steps - i) * 0.1:.4f}", end="", flush=True)''',
    '''    if PLAIN_PROGRESS:
        print(f"\\rit={i} l={QUALITY:.2f}", end="", flush=True)
    else:
        print(f"\\rstep {i:05d} ({100 * (i + 1) / steps:.1f}%) | loss: {QUALITY + LOSS_OFFSET + (steps - i) * 0.1:.6f}"
              f" | remaining: 1s", end="", flush=True)''')
TRAIN = TRAIN.replace("evaluate(QUALITY,", "evaluate(QUALITY + {None: -0.02, '1': 0.0, '2': 0.02}.get("
                      "os.environ.get('AUTORESEARCH_SEED'), -0.04),")
assert "PLAIN_PROGRESS" in TRAIN and "AUTORESEARCH_SEED" in TRAIN and "{100 * (i + 1)" in TRAIN


def run(ws, plans, max_experiments, **cfg):
    cfg.setdefault("lookahead", 0)
    cfg.setdefault("decide", "noise")
    cfg.setdefault("noise_runs", 2)
    agent = ScriptAgent(plans)
    eng = Engine(ws, LoopConfig(tag="t", max_experiments=max_experiments, **cfg), agent=agent, handle_signals=False,
                 log=lambda m: None)
    return eng.run(), eng, agent


def rows(ws):
    return [(r[3], r[4]) for r in tsv_rows(ws)]


def test_noise_runs_measure_sigma_which_is_stored_reused_and_remeasured_after_a_budget_change(tmp_path):
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    rc, eng, _ = run(ws, [{"quality": 0.9, "desc": "clear win"}], max_experiments=2)
    assert rc == 0
    got = rows(ws)
    assert got[:3] == [("keep", "baseline"), ("discard", "noise run 1/2: baseline re-run with seed 1"),
                       ("discard", "noise run 2/2: baseline re-run with seed 2")]
    stored = json.loads((ws.state_dir / "noise" / "t.json").read_text())["floor"]
    assert stored["val_bpbs"] == [0.98, 1.0, 1.02] and stored["experiments"] == ["0001", "0002", "0003"]
    # sigma was 0.02 from the three runs; the win and its repeat (0.88, 0.86) are pooled in: (8e-4 + 2e-4) / 3 dof
    assert stored["groups"] == [[0.88, 0.86]] and abs(stored["sigma"] - (1e-3 / 3) ** 0.5) < 1e-9
    assert [meta(ws, i)["seed"] for i in ("0002", "0003")] == [1, 2]
    # a clear win is re-run once (--confirm wins) and kept on the mean of its two runs
    assert got[3] == ("discard", "clear win") and got[4] == ("keep", "clear win [mean of 2 runs]")
    kept = tsv_rows(ws)[4]
    assert float(kept[1]) == 0.87  # (0.88 + 0.86) / 2: what the decision used
    m = meta(ws, "0005")
    assert m["kind"] == "confirmation" and m["confirms"] == "0004" and m["run_val_bpb"] == 0.86
    assert m["keep_rule"]["rule"] == "noise" and m["keep_rule"]["runs"] == 2 and "×2" in m["keep_rule"]["confidence"]
    assert "noise σ 0.018 from 5 runs" in json.loads(ws.engine_json.read_text())["noise"]["text"]
    # the next start reuses sigma: no noise runs
    n = len(tsv_rows(ws))
    rc, _, _ = run(ws, [{"quality": 3.0, "desc": "worse"}], max_experiments=1, early_stop=False)
    assert rc == 0 and rows(ws)[n:] == [("discard", "worse")]
    assert "worse by" in meta(ws, "0006")["reason"] and "σ 0.018" in meta(ws, "0006")["reason"]
    # a new time budget: sigma is measured again, K + 1 runs of the best (its old value is not comparable)
    consts = ws.root / "constants.py"
    consts.write_text(consts.read_text().replace("TIME_BUDGET = 1", "TIME_BUDGET = 2"))
    git(ws.root, "commit", "-qam", "a longer budget")
    n = len(tsv_rows(ws))
    rc, _, _ = run(ws, [], max_experiments=1)
    assert rc == 0
    assert [e["reason"] for e in read_events(ws) if e["type"] == "noise_remeasure"][-1].startswith(
        "the time budget changed")


def test_a_borderline_win_is_confirmed_or_refuted_by_its_repeat(tmp_path):
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    # sigma 0.02, z 2: the bar is 0.04 below the best (1.0). A first run at 0.965 is inside the band: it runs
    # again (at 0.945); the mean 0.955 clears the bar and becomes the best. Against it, a first run at 0.94 is
    # inside the band again, but with its repeat (0.92) the mean 0.93 does not clear it.
    rc, _, _ = run(ws, [{"quality": 0.985, "desc": "confirmed"}, {"quality": 0.96, "desc": "refuted"}],
                   max_experiments=3, confirm="borderline")
    assert rc == 0
    got = rows(ws)
    assert got[3:] == [("discard", "confirmed"), ("keep", "confirmed [mean of 2 runs]"), ("discard", "refuted"),
                       ("discard", "refuted")]
    assert "borderline" in meta(ws, "0004")["reason"] and meta(ws, "0004")["confirmed_by"] == "0005"
    assert meta(ws, "0007")["reason"].startswith("within noise on the mean of 2 runs")
    assert git(ws.root, "rev-parse", "HEAD") == meta(ws, "0005")["commit"] == meta(ws, "0004")["commit"]


def test_early_stop_of_a_clear_loser_and_a_changed_progress_format(tmp_path):
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    plans = [{"quality": 1.5, "set": {"LOSS_OFFSET": 3.0, "SLEEP": 20.0}, "desc": "loses"},
             {"quality": 1.6, "set": {"PLAIN_PROGRESS": True}, "desc": "other format"}]
    rc, _, _ = run(ws, plans, max_experiments=3)
    assert rc == 0
    got = rows(ws)
    assert got[3][0] == "discard" and got[3][1].startswith("loses (stopped early at ")
    m = meta(ws, "0004")
    assert m["reason"].startswith("stopped early at 40 %: loss") and m["early_stop"]["stop"] is True
    assert m["timings"]["train_s"] < 15  # it did not run its 20 s
    assert tsv_rows(ws)[3][1] == "0.000000"
    # a train.py that prints progress in another format is decided as usual, never stopped, never a crash
    assert got[4] == ("discard", "other format") and "early_stop" not in meta(ws, "0005")


def test_a_person_keeps_a_discard_and_reverts_a_keep(tmp_path):
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    agent = ScriptAgent([{"quality": 1.01, "desc": "discarded"}, {"quality": 1.01, "desc": "after the keep",
                                                                   "sleep": 3}],
                        default={"quality": 3.0, "desc": "filler", "sleep": 1})
    eng = Engine(ws, LoopConfig(tag="t", lookahead=0, decide="plain"), agent=agent, handle_signals=False,
                 log=lambda m: None)
    t = threading.Thread(target=eng.run)
    t.start()
    try:
        wait_event(ws, "experiment_finished", id="0002")
        assert meta(ws, "0002")["status"] == "discard"
        control.send(ws, "keep", exp_id="0002")
        ev = wait_event(ws, "overruled", id="0002")
        kept = wait_event(ws, "experiment_finished", status="keep", decided_by="person")
        assert git(ws.root, "rev-parse", "HEAD") == kept["commit"] == meta(ws, "0002")["commit"]
        # the next proposal's prompt says what the person decided
        wait_for(lambda: any("A person kept experiment 0002" in p.read_text()
                             for p in ws.experiments_dir.glob("*/prompt.md")), what="a prompt that says so")
        control.send(ws, "pause")
        wait_for_idle(ws)
        control.send(ws, "revert")
        rev = wait_event(ws, "experiment_finished", kind="revert")
        assert rev["status"] == "keep" and rev["decided_by"] == "person" and rev["val_bpb"] == 0.98
        assert "QUALITY = 1.0 " in git(ws.root, "show", "HEAD:train.py")  # the baseline's train.py again
        assert git(ws.root, "rev-parse", "HEAD~1") == kept["commit"]  # the branch goes on; history is kept
    finally:
        control.send(ws, "stop")
        control.send(ws, "resume")
        t.join(60)
    assert not t.is_alive()
    assert ev["action"] == "keep" and git(ws.root, "status", "--porcelain") == ""


def wait_for_idle(ws):
    wait_for(lambda: (lambda st: st["status"] == "paused" and not any(s["experiment"] for s in st["slots"]))(
        json.loads(ws.engine_json.read_text())), timeout=30, what="a paused engine with no run in flight")


def test_the_noise_command_measures_sigma_then_stops(tmp_path):
    from engine_fixtures import cli
    ws = make_workspace(tmp_path / "ws", train=TRAIN)
    r = cli("-C", str(ws.root), "noise", "--runs", "2")
    assert r.returncode == 0, r.stderr
    assert "noise σ 0.02 from 3 runs" in r.stderr
    assert rows(ws) == [("keep", "baseline"), ("discard", "noise run 1/2: baseline re-run with seed 1"),
                        ("discard", "noise run 2/2: baseline re-run with seed 2")]
    r = cli("-C", str(ws.root), "keep", "0002")
    assert r.returncode == 1 and "no engine is running" in r.stderr
    r = cli("-C", str(ws.root), "keep", "0009")
    assert r.returncode == 1 and "there is no experiment 0009" in r.stderr
