"""End to end: the real autoresearch-tui in tmux, on a workspace run by the real engine, trainer and mutate agent."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tui_fixtures import TmuxTerminal, tui_command

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TmuxTerminal.available(),
                                                   reason="tmux is not installed (apt-get install tmux)")]

SIZE = (120, 40)  # the grid layout: every pane visible


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def engine_pid(root: Path) -> int | None:
    try:
        return json.loads((root / ".autoresearch" / "engine.json").read_text()).get("pid")
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2:][:1] != b"Z"


def table_rows(text: str, status: str) -> list[str]:
    """Rows of the results table with this status: `0001  abc1234 3.210000 ... keep    baseline`."""
    return re.findall(rf"│(\d{{4}}  [0-9a-f]{{7}} .*? {status} .*?)│", text)


def test_real_dashboard_in_tmux_controls_a_real_engine_and_reattaches(tmp_path):
    try:
        from core.scaffold import create_workspace
    except ImportError:
        pytest.skip("core.scaffold is not in the repository yet")
    # a real workspace: the CPU profile with a 3 s budget and a quarter of its evaluation (committed like a
    # person's setup change), data and tokenizer prepared by the real prepare.py in the test's cache
    ws = create_workspace(tmp_path / "ws", profile="cpu", dataset="pystdlib", time_budget=3)
    root = ws.root
    consts = root / "constants.py"
    consts.write_text(re.sub(r"^EVAL_TOKENS = .*$", "EVAL_TOKENS = 16384  # small for the test", consts.read_text(),
                             flags=re.M))
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "smaller evaluation")
    subprocess.run([sys.executable, "prepare.py"], cwd=root, check=True, capture_output=True, timeout=300)
    # the options of an earlier `autoresearch loop`, which `s` reuses (documented in docs/architecture.md)
    (root / ".autoresearch").mkdir(exist_ok=True)
    # lookahead 0: the strictly sequential engine, whose dashboard is milestone 1's (one run, its countdown in the
    # header); the Slots pane is driven in tmux by the test below
    (root / ".autoresearch" / "config.json").write_text(json.dumps({"agent": "mutate", "tag": "e2e", "lookahead": 0}))

    argv = shlex.join(tui_command())
    # after the dashboard exits the pane stays, showing its exit code (and so the test sees q worked)
    command = f"cd {shlex.quote(str(root))} && {argv} {shlex.quote(str(root))}; echo TUI-EXITED $?; sleep 600"
    term = TmuxTerminal()
    pid = None
    try:
        term.start(command, size=SIZE)
        term.wait_for("the dashboard offering to start an engine", lambda t: "s starts one" in t, 30)
        term.keys("s")
        # the baseline finishes: a keep row in the results table; the next experiment (mutate) is underway
        text = term.wait_for("a finished experiment (keep row)", lambda t: table_rows(t, "keep"), 150)
        pid = engine_pid(root)
        assert alive(pid)
        assert "0001" in table_rows(text, "keep")[0] and "baseline" in table_rows(text, "keep")[0]
        term.wait_for("experiment 0002 underway", lambda t: "exp 0002" in t, 60)

        term.keys("p")
        term.wait_for("the paused state", lambda t: "‖ paused" in t, 20)
        term.keys("r")
        term.wait_for("running again", lambda t: "● running" in t, 20)

        term.keys("a")
        term.wait_for("the abort confirmation", lambda t: "Abort experiment 0002?" in t, 20)
        term.keys("y")
        text = term.wait_for("the aborted experiment as a crash row, engine holding",
                             lambda t: table_rows(t, "crash") and "‖ paused" in t, 60)
        assert "0002" in table_rows(text, "crash")[0]
        assert "aborted by user" in (root / "results.tsv").read_text()

        term.keys("q")
        term.wait_for("the dashboard exits", lambda t: "TUI-EXITED 0" in t, 20)
        assert alive(pid), "quitting the dashboard must not stop the engine"

        # a new dashboard (in a new terminal) re-attaches: same engine, the history from the files
        term.start(command, session="again", size=SIZE)
        text = term.wait_for("the re-attached dashboard with the history",
                             lambda t: "‖ paused" in t and table_rows(t, "keep") and table_rows(t, "crash"), 30)
        assert "last: 0002 aborted" in text and "(aborted by user)" in text
        assert engine_pid(root) == pid and alive(pid)
        term.keys("q")
        term.wait_for("the dashboard exits", lambda t: "TUI-EXITED 0" in t, 20)
    finally:
        term.kill()
        pid = pid or engine_pid(root)
        if alive(pid):
            subprocess.run([sys.executable, "-m", "core.cli", "-C", str(root), "stop"], capture_output=True,
                           timeout=30)
            deadline = time.monotonic() + 20
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(pid):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
    assert not alive(pid), "`autoresearch stop` ends a paused engine"


def test_real_dashboard_in_tmux_follows_three_slots(tmp_path):
    """The real autoresearch-tui in tmux on a scheduler's workspace: three CPU slots (two running, one free) and a
    proposal in flight. The engine's side (engine.json, the runs' train.log files) is written by this test, which
    holds the engine lock as the engine would; everything the dashboard does is real."""
    from tests.tui_fixtures import make_workspace, parallel_engine

    root = make_workspace(tmp_path / "ws")
    parallel_engine(root, n_slots=3, proposals=1, gpu=False, now=time.time())
    exp = root / ".autoresearch" / "experiments"
    argv = shlex.join(tui_command())
    command = f"{argv} {shlex.quote(str(root))}; echo TUI-EXITED $?; sleep 600"
    term = TmuxTerminal()
    try:
        term.start(command, size=(160, 50))
        text = term.wait_for("the Slots pane with three slots",
                             lambda t: "2 runs (1 training, 1 starting) · 1 proposal" in t and "CPU 3/3  —     idle" in t,
                             30)
        assert re.search(r"▶ CPU 1/3  0008  training +2:55/5:00", text)
        assert "CPU 2/3  0009  starting" in text and "proposal 0011 proposing" in text
        assert "Training log · 0008 on CPU 1/3 (train.log)" in text
        # the selected run's progress reaches the pane and the run panel as the trainer writes it
        with open(exp / "0008" / "train.log", "ab") as f:
            f.write(b"\rstep 00040 (60.0%) | loss: 3.123456 | remaining: 120s ")
        term.wait_for("the new loss in the Slots pane and the run panel",
                      lambda t: re.search(r"0008  training +3:00/5:00 .* 3\.123 ", t) and "loss 3.123" in t, 20)
        # n: the log pane follows the next slot
        term.keys("n")
        term.wait_for("the log of slot 2", lambda t: "Training log · 0009 on CPU 2/3 (train.log)" in t
                      and "device: cpu | params: 11.5M" in t, 20)
        with open(exp / "0009" / "train.log", "ab") as f:
            f.write(b"\rstep 00000 (0.0%) | loss: 9.500000 | remaining: 300s ")
        term.wait_for("slot 2 in its warm-up", lambda t: "CPU 2/3  0009  warm-up" in t and
                      "warm-up (untimed steps)" in t, 20)
        # the free slot has nothing to abort: the key says so
        term.keys("n")
        term.wait_for("the free slot selected", lambda t: "▶ CPU 3/3" in t, 10)
        term.keys("a")
        term.wait_for("the notice", lambda t: "the selected slot runs nothing to abort" in t, 10)
        # back to slot 1: abort asks about that run, and sends the command
        term.keys("n")
        term.wait_for("slot 1 selected again", lambda t: "▶ CPU 1/3" in t, 10)
        term.keys("a")
        term.wait_for("the abort question", lambda t: "Abort experiment 0008 on CPU 1/3?" in t, 10)
        term.keys("y")
        deadline = time.monotonic() + 10
        abort = root / ".autoresearch" / "control" / "abort-0008"  # that run only
        while not abort.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert abort.exists() and not (root / ".autoresearch" / "control" / "abort").exists()
        term.keys("q")
        term.wait_for("the dashboard exits", lambda t: "TUI-EXITED 0" in t, 20)

        # 80x24: the Slots pane is a tab of its own
        term.start(command, session="small", size=(80, 24))
        term.wait_for("the small dashboard", lambda t: "Log  Slots  Results" in t, 30)
        term.keys("]")
        text = term.wait_for("the Slots tab", lambda t: "▶ CPU 1/3  0008" in t and "CPU 3/3  —     idle" in t, 10)
        assert all(len(line) <= 80 for line in text.split("\n"))
        term.keys("q")
        term.wait_for("the dashboard exits", lambda t: "TUI-EXITED 0" in t, 20)
    finally:
        term.kill()
