"""The dashboard driven through Textual's Pilot on hand-written fixture workspaces."""

import json
import os
import stat
import time

import pytest

from tests.tui_fixtures import (
    T0,
    control_files,
    git,
    make_app,
    make_upstream_repo,
    make_workspace,
    screen_text,
    wait_for,
    write_engine,
)
from tui.screens.detail import ExperimentScreen
from tui.screens.modals import ConfirmScreen, HelpScreen, IdeaScreen
from tui.widgets.results import ResultsTable

pytestmark = pytest.mark.anyio

WIDE = (160, 50)
SMALL = (80, 24)


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_every_pane_renders_its_data(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        # header: state, phase, experiment, its stage, wall time since the trainer started (now - training_started_at)
        # and the trainer's own training time (14 % of the 300 s budget) against the budget, best and gain
        assert "● running · training" in text
        assert "exp 0008 · training · 1:00 elapsed · training 0:42 / 5:00" in text
        assert "best 0.987500 (−0.012500, −1.25% vs baseline)" in text
        assert "~/ws · tag nov26 · branch autoresearch/nov26 · 7 runs: 4 kept, 2 discarded, 1 crashed" in text
        # live log: finished lines scroll, the \r progress is one live line
        assert "compiling..." in text
        assert "step 00003 (14.0%) | loss: 8.2" in text and "step 00001" not in text and "step 00002" not in text
        # the run panel above the log: what the trainer does, its times, its loss curve (the best run's train.log
        # has no progress fractions, so there is no curve to compare it with)
        assert "exp 0008 on slot 0 · training · 1:00 elapsed · training 0:42 / 5:00" in text
        assert "━ this run  loss 8.200  (loss by progress through the budget)" in text and "best run" not in text
        # GPU gauge
        assert "GPU0 H100 80GB HBM3" in text and "44.0/79.6G" in text and "97%" in text
        # ratchet: kept commits with val_bpb and the delta each was kept on, side marks for the others
        assert "◆ 0000007 0.987500  −0.002700 embedding lr 0.8" in text
        assert "1 discarded, 1 crashed" in text
        # results table: every row, the delta its decision was made on (vs the best before it), memory
        assert "0007  0000007 0.987500 −0.002700   43.9 keep ◆  embedding lr 0.8" in text
        assert "0003  0000003 0.998100 +0.003100   51.3 discard [bold red]depth 10[/bold red]" in text
        assert "0004  0000004        —                — crash" in text
        assert "0001  0000001 1.000000     first   44.0 keep    baseline" in text
        # chart: title, legend, the crash strip
        assert "val_bpb · 6 runs · best 0.987500 · 1 crashed" in text
        assert "● kept  • discarded  ✗ crashed  ━ best so far" in text and " crashed│" in text
        assert any(0x2800 < ord(ch) <= 0x28FF for ch in text)


async def test_untrusted_text_is_never_markup_or_escapes(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "[bold red]depth 10[/bold red]" in text
        assert "[link=http://x]click[/link]" in text
        assert "try [bold]GELU[/bold]" in text
        assert "[bold red]boom[/]" in text
        assert "window pattern LLLL red" in text and "title" not in text
        assert "\x1b" not in text and "\x07" not in text
        # the detail screen: diff, agent transcript
        table = app.screen.query_one(ResultsTable)
        table.cursor = next(i for i, r in enumerate(table.view) if r.exp_id == "0003")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ExperimentScreen)
        text = screen_text(app)
        assert "[bold]muon[/bold]" in text and "\x1b" not in text
        app.screen.query_one("TabbedContent").active = "agentlog"
        await pilot.pause()
        text = screen_text(app)
        assert "agent for 0003: [bold]edit[/bold]" in text and "pwned" not in text


async def test_pause_resume_abort_write_control_files(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("r")  # not paused: resume does not apply
        assert control_files(root) == []
        await pilot.press("p")
        assert control_files(root) == ["pause"]
        assert stat.S_IMODE(os.stat(root / ".autoresearch" / "control").st_mode) == 0o700
        assert json.loads((root / ".autoresearch/control/pause").read_text())["command"] == "pause"
        (root / ".autoresearch/control/pause").unlink()  # the engine consumed it and paused
        write_engine(root, status="paused", phase="idle")
        app.reload_state()
        await pilot.pause()
        assert "‖ paused · idle" in screen_text(app)
        await pilot.press("p")
        assert control_files(root) == []
        await pilot.press("r")
        assert control_files(root) == ["resume"]
        (root / ".autoresearch/control/resume").unlink()
        write_engine(root, status="running", phase="training")
        app.reload_state()
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "Abort experiment 0008?" in screen_text(app)
        await pilot.press("n")
        await pilot.pause()
        assert control_files(root) == []
        await pilot.press("a")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        assert control_files(root) == ["abort"]
        assert not isinstance(app.screen, ConfirmScreen)


async def test_start_key_runs_the_start_command_when_no_engine_runs(tmp_path):
    root = make_workspace(tmp_path / "ws", engine="dead")
    calls = []

    def fake_start(path):
        calls.append(path)
        write_engine(path, status="running", phase="proposing")  # what the detached engine writes
        return True, "engine started"

    app = make_app(root, start_command=fake_start)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "○ engine not running (exited while running) · s starts it" in text
        assert "p pause" not in text and "s start" in text
        await pilot.press("p")
        assert control_files(root) == []
        await pilot.press("s")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert calls == [root]
        assert "● running · proposing" in screen_text(app)
        assert app.last_message == "engine started"
        await pilot.press("s")  # an engine runs now: s does not apply
        await app.workers.wait_for_complete()
        assert len(calls) == 1


async def test_failed_start_is_reported_in_one_sentence(tmp_path):
    root = make_workspace(tmp_path / "ws", engine="stopped")
    app = make_app(root, start_command=lambda path: (False, "the working tree has uncommitted changes"))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("s")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.last_message == "the engine did not start: the working tree has uncommitted changes"
        assert "○ engine not running · s starts it" in screen_text(app)


async def test_idea_key_queues_an_idea(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("i")
        await pilot.pause()
        assert isinstance(app.screen, IdeaScreen)
        await pilot.press(*"try [b]rope[/b] base 5e4")
        await pilot.press("enter")
        await pilot.pause()
        ideas = list((root / ".autoresearch" / "ideas").glob("*.txt"))
        assert [p.read_text().strip() for p in ideas] == ["try [b]rope[/b] base 5e4"]
        assert "1 idea queued" in screen_text(app)
        assert app.last_message.startswith("idea queued; note that the mutate agent ignores free-text ideas")
        await pilot.press("i", "escape")  # cancelling queues nothing
        await pilot.pause()
        assert len(list((root / ".autoresearch" / "ideas").glob("*.txt"))) == 1


async def test_edit_key_runs_the_editor_on_program_md(tmp_path):
    root = make_workspace(tmp_path / "ws", engine="stopped")  # no engine: the file itself is edited
    editor = tmp_path / "fake-editor"
    editor.write_text("#!/bin/sh\necho 'Prefer simpler models.' >> \"$1\"\n")
    editor.chmod(0o755)
    app = make_app(root, editor=str(editor))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("e")
        await pilot.pause()
        assert (root / "program.md").read_text().endswith("Prefer simpler models.\n")
        assert app.last_message == "program.md saved; the agent uses it from the next proposal"


async def test_edit_with_a_live_engine_hands_the_directives_to_the_engine(tmp_path):
    """While an engine runs, the edit goes through core.control.submit_program: an edit that landed in
    program.md during a proposal would be taken for the agent's and rejected."""
    from core import control
    from core.lock import EngineLock
    from core.workspace import Workspace

    root = make_workspace(tmp_path / "ws", engine="stopped")
    write_engine(root, status="running", pid=os.getpid())  # the lock is taken below, as the engine does
    ws = Workspace(root)
    editor = tmp_path / "fake-editor"
    editor.write_text("#!/bin/sh\necho 'Prefer simpler models.' >> \"$1\"\n")
    editor.chmod(0o755)
    lock = EngineLock(ws).acquire()  # the engine of engine.json (this pid) holds its lock
    try:
        app = make_app(root, editor=str(editor))
        async with app.run_test(size=WIDE) as pilot:
            await pilot.press("e")
            await pilot.pause()
            assert app.last_message == "program.md saved; the agent uses it from the next proposal"
    finally:
        lock.release()
    assert (root / "program.md").read_text() == "# program\nLower val_bpb.\n"  # untouched in place
    assert control.take_program(ws) == "# program\nLower val_bpb.\nPrefer simpler models.\n"
    assert not (ws.state_dir / "program.edit.md").exists()


async def test_enter_opens_the_experiment_detail(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("down", "down")  # newest first: 0007, 0006, 0005
        await pilot.press("enter")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ExperimentScreen) and screen.experiment.exp_id == "0005"
        text = screen_text(app)
        assert "Experiment 0005 · keep · 0.990200" in text
        assert "-MATRIX_LR = 0.04" in text and "+MATRIX_LR = 0.09" in text
        await pilot.press("right_square_bracket")
        await pilot.pause()
        text = screen_text(app)
        assert "metric num_steps" in text and "904" in text and "time proposing" in text
        assert "Δ vs the best before" in text and "−0.004800" in text and "decided against" in text
        assert "simplification" not in text and "train.py change" not in text  # no bare flags or empty fields
        await pilot.press("right_square_bracket")
        await pilot.pause()
        text = screen_text(app)
        assert "step 00002 | loss 8.0" in text and "val_bpb: 0.990200" in text and "step 00001" not in text
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert "agent for 0005" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, ExperimentScreen)


async def test_filters_and_search_narrow_the_table(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        table = app.screen.query_one(ResultsTable)
        ids = lambda: [r.exp_id for r in table.view]  # noqa: E731
        assert ids() == ["0007", "0006", "0005", "0004", "0003", "0002", "0001"]
        await pilot.press("2")
        assert ids() == ["0007", "0005", "0002", "0001"]
        await pilot.press("3")
        assert ids() == ["0006", "0003"]
        await pilot.press("4")
        assert ids() == ["0004"]
        assert "Results · crashed · 1 of 7" in screen_text(app)
        await pilot.press("1", "slash")
        await pilot.press(*"LR")
        assert ids() == ["0007", "0002"]
        await pilot.press("enter")  # keeps the search, back to the table
        assert table.has_focus and ids() == ["0007", "0002"]
        await pilot.press("2")
        assert ids() == ["0007", "0002"]
        await pilot.press("slash", *"xyz-nothing")
        await pilot.pause()
        assert ids() == [] and "no rows match the filter/search" in screen_text(app)
        await pilot.press("escape")
        await pilot.press("1")
        assert len(ids()) == 7


async def test_keys_typed_in_one_burst_after_slash_go_to_the_search(tmp_path):
    # a paste or a laggy SSH link delivers "/pause" in one read: the focus moves to the search box only on
    # the next cycle, and the keys must not run the table's and screen's bindings on the way (p = pause)
    from textual import events
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        for ch in "/pause/a2":
            key = events.Key("slash" if ch == "/" else ch, ch)
            key.set_sender(app)
            app.post_message(key)  # all queued before the first is handled
        await wait_for(pilot, lambda: app.screen.query_one("#search").value == "pause/a2")
        assert control_files(root) == [] and not isinstance(app.screen, ConfirmScreen)
        assert app.screen.query_one(ResultsTable).status_filter is None  # "2" did not filter
        await pilot.press("enter", "p")  # the search is kept; keys act again
        assert control_files(root) == ["pause"]


async def test_upstream_repo_is_read_only(tmp_path):
    root, shas = make_upstream_repo(tmp_path / "up")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "read-only: upstream repo (no .autoresearch/), control keys disabled" in text
        assert "branch master" in text and "4 runs: 2 kept, 1 discarded, 1 crashed" in text
        assert "p pause" not in text and "s start" not in text and "i idea" not in text
        assert "val_bpb:          0.997900" in text  # run.log
        for key in "prsie":
            await pilot.press(key)
        await pilot.pause()
        assert not (root / ".autoresearch").exists() and not isinstance(app.screen, (IdeaScreen, ConfirmScreen))
        # rows have no experiment id; the detail comes from git
        await pilot.press("down")
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, ExperimentScreen)
        text = screen_text(app)
        assert "Experiment #3" in text and f"commit {shas[2]}" in text and "+# change 2" in text


async def test_malformed_results_show_good_rows_and_a_warning(tmp_path):
    root = make_workspace(tmp_path / "ws", extra_results="garbage line\n00000aa\tnot-a-number\t1.0\tkeep\tx\n")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert len(app.screen.query_one(ResultsTable).view) == 7
        assert "results.tsv has 2 malformed lines (first: line 9" in text


async def test_small_terminal_uses_tabs_and_stays_usable(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        # the footer is recomposed after the first refresh (KeyFooter.on_resize): on a loaded machine it may not
        # be drawn yet at the first pause
        await wait_for(pilot, lambda: "q quit" in screen_text(app).split("\n")[-1])
        text = screen_text(app)
        lines = text.split("\n")
        assert len(lines) == 24
        assert lines[0].startswith(" ● running · training  │  exp 0008 · training · 1:00 elapsed · training 0:4")
        assert "Log  Results  Chart  Ratchet  GPU" in text and "Slots" not in text  # one slot: as it was
        assert "compiling..." in text and "step 00003 (14.0%) | loss: 8.2" in text
        assert "q quit" in lines[-1] and "p pause" in lines[-1] and "[] pane" in lines[-1]
        await pilot.press("right_square_bracket")
        await pilot.pause()
        await wait_for(pilot, lambda: "⏎ open" in screen_text(app).split("\n")[-1])
        text = screen_text(app)
        lines = text.split("\n")
        assert lines[1].startswith(" try [bold]GELU[/bold]") and lines[2].startswith(" ~/ws · tag nov26")
        assert "⏎ open" in lines[-1] and "[] pane" in lines[-1] and "q quit" in lines[-1]
        assert "(1 all 2 kept 3 disc 4 crash, / search)" in text  # the keys the footer had no room for
        assert "0007  0000007 0.987500 −0.002700   43.9 keep ◆  embedding lr 0.8" in text
        assert "0001  0000001 1.000000" in text  # all 7 rows fit
        assert app.screen.query_one(ResultsTable).has_focus
        await pilot.press("down", "enter")
        await pilot.pause()
        assert isinstance(app.screen, ExperimentScreen) and app.screen.experiment.exp_id == "0006"
        await pilot.press("escape", "right_square_bracket")
        await pilot.pause()
        assert "val_bpb · 6 runs" in screen_text(app)
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert "◆ 0000007 0.987500" in screen_text(app)
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert "GPU0 H100" in screen_text(app)
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert "compiling..." in screen_text(app)


@pytest.mark.parametrize("engine", ["running", "paused", "dead"])
async def test_the_80_column_footer_keeps_the_keys_that_matter_whole(tmp_path, engine):
    """80 columns cannot hold every key: the footer leaves out whole keys, the least needed first (the filters,
    then search, both named in the results title), never squeezing or cutting one."""
    root = make_workspace(tmp_path / "ws", engine=engine)
    app = make_app(root)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("right_square_bracket")  # the results tab: "⏎ open" joins the footer
        await pilot.pause()
        await wait_for(pilot, lambda: "⏎ open" in screen_text(app).split("\n")[-1])  # redrawn after the refresh
        footer = screen_text(app).split("\n")[-1]
        want = {"running": "p pause", "paused": "r resume", "dead": "s start"}[engine]
        for item in ("⏎ open", want, "a abort", "i idea", "e edit", "t agent", "[] pane", "? help", "q quit"):
            assert item in footer, (item, footer)
        assert footer.rstrip().endswith("q quit") and "…" not in footer
        assert "1234 filter" not in footer  # dropped first: the results title names 1 2 3 4
        # a wide terminal shows them all
        await pilot.resize_terminal(160, 50)
        await pilot.pause()
        await wait_for(pilot, lambda: "1234 filter" in screen_text(app).split("\n")[-1])
        footer = screen_text(app).split("\n")[-1]
        assert "/ search" in footer and "1234 filter" in footer and "[] pane" in footer


async def test_agent_activity_toggle(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press("t")
        await pilot.pause()
        text = screen_text(app)
        assert "Agent activity · 0008" in text
        assert "mutate: MATRIX_LR 0.04 -> 0.045 [red]x[/red]" in text
        await pilot.press("t")
        await pilot.pause()
        assert "compiling..." in screen_text(app)


async def test_help_screen(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert "abort the running experiment" in screen_text(app)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


async def test_live_log_follows_cr_progress_and_a_new_run(tmp_path):
    root = make_workspace(tmp_path / "ws", run_log=b"")
    app = make_app(root, live=True)
    async with app.run_test(size=WIDE) as pilot:
        pane = app.screen.query_one("#train-log")
        with open(root / "run.log", "ab") as f:
            f.write(b"compiling\n")
            for step in range(500):
                f.write(b"\rstep %05d | loss 3.0" % step)
            f.flush()
            await wait_for(pilot, lambda: pane.live_text == "step 00499 | loss 3.0")
            assert list(pane.view.lines) == ["compiling"]
            f.write(b"\n---\nval_bpb: 0.99\n")
            f.flush()
            await wait_for(pilot, lambda: list(pane.view.lines)[-1] == "val_bpb: 0.99")
            assert list(pane.view.lines) == ["compiling", "step 00499 | loss 3.0", "---", "val_bpb: 0.99"]
        # the engine starts the next run: run.log is truncated and rewritten
        (root / "run.log").write_bytes(b"next run\n")
        await wait_for(pilot, lambda: list(pane.view.lines) == ["next run"])
        assert pane.live_text == ""


async def test_header_shows_the_stage_elapsed_and_training_time_of_a_live_run(tmp_path):
    """The header follows the trainer through its stages, from its train.log: nothing printed yet (starting),
    the first untimed steps (warm-up), training with its own training time against the budget, evaluating."""
    root = make_workspace(tmp_path / "ws", run_log=b"")
    log = root / ".autoresearch" / "experiments" / "0008" / "train.log"
    app = make_app(root, live=True)
    async with app.run_test(size=WIDE) as pilot:
        def header():
            return screen_text(app).split("\n")[0]
        await wait_for(pilot, lambda: "exp 0008 · starting train.py · 1:00 elapsed · training 0:00 / 5:00" in header())
        # the empty log pane says what goes on (the run panel appears with the same sample, laid out a frame later)
        await wait_for(pilot, lambda: "Python imports torch, loads the data" in screen_text(app))
        with open(log, "ab") as f:
            f.write(b"device: cpu\n\rstep 00000 (0.0%) | loss: 9.0 | remaining: 300s")
            f.flush()
            await wait_for(pilot, lambda: "exp 0008 · warm-up (untimed steps) · 1:00 elapsed · training 0:00 / 5:00"
                           in header())
            f.write(b"\rstep 00001 (14.0%) | loss: 8.0 | remaining: 258s ")
            f.flush()
            await wait_for(pilot, lambda: "exp 0008 · training · 1:00 elapsed · training 0:42 / 5:00" in header())
            f.write(b"\n---\nval_bpb: 0.99\n")  # the progress line ended: the evaluation runs
            f.flush()
            await wait_for(pilot, lambda: "exp 0008 · evaluating · 1:00 elapsed · training 0:42 / 5:00" in header())


async def test_live_log_stays_at_the_end_when_lines_overflow_the_pane(tmp_path):
    # regression: the first batch taller than the pane came before its scrollbar existed, the scroll to the
    # end was dropped, and the view stayed at the top (showing lines 2000 behind) for the rest of the run
    root = make_workspace(tmp_path / "ws", run_log=b"")
    app = make_app(root, live=True)
    async with app.run_test(size=WIDE) as pilot:
        pane = app.screen.query_one("#train-log")
        with open(root / "run.log", "ab") as f:
            f.write(b"first\n")
            f.flush()
            await wait_for(pilot, lambda: list(pane.view.lines) == ["first"])
            for batch in range(3):
                f.write(b"".join(b"line %05d\n" % i for i in range(batch * 3000, (batch + 1) * 3000)))
                f.flush()
                last = "line %05d" % ((batch + 1) * 3000 - 1)
                await wait_for(pilot, lambda last=last: pane.view.lines[-1] == last)
                await pilot.pause()
                assert pane.view.scroll_offset.y == pane.view.max_scroll_y > 0
                assert "line %05d" % ((batch + 1) * 3000 - 1) in screen_text(app)


async def test_live_state_follows_new_results_and_engine_state(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root, live=True)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None)
        table = app.screen.query_one(ResultsTable)
        assert len(table.view) == 7
        with open(root / "results.tsv", "a") as f:
            f.write("0000008\t0.985000\t44.0\tkeep\tnew best\n")
        with open(root / ".autoresearch" / "events.jsonl", "a") as f:
            f.write(json.dumps({"ts": T0, "type": "experiment_finished", "id": "0008", "status": "keep",
                                "commit": "0000008", "val_bpb": 0.985}) + "\n")
        write_engine(root, status="paused", phase="idle", exp_id=None, best=0.985)
        await wait_for(pilot, lambda: len(table.view) == 8)
        await wait_for(pilot, lambda: "‖ paused · idle" in screen_text(app))
        assert table.view[0].exp_id == "0008" and "best 0.985000" in screen_text(app)


async def test_quit_returns_promptly_with_live_workers(tmp_path):
    root = make_workspace(tmp_path / "ws")
    app = make_app(root, live=True)
    t0 = time.monotonic()
    async with app.run_test(size=SMALL) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None)
        await pilot.press("q")
    assert time.monotonic() - t0 < 5
    # quitting never stops the engine: no control file was written
    assert control_files(root) == []


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_cli_refuses_what_is_not_a_workspace(tmp_path, capsys, kind):
    from tui.app import main
    path = tmp_path / "x"
    if kind == "file":
        path.write_text("hi")
    elif kind == "empty":
        path.mkdir()
    assert main([str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoresearch-tui: ") and "\n" not in err and "Traceback" not in err
    assert {"missing": "does not exist", "file": "is not a directory",
            "empty": "is not an autoresearch workspace"}[kind] in err


def test_cli_refuses_a_foreign_demo_dir(tmp_path, capsys):
    from tui.app import main
    (tmp_path / "stuff.txt").write_text("mine")
    assert main(["--demo", "--demo-dir", str(tmp_path)]) == 1
    assert "is not a demo workspace" in capsys.readouterr().err


def test_state_reader_git_branch_of_a_detached_head(tmp_path):
    from tui.state import git_branch
    root, shas = make_upstream_repo(tmp_path / "up")
    git(root, "checkout", "-q", shas[0])
    assert git_branch(root) == f"detached at {shas[0][:7]}"



async def test_demo_builds_the_workspace_shows_preparation_and_starts_the_engine(tmp_path, monkeypatch):
    import sys

    from tui import demo
    from tui.state import WORKSPACE
    script = tmp_path / "fake_setup.py"  # the real setup trains a tokenizer: too slow for this suite
    script.write_text("for i in range(3):\n    print(f'\\rtokenizer {i + 1}/3', end='', flush=True)\n"
                      "print()\nprint('setup done')\n")
    monkeypatch.setattr(demo, "setup_command", lambda path: [sys.executable, str(script)])
    calls = []

    def fake_start(path, extra=None):
        calls.append(extra)
        write_engine(path, status="running", phase="proposing", exp_id="0001")
        return True, "engine started"

    root = tmp_path / "demo"
    app = make_app(root, mode=WORKSPACE, demo=True, start_command=fake_start, display_root=None)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: calls)
        await app.workers.wait_for_complete()
        await pilot.pause()
        pane = app.screen.query_one("#train-log")
        await wait_for(pilot, lambda: "setup done" in pane.view.lines)
        assert "tokenizer 3/3" in pane.view.lines and "tokenizer 1/3" not in pane.view.lines
        assert calls == [["--agent", "mutate"]]
        assert (root / "train.py").is_file() and (root / ".autoresearch" / demo.MARKER).is_file()
        text = screen_text(app)
        assert f"demo workspace: {root}" in text and "● running · proposing" in text


def test_demo_workspace_keeps_its_short_budget_through_setup(tmp_path):
    """The real scaffold and the real `autoresearch setup` (without data preparation): the profile's 45 s
    budget must not come back, or a new user waits minutes for the first results."""
    import re
    import subprocess

    from tui import demo
    root = tmp_path / "demo"
    demo.create(root)
    cmd = demo.setup_command(root) + ["--no-prepare"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    consts = (root / "constants.py").read_text()
    assert re.search(rf"^TIME_BUDGET = {demo.DEMO_TIME_BUDGET}\b", consts, re.M), consts
    assert re.search(r'^PROFILE = "cpu"', consts, re.M)
    assert git(root, "status", "--porcelain") == ""  # ready for `autoresearch loop`


async def test_keys_typed_in_one_burst_after_i_go_to_the_idea(tmp_path):
    # as with "/": "ipause" in one read must type "pause" into the idea box, never pause the engine
    from textual import events

    from tui.screens.modals import IdeaScreen
    root = make_workspace(tmp_path / "ws")
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        for ch in "ipause2":
            key = events.Key(ch, ch)
            key.set_sender(app)
            app.post_message(key)  # all queued before the first is handled
        await wait_for(pilot, lambda: isinstance(app.screen, IdeaScreen)
                       and app.screen.query_one("#idea").value == "pause2")
        assert control_files(root) == []
        await pilot.press("escape")
        await pilot.pause()
        assert control_files(root) == []


async def test_file_changes_wake_the_dashboard_without_polling(tmp_path, monkeypatch):
    """watchfiles wakes the state reader when results.tsv or engine.json change: with the periodic re-check
    pushed out to a minute, a new row and a paused engine still show up at once."""
    import tui.app
    monkeypatch.setattr(tui.app, "LIVENESS_S", 60.0)
    root = make_workspace(tmp_path / "ws")
    app = make_app(root, live=True)
    async with app.run_test(size=WIDE) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None and len(app.snapshot.rows) == 7)
        await pilot.pause(0.5)  # the watcher is set up
        with open(root / "results.tsv", "a") as f:
            f.write("0000008\t0.985000\t44.0\tkeep\tnew best\n")
        await wait_for(pilot, lambda: len(app.snapshot.rows) == 8, timeout=20)
        write_engine(root, status="paused", phase="idle", exp_id=None)
        await wait_for(pilot, lambda: "‖ paused · idle" in screen_text(app), timeout=20)


def test_cancelling_the_demo_preparation_ends_the_setup_and_its_children(tmp_path, monkeypatch):
    """The demo's `autoresearch setup` runs through core.runner.run: quitting while it prepares ends prepare.py
    and whatever it started (its process group), not only the first process."""
    import sys
    import threading

    from core.errors import UserError
    from core.procs import pid_alive
    from tui import demo
    pidfile = tmp_path / "grandchild.pid"
    script = tmp_path / "fake_setup.py"
    script.write_text("import subprocess, sys, time\n"
                      "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                      f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
                      "print('building the corpus', flush=True)\ntime.sleep(120)\n")
    monkeypatch.setattr(demo, "setup_command", lambda path: [sys.executable, str(script)])
    monkeypatch.setattr(demo, "create", lambda path: (path / ".git").mkdir(parents=True) or
                        (path / "train.py").write_text(""))
    out, errors = [], []
    cancel = threading.Event()

    def prepare():
        try:
            demo.prepare(tmp_path / "demo", out.append, cancel)
        except UserError as e:
            errors.append(str(e))

    t = threading.Thread(target=prepare)
    t.start()
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text() and b"building the corpus\n" in b"".join(out)):
        assert time.monotonic() < deadline, "the fake setup did not start"
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    cancel.set()
    t.join(30)
    assert not t.is_alive() and errors == ["demo preparation was cancelled."]
    deadline = time.monotonic() + 10
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(grandchild)
    assert b"building the corpus" in (tmp_path / "demo" / ".autoresearch" / demo.SETUP_LOG).read_bytes()
