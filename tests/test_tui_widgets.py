"""Pure parts of the dashboard widgets: chart drawing, ratchet grouping, gauges, and the file tailer."""

import os

from tests.tui_fixtures import make_workspace
from tui.state import StateReader
from tui.widgets.chart import render_chart
from tui.widgets.gpugauge import bar, sparkline
from tui.widgets.header import countdown, fmt_duration, trainer_remaining
from tui.widgets.logpane import FileTail
from tui.widgets.ratchet import format_delta, ratchet_steps


def test_chart_draws_points_and_a_falling_frontier():
    points = [(1, 1.0, "keep"), (2, 0.99, "keep"), (3, 1.2, "discard"), (4, 0.98, "keep"), (5, 0.985, "discard")]
    rows = render_chart(points, 20, 5)
    assert len(rows) == 5 and all(len(r) == 20 for r in rows)
    layers = {layer for r in rows for _, layer in r}
    assert {"best", "discard"} <= layers
    # the frontier never rises: the lowest row holding a 'best' cell moves down (or stays) left to right
    best_rows = []
    for c in range(20):
        ys = [y for y in range(5) if rows[y][c][1] == "best"]
        if ys:
            best_rows.append(max(ys))
    assert best_rows == sorted(best_rows) and best_rows[0] < best_rows[-1]
    assert all(0x2800 <= ord(ch) <= 0x28FF for r in rows for ch, layer in r if layer)
    # an outlier (1.2) is clamped into the top row instead of squashing the rest
    assert any(layer == "discard" for _, layer in rows[0])


def test_chart_edge_cases():
    assert all(ch == " " for r in render_chart([], 5, 2) for ch, _ in r)
    one = render_chart([(1, 1.0, "keep")], 5, 2)
    assert any(layer == "best" for r in one for _, layer in r)
    flat = render_chart([(i, 1.0, "discard") for i in range(50)], 10, 3)
    assert any(layer == "discard" for r in flat for _, layer in r)


def test_ratchet_steps_group_side_marks(tmp_path):
    rows = StateReader(make_workspace(tmp_path / "ws")).load().rows
    steps = ratchet_steps(rows)
    assert [(s.kept.exp_id if s.kept else None, s.discarded, s.crashed) for s in steps] == [
        ("0007", 0, 0), ("0005", 1, 0), ("0002", 1, 1), ("0001", 0, 0)]
    assert format_delta(-0.0027) == "−0.002700" and format_delta(None) == ""


def test_gauge_pieces():
    s = sparkline([0, 50, 100, None], 6)
    assert len(s) == 6 and s.endswith("▄█ ") and s.startswith("  ")
    assert sparkline(range(0, 1000, 10), 5) == "█████"
    filled, empty = bar(0.5, 10)
    assert filled == "█████" and empty == "░" * 5
    filled, empty = bar(0.55, 10)
    assert filled == "█████▌" and len(filled) + len(empty) == 10
    assert bar(2.0, 4) == ("████", "")


def test_countdown():
    from core.status import Current
    cur = Current(id="0001", phase="training", started_at=100.0, training_started_at=160.0, time_budget=300.0)
    assert countdown(cur, "training", 220.0) == "4:00 left"
    assert countdown(cur, "training", 470.0) == "finishing +0:10"
    assert "over" not in countdown(cur, "training", 4000.0) and "-" not in countdown(cur, "training", 4000.0)
    assert countdown(cur, "proposing", 145.0) == "proposing 0:45"
    # the trainer's own count wins over the estimate (it excludes the compiling steps)
    assert countdown(cur, "training", 470.0, reported=42.0, progressing=True) == "0:42 left"
    assert countdown(cur, "training", 470.0, reported=0.0, progressing=True) == "evaluating"
    assert countdown(cur, "training", 470.0, reported=12.0, progressing=False) == "evaluating"
    assert trainer_remaining("step 00002 (67.7%) | loss: 7.36 | dt: 72ms | epoch: 1 | remaining: 13s    ") == 13
    assert trainer_remaining("step 00002 | loss 3.0") is None
    assert fmt_duration(3725) == "1:02:05"


def test_file_tail_starts_at_a_line_boundary_near_the_end(tmp_path):
    p = tmp_path / "run.log"
    p.write_bytes(b"".join(b"line %05d\n" % i for i in range(10_000)))
    t = FileTail(p, initial_tail=1000)
    reset, data = t.poll()
    assert not reset and data.startswith(b"line ") and data.endswith(b"line 09999\n") and len(data) < 1000
    assert t.poll() == (False, b"")
    with open(p, "ab") as f:
        f.write(b"more\n")
    assert t.poll() == (False, b"more\n")


def test_file_tail_detects_a_new_run(tmp_path):
    p = tmp_path / "run.log"
    p.write_bytes(b"old run line 1\nold run line 2\n")
    t = FileTail(p)
    assert t.poll()[1] == b"old run line 1\nold run line 2\n"
    p.write_bytes(b"new\n")  # truncated: shorter than our offset
    assert t.poll() == (True, b"new\n")
    # truncated and rewritten past our offset between two polls: the first bytes changed
    p.write_bytes(b"third run, longer than before, with more text\n")
    assert t.poll() == (True, b"third run, longer than before, with more text\n")
    # replaced by a new file (new inode)
    tmp = tmp_path / "x"
    tmp.write_bytes(b"replaced\n")
    os.replace(tmp, p)
    assert t.poll() == (True, b"replaced\n")
    p.unlink()
    assert t.poll() == (False, b"")


def test_file_tail_never_lags_without_bound(tmp_path):
    p = tmp_path / "run.log"
    p.write_bytes(b"")
    t = FileTail(p, initial_tail=100, max_read=1000, max_lag=5000)
    t.poll()
    with open(p, "ab") as f:
        f.write(b"".join(b"%08d\n" % i for i in range(10_000)))  # 90 KB at once
    reset, data = t.poll()
    assert not reset and data.endswith(b"00009999\n") and len(data) <= 100
    assert t.skipped_bytes > 80_000
