"""Pure parts of the dashboard widgets: chart drawing, ratchet grouping, gauges, and the file tailer."""

import os

import pytest

from core.progress import Progress
from tests.tui_fixtures import make_workspace, progress_log
from tui.runs import LogProgress, thin, trained_seconds
from tui.state import StateReader
from tui.widgets.chart import OFF_SCALE, chart_range, render_chart, x_ticks
from tui.widgets.gpugauge import bar, short_reason, sparkline
from tui.widgets.header import fmt_duration, run_clock
from tui.widgets.logpane import FileTail, live_rows
from tui.widgets.losscurve import render_curves, y_range
from tui.widgets.ratchet import format_delta, ratchet_steps

POINTS = [(1, 1.0, "keep"), (2, 0.99, "keep"), (3, 1.2, "discard"), (4, 0.98, "keep"), (5, 0.985, "discard")]
FRONTIER = [(1, 1.0), (2, 0.99), (3, 0.99), (4, 0.98), (5, 0.98)]


def test_chart_draws_points_and_a_falling_frontier():
    lo, hi = chart_range(POINTS, 1.0)
    assert lo < 0.98 and 1.0 < hi < 1.2  # the outlier (1.2) is off scale, the baseline is in view
    rows = render_chart(POINTS, 20, 5, lo, hi, FRONTIER)
    assert len(rows) == 5 and all(len(r) == 20 for r in rows)
    layers = {layer for r in rows for _, layer in r}
    assert {"best", "discard", "over"} <= layers  # kept points lie on the frontier, drawn over them
    # the frontier never rises: the lowest row holding a 'best' cell moves down (or stays) left to right
    best_rows = []
    for c in range(20):
        ys = [y for y in range(5) if rows[y][c][1] == "best"]
        if ys:
            best_rows.append(max(ys))
    assert best_rows == sorted(best_rows) and best_rows[0] < best_rows[-1]
    assert all(0x2800 <= ord(ch) <= 0x28FF for r in rows for ch, layer in r if layer not in ("", "over"))
    # the outlier is an off-scale mark in the top row at its column (x = 3 of 1..5: the middle)
    over = [c for c, (ch, layer) in enumerate(rows[0]) if layer == "over"]
    assert over == [10] and rows[0][10][0] == OFF_SCALE


def test_chart_edge_cases():
    assert all(ch == " " for r in render_chart([], 5, 2, 0.9, 1.1) for ch, _ in r)
    one = render_chart([(1, 1.0, "keep")], 5, 2, 0.99, 1.01, [(1, 1.0)])
    assert any(layer == "best" for r in one for _, layer in r)
    flat = render_chart([(i, 1.0, "discard") for i in range(50)], 10, 3, 0.99, 1.01)
    assert any(layer == "discard" for r in flat for _, layer in r)


def test_chart_x_ticks():
    assert x_ticks(1, 7, 40)[0] == (0, "#1") and x_ticks(1, 7, 40)[-1] == (38, "#7")
    ticks = x_ticks(1, 1000, 60)
    cols = [c for c, _ in ticks]
    assert cols == sorted(cols) and len(ticks) >= 4
    assert all(c2 > c1 + len(l1) for (c1, l1), (c2, _) in zip(ticks, ticks[1:]))  # labels never touch
    assert [label for _, label in ticks][1:-1] == [str(n) for n in range(200, 1000, 200)]
    assert x_ticks(5, 5, 30) == [(0, "#5")] and x_ticks(1, 9, 4) == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_chart_widget_legend_crashes_and_ticks(tmp_path, anyio_backend):
    from textual.app import App

    from tests.tui_fixtures import screen_text
    from tui.widgets.chart import BpbChart
    rows = StateReader(make_workspace(tmp_path / "ws")).load().rows

    class One(App):
        def compose(self):
            yield BpbChart()

    app = One()
    async with app.run_test(size=(60, 16)) as pilot:
        app.query_one(BpbChart).set_rows(rows, 0.9875, 1.0)
        await pilot.pause()
        lines = screen_text(app).split("\n")
    assert lines[0].startswith("val_bpb · 6 runs · best 0.987500 · 1 crashed")
    assert lines[1].startswith("● kept  • discarded  ✗ crashed  ━ best so far")
    # y ticks: top, middle, bottom of the 12 plot rows; the best (0.9875) sits just above the bottom
    assert lines[2].startswith("1.001875┤") and lines[8].startswith("0.993489┤") and lines[13].startswith("0.986500┤")
    assert lines[13].rstrip().endswith("⠛")  # the last point, the best, at the right edge
    crash_row = lines[14]
    assert crash_row.startswith(" crashed│") and crash_row.count("✗") == 1
    assert crash_row.index("✗") == 9 + round(3 * (2 * 51 - 1) / 6) // 2  # experiment 4 of 1..7
    assert lines[15].split() == ["#1", "2", "4", "6", "#7"]


def test_log_progress_follows_a_run_through_its_stages(tmp_path):
    p = tmp_path / "train.log"
    p.write_bytes(b"")
    log = LogProgress(p)
    log.poll()
    assert log.stage() == "starting" and not log.output
    with open(p, "ab") as f:
        f.write(b"device: cpu | params: 11.5M\n")
        f.flush()
        log.poll()
        assert log.stage() == "starting" and log.output
        f.write(b"\rstep 00000 (0.0%) | loss: 9.000000 | remaining: 20s  \rstep 00001 (0.0%) | loss: 8.9 | rem")
        f.flush()
        log.poll()
        assert log.stage() == "warm-up" and log.last.step == 1
        f.write(b"aining: 20s  " + b"".join(b"\rstep %05d (%.1f%%) | loss: %.6f | remaining: %ds " %
                                           (i, i, 8.0 - i / 50, 20 - i // 5) for i in range(2, 60)))
        f.flush()
        log.poll()
        assert log.stage() == "training" and log.last.step == 59 and log.last.fraction == 0.59
        assert [p.step for p in log.curve][:3] == [0, 1, 2] and log.curve[-1].step == 59
        f.write(b"\n---\nval_bpb: 1.0\n")
        f.flush()
        log.poll()
        assert log.stage() == "evaluating"
    assert log.stage("recording") == "recording"
    p.write_bytes(b"x\n")  # the next run in the same file: starts over
    log.poll()
    assert log.last is None and log.stage() == "starting"


def test_log_progress_is_bounded_and_skips_a_flood(tmp_path):
    p = tmp_path / "train.log"
    p.write_bytes(progress_log(5000))
    log = LogProgress(p, max_read=64 * 1024)
    log.poll()
    assert log.skipped > 0 and log.last.step == 4999 and len(log.curve) <= 512
    assert thin(list(range(2000)), 100)[-1] == 1999 and len(thin(list(range(2000)), 100)) <= 100


def test_trained_seconds_and_the_run_clock():
    from tui.runs import RunView
    assert trained_seconds(Progress(10, 0.4, 3.0, 12.0), 20.0) == 8.0
    assert trained_seconds(Progress(10, None, 3.0, 12.0), 20.0) == 8.0  # from 'remaining' alone
    assert trained_seconds(None, 20.0) is None and trained_seconds(Progress(1, None, 3.0), 20.0) is None
    run = RunView("0008", "0", "", "training", 72.0, 8.0, 20.0, Progress(10, 0.4, 3.0), (), True)
    assert run_clock(run) == "1:12 elapsed · training 0:08 / 0:20"


def test_loss_curves_share_one_range_and_connect_their_points():
    best = tuple(Progress(i, i / 100, 9.0 if i < 3 else 4.0 - i / 100) for i in range(101))
    this = tuple(Progress(i, i / 100, 9.0 if i < 3 else 3.9 - i / 100) for i in range(51))
    lo, hi = y_range([best, this])
    assert lo < 3.0 and 3.95 < hi < 5  # the first steps' losses (9.0) are left out of the range
    b, t = render_curves([best, this], 40, 6, lo, hi)
    # both curves are continuous: a dot in every column they cover
    assert all(any(b[r][c] for r in range(6)) for c in range(40))
    assert all(any(t[r][c] for r in range(6)) for c in range(20)) and not any(t[r][30] for r in range(6))
    # the lower curve (this run) lies at or below the best run's where both exist
    low = lambda g, c: max(r for r in range(6) if g[r][c])  # noqa: E731
    assert all(low(t, c) >= low(b, c) for c in range(2, 20))


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


def test_small_pieces():
    assert fmt_duration(3725) == "1:02:05" and fmt_duration(-3) == "0:00"
    assert short_reason("no NVIDIA driver (NVML library not found)") == "no NVIDIA driver"
    assert live_rows("x" * 100, 40) == 3 and live_rows("x" * 40, 40) == 1 and live_rows("x" * 500, 40) == 3


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
