"""Early stop: a clear loser is stopped, a late winner in the warm-down is not, an unreadable curve is a note."""

from __future__ import annotations

import pytest

from core import early_stop
from core.early_stop import Calibration, Monitor, calibrate, replay
from core.progress import Progress

FRACTIONS = [i / 40 for i in range(1, 40)]  # 0.025 .. 0.975, as a run printing 40 status lines


def base_loss(f: float) -> float:
    return 3.0 + 2.0 * (1 - f) ** 2  # a warm-down-like curve: it still falls fast late in the run


def curve(offset=lambda f: 0.0, fractions=FRACTIONS) -> list[Progress]:
    return [Progress(i, f, base_loss(f) + offset(f)) for i, f in enumerate(fractions)]


def noise_curves() -> list[list[Progress]]:
    return [curve(lambda f, d=d: d) for d in (-0.02, -0.01, 0.0, 0.01, 0.02)]


def line(p: Progress) -> str:
    return f"\rstep {p.step:05d} ({100 * p.fraction:.1f}%) | loss: {p.loss:.6f} | lrm: 1.00 | remaining: 3s    "


@pytest.fixture
def cal() -> Calibration:
    return calibrate(noise_curves())


def test_calibration_is_the_loss_spread_of_the_noise_runs(cal):
    assert cal.checkpoints == early_stop.DEFAULT_CHECKPOINTS
    assert cal.runs == 5
    for s in cal.spreads:
        assert s == pytest.approx(0.0158113883, rel=1e-6)  # stdev of -0.02 .. 0.02 in steps of 0.01
    assert Calibration.from_json(cal.to_json()) == cal
    with pytest.raises(ValueError):
        Calibration.from_json({"checkpoints": [0.4], "spreads": []})
    with pytest.raises(ValueError):
        Calibration.from_json({"spreads": [0.1]})


def test_a_clear_loser_is_stopped_at_the_first_check_point_beyond_the_margin(cal):
    best = curve()
    loser = curve(lambda f: 0.5)  # behind by 0.5 all along
    v = replay(best, loser, cal)
    # at 40 % the best still gains 0.72 until its end: 0.5 behind is no proof yet; at 60 % it gains only 0.32
    assert v.stop
    assert v.checkpoint == 0.6 and v.fraction == 0.6
    assert v.margin == pytest.approx(base_loss(0.6) - base_loss(0.975))
    assert v.reason == "stopped early at 60 %: loss 3.82 vs 3.32 for the best at 60 % (margin 0.32)"


def test_a_late_winner_in_the_warm_down_is_not_stopped(cal):
    best = curve()
    # behind by 0.49 at 40 %, 0.19 at 60 %, 0.01 at 80 %; ahead at the end (the warm-down brings it home)
    late = curve(lambda f: 1.5 * (1 - f) ** 2 - 0.05)
    assert late[-1].loss < best[-1].loss
    v = replay(best, late, cal)
    assert not v.stop and v.note is None and v.reason is None
    # what saves it is the warm-down allowance: with the noise margin alone it would have been stopped
    noise_only = Calibration(cal.checkpoints, cal.spreads, cal.runs, cal.k, r=0.0)
    assert replay(best, late, noise_only).stop


def test_inside_the_noise_margin_is_not_stopped():
    wide = calibrate([curve(lambda f, d=d: d) for d in (-0.3, 0.0, 0.3)])  # spread 0.3: margin 0.9
    assert not replay(curve(), curve(lambda f: 0.8), wide).stop
    assert replay(curve(), curve(lambda f: 0.95), wide).stop


def test_the_reason_names_the_progress_where_it_stopped(cal):
    coarse = [0.1, 0.3, 0.62, 0.9]  # a slow run: its first line past 60 % is at 62 %, and 40 % was skipped
    loser = [Progress(i, f, base_loss(f) + 1.0) for i, f in enumerate(coarse)]
    v = replay(curve(), loser, cal)
    assert v.stop and v.checkpoint == 0.6 and v.fraction == 0.62
    assert v.reason.startswith("stopped early at 62 %: loss ")
    assert "for the best at 62 %" in v.reason


def test_a_run_that_jumps_over_check_points_is_checked_once(cal):
    mon = Monitor(curve(), cal)
    assert mon.feed(Progress(0, 0.1, 5.0)) is None
    assert mon.feed(Progress(1, 0.85, base_loss(0.85))) is None  # past 40, 60 and 80 %: only 80 % is checked
    assert [c.checkpoint for c in mon.checked] == [0.8]
    assert mon.feed(Progress(2, 0.9, 99.0)) is None  # no check point left
    assert not mon.finish().stop


def test_streamed_bytes_in_odd_chunks_give_the_same_verdict(cal):
    best, loser = curve(), curve(lambda f: 0.5)
    data = ("device: cpu | params 1.2M\n" + "".join(line(p) for p in loser) + "\n---\nval_bpb: 2.0\n").encode()
    mon = Monitor(best, cal)
    got = None
    for i in range(0, len(data), 7):  # chunks that cut lines (and numbers) in half
        v = mon.feed_bytes(data[i:i + 7])
        got = got or v
    assert got is not None and got.stop
    assert got.reason == replay(best, loser, cal).reason
    assert mon.feed_bytes(b"more output") is None  # stopped once; later output changes nothing


def test_a_changed_progress_format_is_a_note_never_an_exception(cal):
    mon = Monitor(curve(), cal)
    out = []
    for i in range(200):
        out.append(mon.feed_text(f"iter {i} | {i / 2:.1f} percent | train_loss={9 - i / 40:.3f}\r"))
    notes = [v for v in out if v is not None]
    assert len(notes) == 1 and not notes[0].stop
    assert "no readable progress lines" in notes[0].note
    assert not mon.active
    fin = mon.finish()
    assert not fin.stop and fin.note == notes[0].note


def test_a_short_run_in_another_format_gets_its_note_at_the_end(cal):
    mon = Monitor(curve(), cal)
    for i in range(5):
        assert mon.feed_text(f"step {i} loss {9 - i}\n") is None  # steps, but no progress percentage
    fin = mon.finish()
    assert not fin.stop and "no readable progress lines" in fin.note


def test_garbage_output_is_harmless(cal):
    mon = Monitor(curve(), cal)
    for chunk in (b"\xff\xfe\x00", b"\x1b[2J\x1b]0;title\x07", b"step (%) | loss: | remaining: s", b"\r" * 10,
                  b"x" * 10000, "step 00001 (45.0%) | loss: 3.9 \u2028".encode()):
        mon.feed_bytes(chunk)
    assert not mon.finish().stop


def test_progress_that_goes_backwards_turns_early_stop_off(cal):
    mon = Monitor(curve(), cal)
    assert mon.feed(Progress(0, 0.5, base_loss(0.5))) is None
    v = mon.feed(Progress(1, 0.2, 99.0))
    assert v is not None and not v.stop and "backwards" in v.note
    assert mon.feed(Progress(2, 0.9, 99.0)) is None
    assert not mon.finish().stop


def test_no_stop_without_a_best_curve_or_a_calibration(cal):
    loser = curve(lambda f: 5.0)
    v = replay([], loser, cal)
    assert not v.stop and "best run's train.log has no readable progress lines" in v.note
    v = replay([Progress(1, None, 3.0)], loser, cal)
    assert not v.stop and v.note
    v = replay(curve(), loser, None)
    assert not v.stop and "needs the loss curves" in v.note
    one = calibrate([curve()])
    assert one.runs == 1 and one.spreads == (None, None, None)
    assert not replay(curve(), loser, one).stop
    first_note = Monitor(curve(), None).feed(Progress(0, 0.5, 9.0))
    assert first_note is not None and "needs the loss curves" in first_note.note


def test_a_check_point_the_noise_runs_never_reached_is_skipped():
    short = [[p for p in curve(lambda f, d=d: d) if p.fraction < 0.5] for d in (-0.01, 0.0, 0.01)]
    cal = calibrate(short)  # the noise runs' logs end before 60 %
    assert cal.spreads[0] is not None and cal.spreads[1] is None and cal.spreads[2] is None
    mon = Monitor(curve(), cal)
    for p in curve(lambda f: 0.5):
        mon.feed(p)
    assert not mon.finish().stop  # 0.5 behind is inside 40 %'s warm-down allowance; 60 and 80 % have no margin
    assert [c.margin is None for c in mon.checked] == [False, True, True]


# --- bench/early_stop_backtest.py on a recorded workspace (files written here, no trainer) ---------------

def _record(ws, exp_id, status, val, commit, parent, curve_points, training_s=20.0):
    import json

    d = ws / ".autoresearch" / "experiments" / exp_id
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"id": exp_id, "status": status, "val_bpb": val, "commit": commit,
                                             "parent": parent, "description": f"run {exp_id}",
                                             "metrics": {"training_seconds": training_s, "eval_seconds": 4.0}}))
    (d / "train.log").write_text("device: cpu\n" + "".join(line(p) for p in curve_points) + "\n---\n")


def load_bench(name: str, monkeypatch):
    """A bench script as a module (bench/ is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mod)  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def test_the_backtest_replays_each_run_against_the_best_of_its_time(tmp_path, monkeypatch, capsys):
    bt = load_bench("early_stop_backtest", monkeypatch)

    ws = tmp_path / "ws"
    _record(ws, "0001", "keep", 2.0, "a" * 40, "a" * 40, curve(lambda f: 0.3))
    _record(ws, "0002", "keep", 1.9, "b" * 40, "a" * 40, curve())  # ahead of 0001 all along
    _record(ws, "0003", "discard", 2.5, "c" * 40, "b" * 40, curve(lambda f: 0.6))  # a clear loser against 0002
    _record(ws, "0004", "keep", 1.8, "d" * 40, "b" * 40, curve(lambda f: 1.5 * (1 - f) ** 2 - 0.05))  # late win
    _record(ws, "0005", "crash", None, "e" * 40, "d" * 40, [])
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    for i, c in enumerate(noise_curves()):
        (noise_dir / f"run-{i:02d}.log").write_text("".join(line(p) for p in c))

    runs = bt.load_runs(ws)
    assert [(r.id, r.best_id) for r in runs] == [("0001", None), ("0002", "0001"), ("0003", "0002"),
                                                 ("0004", "0002"), ("0005", "0004")]
    cal = calibrate(bt.noise_curves(noise_dir, runs))
    assert cal.runs == 5
    results = bt.replay_all(runs, cal)
    assert [(r.id, v.stop) for r, v, _ in results] == [("0002", False), ("0003", True), ("0004", False)]
    s = bt.summarize(results)
    assert s["kept_stopped"] == 0 and s["discards_stopped"] == 1
    stopped = next(v for r, v, _ in results if v.stop)
    assert s["saved_training_s"] == pytest.approx((1 - stopped.fraction) * 20.0)
    # the pairs mode: every measured run against every other as the best; 0002 and 0004 beat 0001 ...
    pairs = bt.pair_runs(runs)
    assert len(pairs) == 12
    assert {p.id for p in pairs if p.status == "keep"} == {"0002v0001", "0004v0001", "0004v0002", "0002v0003",
                                                           "0001v0003", "0004v0003"}
    assert bt.main([str(ws), "--noise-logs", str(noise_dir), "--pairs"]) == 0
    out = capsys.readouterr().out
    assert "stopped 0 kept runs (target 0) and 1 discards" in out
    assert "stopped early at 60 %" in out
