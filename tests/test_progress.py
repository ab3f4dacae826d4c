"""The trainer's progress lines as data: train.py's format, `\\r` rewrites, format changes, the curve lookup."""

from __future__ import annotations

from pathlib import Path

from core.progress import Progress, loss_at, parse_line, parse_text, read_curve

ROOT = Path(__file__).resolve().parent.parent


def train_py_line(step: int, pct: float, loss: float, remaining: float) -> str:
    """A status line printed the way train.py prints it (its f-string, with made-up numbers)."""
    return (f"\rstep {step:05d} ({pct:.1f}%) | loss: {loss:.6f} | lrm: 1.00 | dt: 912ms | tok/sec: 8,963 | "
            f"mfu: n/a | epoch: 1 | remaining: {remaining:.0f}s    ")


def test_train_py_still_prints_the_format_this_module_reads():
    src = (ROOT / "train.py").read_text(encoding="utf-8")
    assert 'print(f"\\rstep {step:05d} ({100 * progress:.1f}%) | loss: {shown_loss:.6f} |' in src
    assert "remaining: {remaining:.0f}s" in src


def test_parse_line_reads_step_progress_loss_and_remaining():
    p = parse_line(train_py_line(12, 34.5, 3.21, 26).strip("\r"))
    assert p == Progress(12, 0.345, 3.21, 26.0)


def test_lines_that_are_not_progress_lines_are_none():
    for line in ("", "device: cpu | params: 1.2M", "---", "val_bpb:          2.064212", "num_steps:        20"):
        assert parse_line(line) is None


def test_another_format_gives_partial_or_no_data_never_an_exception():
    assert parse_line("it 12 | 34.5 % | l=3.2") is None
    p = parse_line("step 12 | train loss 3.2")  # no percentage: the curve cannot be placed on the budget
    assert p is not None and p.fraction is None
    assert parse_line("step 12 (34.5%) | loss: nan").loss is None
    assert parse_line("step 12 (34.5%) | loss: inf").loss is None
    assert parse_line("step 12 (999%) | loss: 3.0").fraction is None
    assert parse_line("step 99999999999999999999999 (1e999%) | loss: 1e999").loss is None
    assert parse_line("\x1b[31mstep 3 (5.0%) | loss: 7.1\x1b[0m").loss == 7.1


def test_parse_text_splits_carriage_return_rewrites():
    text = "device: cpu\n" + "".join(train_py_line(i, 5.0 * i, 7.0 - 0.1 * i, 20 - i) for i in range(5)) + "\n---\n"
    curve = parse_text(text)
    assert [p.step for p in curve] == [0, 1, 2, 3, 4]
    assert curve[-1].fraction == 0.2 and abs(curve[-1].loss - 6.6) < 1e-9


def test_read_curve_of_a_missing_or_binary_log(tmp_path):
    assert read_curve(tmp_path / "absent.log") == []
    log = tmp_path / "train.log"
    log.write_bytes(b"\xff\xfe garbage \x00" + train_py_line(3, 12.5, 6.5, 10).encode() + b"\n")
    assert read_curve(log) == [Progress(3, 0.125, 6.5, 10.0)]


def test_loss_at_is_the_last_update_at_or_before_the_fraction():
    curve = [Progress(0, 0.0, 7.0), Progress(1, 0.3, 6.0), Progress(2, None, 5.5), Progress(3, 0.6, 5.0)]
    assert loss_at(curve, 0.0) == 7.0
    assert loss_at(curve, 0.45) == 6.0
    assert loss_at(curve, 0.6) == 5.0
    assert loss_at(curve, 1.0) == 5.0
    assert loss_at([Progress(0, 0.5, 4.0)], 0.4) is None
    assert loss_at([], 0.5) is None
