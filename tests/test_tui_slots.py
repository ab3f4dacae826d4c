"""The dashboard with several slots and proposals in flight (the scheduler), the CPU/RAM pane, and key notices."""

import subprocess
import sys

import pytest

from core import procs
from core.gpu import unavailable
from core.progress import loss_at, read_curve
from tests.tui_fixtures import (
    StaticGpu,
    control_files,
    make_app,
    make_upstream_repo,
    make_workspace,
    parallel_engine,
    screen_text,
    wait_for,
    write_engine,
)
from tui.screens.detail import ExperimentScreen
from tui.screens.modals import ConfirmScreen

pytestmark = pytest.mark.anyio

WIDE = (160, 50)
SMALL = (80, 24)
NO_GPU = unavailable("no NVIDIA driver (NVML library not found)")


@pytest.fixture
def anyio_backend():
    return "asyncio"


def slot_lines(text):
    return [line for line in text.split("\n") if "GPU " in line and ("│ ▶" in line or "│   GPU" in line)]


def expected_loss(root, exp_id):
    """The live loss of a run and its difference from the best run's (0007) at the same progress, from the
    files alone (core.progress), to compare with what the pane shows."""
    d = root / ".autoresearch" / "experiments"
    last = read_curve(d / exp_id / "train.log")[-1]
    best = loss_at(read_curve(d / "0007" / "train.log"), last.fraction)
    return f"{last.loss:.3f}", f"{last.loss - best:+.3f}".replace("-", "−")


async def test_slots_pane_with_three_slots(tmp_path):
    root = make_workspace(tmp_path / "ws")
    running = parallel_engine(root, n_slots=3, proposals=1)
    app = make_app(root, gpu_monitor=StaticGpu.gpus(3))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        # the header counts what is in flight instead of one experiment's countdown
        assert "● running  │  2 runs (1 training, 1 starting) · 1 proposal  │  best 0.987500" in text
        lines = slot_lines(text)
        assert len(lines) == 3
        loss, delta = expected_loss(root, "0008")
        assert lines[0].startswith("│ ▶ GPU 0    0008  training     2:55/5:00    2:00") and f"{loss}  {delta}" in lines[0]
        assert "40.0G  slot 0 idea [b]0[/b]" in lines[0]  # VRAM from NVML, the description as plain text
        assert lines[1].startswith("│   GPU 1    0009  starting        —/5:00    1:30      —       —  40.0G")
        assert lines[2].startswith("│   GPU 2    —     idle")
        assert "⋯ proposal 0011 proposing 0:40   from 0000007  idea: try rope base 5e4" in text
        # the GPU pane names the run on each GPU
        assert "GPU0  " in text and "97% 0008" in text and "67% 0009" in text and "37% idle" in text
        # the log pane follows the selected slot's train.log, and its run panel shows the curve to beat
        assert "Training log · 0008 on GPU 0 (train.log)  t: agent · n: next slot" in text
        assert "exp 0008 on GPU 0 · training · 2:00 elapsed · training 2:55 / 5:00" in text
        assert f"loss {loss} ({delta} vs the best run)" in text and "━ best run 0007" in text
        # the footer is recomposed after the first refresh (KeyFooter.on_resize): after another test in the same
        # process it may not be drawn yet at the first pause
        await wait_for(pilot, lambda: "n next slot" in screen_text(app).split("\n")[-1])

        await pilot.press("n")
        await pilot.pause()
        text = screen_text(app)
        assert slot_lines(text)[1].startswith("│ ▶ GPU 1    0009")
        assert "Training log · 0009 on GPU 1 (train.log)" in text
        pane = app.screen.query_one("#train-log")
        await wait_for(pilot, lambda: list(pane.view.lines) == ["device: cpu | params: 11.5M"])
        assert "the trainer is taking its first step" in screen_text(app)

        await pilot.press("n")  # the free slot: nothing to abort there, and the key says so
        await pilot.pause()
        await pilot.press("a")
        await pilot.pause()
        assert app.last_message == "the selected slot runs nothing to abort"
        assert not isinstance(app.screen, ConfirmScreen) and control_files(root) == []

        await pilot.press("n")  # round to slot 0: abort asks about that run only
        await pilot.press("a")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "Abort experiment 0008 on GPU 0? Its run is killed now" in screen_text(app)
        assert "the other runs go on" in screen_text(app)
        await pilot.press("y")
        await pilot.pause()
        assert control_files(root) == ["abort-0008"]  # that run only (core.control.send with its id)
        assert app.last_message == "abort of 0008 sent to the engine"

        # enter in the Slots pane opens the selected run, which has no results row yet
        app.screen.query_one("#slots").focus()
        await pilot.press("down")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ExperimentScreen) and app.screen.exp_id == running[1]
        assert "Experiment 0009 · running" in screen_text(app)


async def test_slots_tab_on_a_small_terminal(tmp_path):
    root = make_workspace(tmp_path / "ws")
    parallel_engine(root, n_slots=3, proposals=2, gpu=False)
    app = make_app(root, gpu_monitor=StaticGpu(NO_GPU))
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "Log  Slots  Results  Chart  Ratchet  GPU" in text.replace("CPU", "GPU")
        await pilot.press("right_square_bracket")  # the tab after Log
        await pilot.pause()
        text = screen_text(app)
        assert "▶ CPU 1/3  0008  training" in text and "  CPU 2/3  0009  starting" in text
        assert "  CPU 3/3  —     idle" in text and "proposal 0011" in text and "proposal 0012 ready" in text
        assert " RAM  " in text  # without a GPU the memory column is the trainers' resident memory


async def test_one_slot_without_proposals_ahead_looks_as_before(tmp_path):
    root = make_workspace(tmp_path / "ws")
    write_engine(root, status="running", phase="training", options={"slots": 1, "lookahead": 0})
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "Slots" not in text and "n next slot" not in text
        assert "exp 0008 · training · 1:00 elapsed" in text and "Training log (run.log)" in text
        await pilot.press("n")
        await pilot.pause()
        assert app.last_message == "one slot: there is no other run to follow"


async def test_the_cpu_ram_pane_without_a_gpu(tmp_path):
    root = make_workspace(tmp_path / "ws")
    # a real child of the engine's process (this test process holds the engine lock): the trainer
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(30 << 20); time.sleep(60)"])
    try:
        app = make_app(root, gpu_monitor=StaticGpu(NO_GPU), live=True)
        async with app.run_test(size=WIDE) as pilot:
            await wait_for(pilot, lambda: "│ run  trainer " in screen_text(app))
            text = screen_text(app)
            assert "CPU / RAM · no NVIDIA GPU" in text
            lines = text.split("\n")
            cpu = next(line for line in lines if "│ CPU  " in line)
            ram = next(line for line in lines if "│ RAM  " in line)
            n = procs.cpu_count()
            assert cpu.split("%")[-1].startswith(f" of {n} core{'s' if n != 1 else ''}")
            assert "GiB" in ram and "/" in ram
            trainer = next(line for line in lines if "│ run  trainer " in line)
            mib = float(trainer.split("trainer ")[1].split()[0])
            assert 30 <= mib < 400  # the child's 30 MiB buffer is resident
            assert "no NVIDIA GPU: no NVIDIA driver" in text and "NVML library" not in text
    finally:
        child.kill()
        child.wait()


async def test_read_only_repo_shows_the_last_runs_peak_memory(tmp_path):
    root, _ = make_upstream_repo(tmp_path / "up")
    app = make_app(root, gpu_monitor=StaticGpu(NO_GPU))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "│ peak #4 —  #3 51.3G  #2 44.1G  #1 44.0G " in text
        assert "│ run " not in text  # no engine to measure: the peaks instead


@pytest.mark.parametrize("key,state,why", [
    ("p", "upstream", "read-only: an upstream repo has no engine to control"),
    ("s", "upstream", "read-only: an upstream repo has no engine to control"),
    ("r", "running", "the engine is running, not paused"),
    ("s", "running", "an engine is already running in this workspace"),
    ("p", "paused", "already paused; r resumes"),
    ("a", "dead", "no engine is running; s starts one"),
    ("a", "idle", "nothing is running to abort"),
])
async def test_keys_that_do_not_apply_say_why(tmp_path, key, state, why):
    if state == "upstream":
        root, _ = make_upstream_repo(tmp_path / "up")
    else:
        root = make_workspace(tmp_path / "ws", engine={"idle": "running"}.get(state, state))
        if state == "idle":
            write_engine(root, status="running", phase="idle", exp_id=None)
    app = make_app(root)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await pilot.press(key)
        await pilot.pause()
        assert app.last_message.startswith(why)
        assert control_files(root) == [] and not isinstance(app.screen, ConfirmScreen)


async def test_a_sample_before_the_widgets_exist_or_after_they_are_gone(tmp_path):
    """Samples and snapshots come from threads: one can arrive before the dashboard is composed or after it was
    taken down (quitting on a loaded box). Neither raises; an early one is shown once the widgets exist."""
    from tui.monitor import Sample
    from tui.screens.dashboard import DashboardScreen
    from tui.state import StateReader
    root = make_workspace(tmp_path / "ws")
    snap = StateReader(root).load()
    sample = Sample(gpu=StaticGpu().sample(), cpu_count=2)
    screen = DashboardScreen(clock=lambda: 0, display_root="~/ws", live=False, run_log=root / "run.log")
    screen.apply_sample(sample)
    screen.apply_snapshot(snap)
    app = make_app(root, gpu_monitor=None)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        await app.push_screen(screen)
        await pilot.pause()
        text = screen_text(app)
        assert "GPU0 H100 80GB HBM3" in text and "best 0.987500" in text
        await app.pop_screen()
        await pilot.pause()
        screen.apply_sample(sample)  # its widgets are gone: ignored
        screen.apply_snapshot(snap)
    screen.apply_sample(sample)
