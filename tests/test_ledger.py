"""core.ledger: results.tsv in upstream's format; bad lines reported and kept, appends are whole lines."""

from __future__ import annotations

import pytest

from core import ledger


def test_append_writes_header_then_upstream_rows(tmp_path):
    p = tmp_path / "results.tsv"
    ledger.append(p, "a1b2c3d4e5f6", 0.9979, 45060.2 / 1024, "keep", "baseline")
    ledger.append(p, "b2c3d4e", 1.5, 44.0, "crash", "oom\twith tab\nand newline")
    lines = p.read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    assert lines[1] == "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline"
    assert lines[2] == "b2c3d4e\t0.000000\t0.0\tcrash\toom with tab and newline"  # crashes carry zeros


def test_append_after_a_hand_edit_without_trailing_newline(tmp_path):
    p = tmp_path / "results.tsv"
    p.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc1234\t1.000000\t1.0\tkeep\tbase")
    ledger.append(p, "def5678", 0.9, 1.0, "keep", "next")
    led = ledger.read(p)
    assert [r.commit for r in led.rows] == ["abc1234", "def5678"] and not led.bad_lines


def test_bad_lines_are_reported_and_skipped():
    text = ("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
            "abc1234\t1.000000\t44.0\tkeep\tbaseline\n"
            "garbage line\n"
            "abc1235\tnope\t44.0\tkeep\tbad number\n"
            "abc1236\t0.9\t44.0\tmaybe\tbad status\n"
            "xyz\t0.9\t44.0\tkeep\tnot hex\n"
            "abc1237\t-\t-\tcrash\tupstream crash row\n"
            "\n"
            "abc1238\t0.950000\t44.0\tdiscard\tworse\n")
    led = ledger.parse(text)
    assert [r.commit for r in led.rows] == ["abc1234", "abc1237", "abc1238"]
    assert [b[0] for b in led.bad_lines] == [3, 4, 5, 6]
    assert "4 malformed lines (first: line 3" in led.warning()
    assert led.best.commit == "abc1234" and led.baseline.commit == "abc1234"


def test_best_and_baseline():
    led = ledger.parse("a000001\t0.000000\t0.0\tcrash\tx\n"
                       "a000002\t1.000000\t1.0\tkeep\tbaseline\n"
                       "a000003\t0.900000\t1.0\tkeep\tbetter\n"
                       "a000004\t0.800000\t1.0\tdiscard\tnot kept\n")
    assert led.baseline.commit == "a000002" and led.best.commit == "a000003"
    assert ledger.parse("").best is None and ledger.read(__import__("pathlib").Path("/nonexistent")).rows == []


def test_unknown_status_is_refused_on_append(tmp_path):
    with pytest.raises(ValueError):
        ledger.append(tmp_path / "r.tsv", "abc1234", 1.0, 1.0, "skipped", "x")
    assert not (tmp_path / "r.tsv").exists() or (tmp_path / "r.tsv").read_text() == ""


def test_a_large_ledger_parses_whole(tmp_path):
    # how fast: bench/engine_overhead.py parses 10,000 rows per experiment; here only the answer is checked
    p = tmp_path / "results.tsv"
    p.write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
                 + "".join(f"{i:07x}\t{1 - i / 1e6:.6f}\t44.0\tdiscard\texperiment {i}\n" for i in range(10_000)))
    led = ledger.read(p)
    assert len(led.rows) == 10_000 and not led.bad_lines
    assert led.rows[-1].description == "experiment 9999" and led.rows[-1].val_bpb == 1 - 9999 / 1e6


def test_non_finite_numbers_are_malformed_lines_except_on_crash_rows():
    from core import ledger
    text = ("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
            "abc1234\t1.0\t1.0\tkeep\tbase\n"
            "abc1235\tinf\t1.0\tkeep\thand edit\n"
            "abc1236\tnan\t0.0\tcrash\tupstream crash row\n")
    led = ledger.parse(text)
    assert [r.commit for r in led.rows] == ["abc1234", "abc1236"]
    assert led.rows[1].val_bpb == 0.0
    assert led.bad_lines[0][0] == 3 and "finite" in led.bad_lines[0][2]


def test_annotate_uses_the_reference_each_decision_was_made_on():
    from core.ledger import Finished, annotate
    Row = ledger.Row
    rows = [Row("a000000", 1.0, 1.0, "keep", "baseline"), Row("b000000", 0.9, 1.0, "keep", "better"),
            Row("c000000", 0.95, 1.0, "discard", "trained beside b"), Row("d000000", 0.0, 0.0, "crash", "x"),
            Row("e000000", 0.85, 1.0, "keep", "best")]
    # without the engine's records: upstream's running best of kept rows
    plain = annotate(rows)
    assert [e.reference for e in plain] == [None, 1.0, 0.9, 0.9, 0.9]
    assert [e.best_after for e in plain] == [1.0, 0.9, 0.9, 0.9, 0.85]
    assert plain[2].delta == pytest.approx(0.05) and plain[3].delta is None and plain[0].delta is None
    assert [e.improved for e in plain] == [True, True, False, False, True]
    # the engine says c was decided against the baseline it started from (b was kept while it trained)
    finished = [Finished("0001", "a000000", "keep", None, 1.0), Finished("0002", "b000000", "keep", 1.0, 0.9),
                Finished("0003", "c000000", "discard", 1.0, 0.9), Finished("0004", "d000000", "crash"),
                Finished("0005", "e000000", "keep", 0.9, 0.85)]
    ann = annotate(rows, finished)
    assert [e.exp_id for e in ann] == ["0001", "0002", "0003", "0004", "0005"]
    assert ann[2].reference == 1.0 and ann[2].delta == pytest.approx(-0.05)
    # a later keep never changes an earlier row's number
    assert [e.delta for e in annotate(rows[:3], finished[:3])] == [e.delta for e in ann[:3]]
