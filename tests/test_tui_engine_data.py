"""What the engine records beyond the results (noise floor, spending, integrity, decision annotations, Ray
placement) as the dashboard shows it, and a person's keep / revert from the experiment detail."""

import json

import pytest

from tests.tui_fixtures import (
    StaticGpu,
    control_files,
    make_app,
    make_workspace,
    parallel_engine,
    screen_text,
)
from tui.screens.detail import ExperimentScreen
from tui.screens.modals import ConfirmScreen
from tui.widgets.chart import BpbChart, render_chart
from tui.widgets.results import ResultsTable

pytestmark = pytest.mark.anyio

WIDE = (160, 50)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def engine_extra(root, **sections) -> None:
    """Add sections to engine.json as core.status.StatusWriter.update_extra writes them (top-level keys)."""
    path = root / ".autoresearch" / "engine.json"
    data = json.loads(path.read_text())
    data.update(sections)
    path.write_text(json.dumps(data))


def annotate_events(root, **by_id) -> None:
    """Add the engine's annotations (confidence, decided_by, stopped_early, reason...) to experiment_finished."""
    path = root / ".autoresearch" / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for ev in events:
        if ev.get("type") == "experiment_finished" and ev.get("id") in by_id:
            ev.update(by_id[ev["id"]])
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def update_meta(root, exp_id, **fields) -> None:
    path = root / ".autoresearch" / "experiments" / exp_id / "meta.json"
    meta = json.loads(path.read_text())
    meta.update(fields)
    path.write_text(json.dumps(meta))


NOISE = {"sigma": 0.0006, "runs": 3, "text": "noise σ 0.0006 from 3 runs", "z": 2.0, "rule": "noise"}
COST = {"usd": 0.42, "estimated": False, "max_usd": None, "proposals": 7}


async def test_header_shows_noise_spending_and_integrity(tmp_path):
    root = make_workspace(tmp_path / "ws")
    engine_extra(root, noise=NOISE, cost=COST, integrity="L2 (landlock ABI 7)")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "vs baseline)  │  σ 0.0006 from 3 runs" in text
        assert "agent mutate · integrity L2 · $0.42 spent · $0.060/proposal" in text
        assert "landlock" not in text.split("\n")[2]  # the short level only


async def test_header_says_nothing_of_noise_or_cost_before_they_are_known(tmp_path):
    root = make_workspace(tmp_path / "ws")
    engine_extra(root, noise=None, cost={"usd": 0.0, "estimated": False, "max_usd": None, "proposals": 0})
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "σ" not in text and "spent" not in text and "integrity" not in text


async def test_estimated_cost_and_the_cap_are_marked(tmp_path):
    root = make_workspace(tmp_path / "ws")
    engine_extra(root, cost={"usd": 1.5, "estimated": True, "max_usd": 5.0, "proposals": 3},
                 integrity="L1 (no sandbox: turned off)")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "integrity L1 · ~$1.50 spent of $5.00 · ~$0.500/proposal" in text


async def test_results_table_has_a_confidence_column_from_the_ledger(tmp_path):
    root = make_workspace(tmp_path / "ws")
    annotate_events(root, **{"0007": {"confidence": "z 3.5"}, "0006": {"decided_by": "person"},
                             "0005": {"confidence": "z 2.4 ×2"}})
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "id    commit  val_bpb  Δ decided conf     mem GB status  description" in text
        assert "0007  0000007 0.987500 −0.002700 z 3.5      43.9 keep ◆  embedding lr 0.8" in text
        assert "0006  0000006 0.992500 +0.002300 person     44.0 discard batch 2**18 tokens" in text
        assert "0005  0000005 0.990200 −0.004800 z 2.4 ×2   44.2 keep" in text


async def test_results_table_without_confidences_keeps_its_columns(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert " conf " not in screen_text(app)


async def open_detail(app, pilot, exp_id):
    table = app.screen.query_one(ResultsTable)
    table.cursor = next(i for i, r in enumerate(table.view) if r.exp_id == exp_id)
    await pilot.press("enter")
    await pilot.pause()
    assert isinstance(app.screen, ExperimentScreen)


async def test_detail_shows_the_early_stop_the_decision_and_the_integrity(tmp_path):
    root = make_workspace(tmp_path / "ws")
    reason = "stopped early at 40 %: loss 4.10 vs 3.80 for the best at 40 % (margin 0.08) [red]x[/red]"
    update_meta(root, "0006", reason=reason, decided_by="engine", integrity="L2 (landlock ABI 7)",
                early_stop={"stop": True, "reason": reason, "fraction": 0.4, "checkpoint": 1},
                keep_rule={"rule": "noise", "sigma": 0.0006, "z": 2.0, "bar": 0.0012, "mean": None, "runs": 1,
                           "confidence": "z 1.2"})
    annotate_events(root, **{"0006": {"stopped_early": True, "reason": reason, "decided_by": "engine",
                                      "confidence": "z 1.2"}})
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await open_detail(app, pilot, "0006")
        text = screen_text(app)
        assert f"\n {reason}" in text  # the reason says where, and that it stopped early: said once
        assert ("decided by engine · noise rule: confidence z 1.2 (bar z 2 · σ 0.000600) · integrity L2 "
                "(landlock ABI 7)") in text
        app.screen.query_one("TabbedContent").active = "metrics"
        await pilot.pause()
        text = screen_text(app)
        assert "keep rule             noise rule: confidence z 1.2" in text
        assert "integrity             L2 (landlock ABI 7)" in text
        assert "decided by            engine" in text


async def test_detail_of_a_persons_keep_and_an_early_stop_without_a_percentage(tmp_path):
    root = make_workspace(tmp_path / "ws")
    update_meta(root, "0005", decided_by="person")
    update_meta(root, "0003", early_stop={"stop": True, "reason": "a clear loser", "fraction": 0.25})
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await open_detail(app, pilot, "0005")
        assert "decided by a person" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        await open_detail(app, pilot, "0003")
        assert "stopped early: a clear loser (at 25 % of the budget)" in screen_text(app)


async def test_keep_a_discarded_experiment_from_its_detail(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await open_detail(app, pilot, "0006")
        assert "k keep it" in screen_text(app) and "r revert last keep" in screen_text(app)
        await pilot.press("k")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "Keep experiment 0006 (val_bpb 0.992500)" in screen_text(app)
        await pilot.press("n")  # cancelled: nothing is sent
        await pilot.pause()
        assert control_files(root) == []
        await pilot.press("k")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert control_files(root) == ["keep-0006"]
        assert json.loads((root / ".autoresearch/control/keep-0006").read_text())["id"] == "0006"
        assert isinstance(app.screen, ExperimentScreen)


async def test_revert_the_last_keep_from_a_detail(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await open_detail(app, pilot, "0005")
        assert "keep it" not in screen_text(app)  # a kept run: k leaves the footer
        await pilot.press("k")
        await pilot.pause()
        assert "not a measured discard" in app.last_message and control_files(root) == []
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert app.screen.question.startswith("Revert the last keep, experiment 0007 (0000007, val_bpb 0.987500)")
        await pilot.press("y")
        await pilot.pause()
        assert control_files(root) == ["revert"]


async def test_keep_and_revert_need_a_live_engine(tmp_path):
    root = make_workspace(tmp_path / "ws", engine="stopped")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await open_detail(app, pilot, "0006")
        for key in ("k", "r"):
            await pilot.press(key)
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmScreen)
            assert "no engine is running" in app.last_message
        assert control_files(root) == []


async def test_slots_pane_shows_the_ray_node_of_each_slot(tmp_path):
    root = make_workspace(tmp_path / "ws")
    parallel_engine(root, n_slots=3, proposals=1)
    path = root / ".autoresearch" / "engine.json"
    data = json.loads(path.read_text())
    data["slots"][0].update(node="node-a [b]x[/b]", label="slot 0")
    data["slots"][1].update(node="node-b")
    path.write_text(json.dumps(data))
    app = make_app(root, gpu_monitor=StaticGpu.gpus(3))
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "  slot     node                  exp   stage" in text
        assert "▶ slot 0   node-a [b]x[/b] GPU 0 0008  training" in text  # the label lacks the GPU: node has it
        assert "  GPU 1    node-b                0009  starting" in text
        assert "  GPU 2                          —     idle" in text


async def test_chart_draws_the_noise_band_when_sigma_is_known(tmp_path):
    root = make_workspace(tmp_path / "ws")
    engine_extra(root, noise=NOISE)
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        chart = app.screen.query_one(BpbChart)
        assert chart.noise == (0.0006, 2.0)
        assert "━ best ┄ ±2σ" in screen_text(app)  # the short legend of a narrow chart
        engine_extra(root, noise=None)
        app.reload_state()
        await pilot.pause()
        assert chart.noise is None and "±2σ" not in screen_text(app)


def test_render_chart_band_is_dotted_at_best_plus_and_minus_the_band():
    points = [(1, 1.0, "keep"), (2, 0.99, "keep")]
    frontier = [(1, 1.0), (2, 0.99)]
    plain = render_chart(points, 20, 10, 0.98, 1.01, frontier)
    banded = render_chart(points, 20, 10, 0.98, 1.01, frontier, band=0.005)
    assert not any(layer == "band" for row in plain for _, layer in row)
    rows = [r for r, row in enumerate(banded) if any(layer == "band" for _, layer in row)]
    assert rows and min(rows) < 9  # the upper edge, above the bottom row
