"""`autoresearch results` and `autoresearch plot` on a sample results.tsv with a malformed line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from core.cli import main

SAMPLE = (
    "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    "a3f2c91\t0.997900\t44.0\tkeep\tbaseline\n"
    "b8e1d04\t0.998500\t44.1\tdiscard\tMATRIX_LR 0.04 -> 0.05\n"
    "c1a5f30\t0.000000\t0.0\tcrash\tOOM: DEPTH 8 -> 12\n"
    "this line is not a row\n"
    "d2b6e11\t0.990100\t44.0\tkeep\tSwiGLU $x^2$ \x1b[31mactivation\n"
    "e3c7f22\t1.400000\t44.0\tdiscard\tlr 10x\n"
    "f4d8a33\t0.985000\t45.2\tkeep\tGQA with 4 KV heads\n"
    "0a1b2c3\t0.985100\t44.9\tkeep\tremove value embeddings (simpler)\n"
)


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "results.tsv").write_text(SAMPLE)
    return tmp_path


def test_report(ws, capsys):
    assert main(["-C", str(ws), "results"]) == 0
    out, err = capsys.readouterr()
    assert "results.tsv has 1 malformed line (first: line 5" in err
    assert out.startswith("Session summary: 7 experiments, 2 improvements\n")
    assert "kept 4, discarded 2, crashed 1 (keep rate 57.1%)" in out
    assert "Best val_bpb: 0.985000 (started: 0.997900), improvement 0.012900 (1.29%), commit f4d8a33" in out
    top = out.split("Top improvements:\n", 1)[1].split("\n\n")[0].splitlines()
    assert top[0].startswith("  - SwiGLU $x^2$ activation: -0.007800 val_bpb")  # the escape sequence dropped whole
    assert top[1].startswith("  - GQA with 4 KV heads: -0.005100 val_bpb")
    assert len(top) == 2
    assert "\x1b" not in out  # control characters from an agent never reach the terminal
    assert "OOM: DEPTH 8 -> 12" in out and "lr 10x" in out


def test_kept_only(ws, capsys):
    assert main(["-C", str(ws), "results", "--kept-only"]) == 0
    out = capsys.readouterr().out
    table = out.split("Kept experiments (4):\n", 1)[1]
    assert "baseline" in table and "GQA" in table and "+0.000100" in table
    assert "lr 10x" not in out and "OOM" not in out


def test_json(ws, capsys):
    assert main(["-C", str(ws), "results", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["experiments"], data["kept"], data["discarded"], data["crashed"]) == (7, 4, 2, 1)
    assert data["best"]["commit"] == "f4d8a33" and data["baseline"]["val_bpb"] == 0.9979
    assert data["improvement"] == pytest.approx(0.0129)
    assert [t["commit"] for t in data["top_improvements"]] == ["d2b6e11", "f4d8a33"]
    assert data["malformed_lines"] == [{"line": 5, "reason": "expected 5 tab-separated columns, found 1"}]
    assert len(data["rows"]) == 7
    assert main(["-C", str(ws), "results", "--json", "--kept-only"]) == 0
    assert {r["status"] for r in json.loads(capsys.readouterr().out)["rows"]} == {"keep"}


def test_missing_and_empty_results(tmp_path, capsys):
    assert main(["-C", str(tmp_path), "results"]) == 1
    err = capsys.readouterr().err
    assert "there is no results.tsv" in err and err.count("\n") == 1
    (tmp_path / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
    assert main(["-C", str(tmp_path), "results"]) == 0
    assert capsys.readouterr().out == "results.tsv has no experiments yet.\n"
    assert main(["-C", str(tmp_path), "plot", "-o", str(tmp_path / "p.png")]) == 1
    assert "nothing to plot yet" in capsys.readouterr().err


def test_report_survives_a_closed_pipe(ws):
    proc = subprocess.run(f"{sys.executable} -m core.cli -C {ws} results --json | head -1",
                          shell=True, capture_output=True, text=True, timeout=60)
    assert proc.stdout == "{\n" and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["progress.png", "progress.svg"])
def test_plot(ws, capsys, name):
    out_file = ws / "charts" / name
    assert main(["-C", str(ws), "plot", "-o", str(out_file)]) == 0
    assert capsys.readouterr().out.strip() == str(out_file)
    data = out_file.read_bytes()
    if name.endswith(".png"):
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    else:
        svg = data.decode()
        assert "<svg" in svg
        # descriptions are text, not mathtext: the dollar signs survive as glyphs/text
        assert "SwiGLU $x^2$" in svg and "running best" in svg


def test_plot_rejects_unknown_format(ws, capsys):
    assert main(["-C", str(ws), "plot", "-o", str(ws / "p.jpg")]) == 1
    assert "use a file name ending in .png, .svg, .pdf" in capsys.readouterr().err
    assert not (ws / "p.jpg").exists()


def test_agent_spending_and_the_confidence_column(ws, capsys):
    from core.meta import AgentUsage, ExperimentMeta, write_meta
    exp = ws / ".autoresearch" / "experiments"
    for i, (usd, est) in enumerate([(0.12, False), (0.30, True), (None, False)], start=1):
        write_meta(exp / f"{i:04d}", ExperimentMeta(id=f"{i:04d}", tag="t", status="crash" if i == 3 else "keep",
                                                    agent=AgentUsage(name="claude", input_tokens=1000 * i,
                                                                     output_tokens=10 * i, cost_usd=usd,
                                                                     cost_estimated=est)))
    events = ws / ".autoresearch" / "events.jsonl"
    events.write_text(json.dumps({"type": "experiment_finished", "id": "0005", "commit": "d2b6e11", "status": "keep",
                                  "reference": 0.9979, "best": 0.9901, "confidence": "z 3.1 ×2"}) + "\n")
    assert main(["-C", str(ws), "results"]) == 0
    out = capsys.readouterr().out
    # the rejected and crashed proposals' cost counts too; ~ marks a price-table estimate
    assert "Agent spending: ~$0.42, ~$0.060 per experiment; tokens 6,000 in, 60 out (~: estimated" in out
    header = next(line for line in out.splitlines() if "commit" in line and "description" in line)
    assert "conf" in header
    row = next(line for line in out.splitlines() if "d2b6e11" in line and "keep" in line)  # the table's row
    assert "z 3.1 ×2" in row
    assert main(["-C", str(ws), "results", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["agent_cost"] == {"usd": 0.42, "estimated": True, "proposals": 2, "usd_per_experiment": 0.06,
                                  "input_tokens": 6000, "output_tokens": 60}
    assert next(r for r in data["rows"] if r["commit"] == "d2b6e11")["confidence"] == "z 3.1 ×2"
