"""autoresearch-tui: the Textual dashboard of an autoresearch workspace.

Usage:
  autoresearch-tui [PATH]                 watch the workspace at PATH (default: the current directory);
                                          attaches to a running engine, `s` starts one when none runs
  autoresearch-tui --demo [--demo-dir D]  build a CPU demo workspace (offline data, mutate agent) in D
                                          (default ~/.cache/autoresearch/demo), start its engine, watch it

Quitting never stops a detached engine; starting the dashboard again re-attaches.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from textual.app import App
from textual.binding import Binding
from textual.worker import get_current_worker

from core.errors import UserError

from .messages import DemoPrepared, EngineStartFinished, MonitorSampled, StateChanged
from .state import WORKSPACE, StateReader, classify

LIVENESS_S = 2.0  # re-check the engine pid even when no file changed (kill -9 leaves engine.json behind)
SAMPLE_S = 1.0  # GPUs, CPU, memory and the runs' progress: one sample a second
# the files a snapshot is made of; watchfiles wakes the state reader when one of them changes
STATE_FILES = {"results.tsv", "engine.json", "events.jsonl", "HEAD"}


def start_engine_detached(root: Path, extra: list[str] | None = None, wait_s: float = 90.0) -> tuple[bool, str]:
    """Run `autoresearch loop --detach` in its own session; returns (ok, one-line detail).

    The command forks the engine and returns; if it has not returned after wait_s it is left running
    (its own session already detaches it from this terminal).
    """
    cmd = [sys.executable, "-m", "core.cli", "-C", str(root), "loop", "--detach", *(extra or [])]
    try:
        proc = subprocess.Popen(cmd, cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        return False, f"could not run the engine: {e}"
    try:
        out, err = proc.communicate(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return True, "engine started"
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (err or out).decode("utf-8", "replace").splitlines() if ln.strip()]
        detail = lines[-1].removeprefix("autoresearch:").strip() if lines else ""
        return False, detail or f"the engine exited with code {proc.returncode}"
    return True, "engine started"


class DashboardApp(App):
    """One workspace. Everything it shows is rebuilt from files, so it can be restarted at any time."""

    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses in other folders (benchmarks) find it
    TITLE = "autoresearch"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("question_mark", "help", "help", show=False),
    ]

    def __init__(self, root: Path, *, mode: str | None = None, live: bool = True,
                 start_command: Callable[[Path], tuple[bool, str]] | None = None, gpu_monitor=None,
                 clock: Callable[[], float] = time.time, display_root: str | None = None, demo: bool = False,
                 editor: str | None = None):
        super().__init__()
        self.root = Path(root).resolve()
        self.mode = mode
        self.live = live
        self.start_command = start_command or start_engine_detached
        self.gpu_monitor = gpu_monitor
        self.clock = clock
        self.display_root = display_root
        self.demo = demo
        self.editor = editor
        self.snapshot = None
        self.starting = False
        self.demo_ready = not demo
        self._reader: StateReader | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()  # set to re-read the state now (also set when the app quits)
        self.last_message = ""
        self._monitor = None
        self._sample_wake = threading.Event()
        self._sample_at = 0.0

    # --- lifecycle ---
    def get_default_screen(self):
        from .screens.dashboard import DashboardScreen
        return DashboardScreen(clock=self.clock, display_root=self.display_root, live=self.live,
                               run_log=self.root / "run.log")

    @property
    def dashboard(self):
        from .screens.dashboard import DashboardScreen
        for screen in self.screen_stack:
            if isinstance(screen, DashboardScreen):
                return screen
        return None

    def on_ready(self) -> None:
        # after the first frame: the dashboard screen is composed, and nothing slow delayed it
        if self.demo:
            self.dashboard.query_one("#header").preparing = True
            self.dashboard.query_one("#header").set_notice(
                f"demo workspace: {self.root} · preparing (the first run builds the corpus and tokenizer)…")
            self.run_worker(self._prepare_demo, thread=True, exclusive=True, exit_on_error=False,
                            group="demo-prepare")
        if self.live:
            self.run_worker(self._watch_state, thread=True, exclusive=True, exit_on_error=False, group="state-watch")
            self.run_worker(self._sample_loop, thread=True, exclusive=True, exit_on_error=False, group="monitor")
            self.set_interval(SAMPLE_S, self._tick)
        else:
            self.reload_state()
            if self.gpu_monitor is not None:
                self._apply_sample(self._take_sample())

    def on_unmount(self) -> None:
        self._stop.set()
        self._reload.set()  # wakes the state watcher so its thread ends now
        self._sample_wake.set()

    def _tick(self) -> None:
        """1 Hz: wake the sampler; its result repaints the gauges, the runs and the header's clock in one frame
        (two separate repaints a second were a third of an idle dashboard's CPU)."""
        self._sample_wake.set()
        if time.monotonic() - self._sample_at > 2 * SAMPLE_S:  # the sampler is stuck (a hung driver call)
            self._refresh_clock()

    def _refresh_clock(self) -> None:
        # the header's clock (time in phase, elapsed) moves only while an experiment runs
        dash = self.dashboard
        if dash is not None and self.snapshot is not None and self.snapshot.current is not None:
            dash.refresh_clock()

    # --- state ---
    def _make_reader(self) -> StateReader | None:
        if self._reader is None:
            try:
                self._reader = StateReader(self.root, mode=self.mode, clock=self.clock)
            except UserError:
                return None  # the demo workspace does not exist yet
        return self._reader

    def reload_state(self) -> None:
        """Synchronous re-read (tests, and right after this app changed something)."""
        reader = self._make_reader()
        if reader is not None:
            self._apply_snapshot(reader.load())

    def _watch_state(self) -> None:
        """Re-read the state when one of its files changes (watchfiles), and every LIVENESS_S anyway: a killed
        engine changes no file, and a filesystem shared with another host may not report its changes."""
        from .watch import ChangeWaiter
        last_sig = None
        last_snap = None
        last_load = 0.0
        worker = get_current_worker()
        ws_dirs = [self.root, self.root / ".autoresearch", self.root / ".git"]
        waiter = ChangeWaiter(ws_dirs, STATE_FILES, self._reload, LIVENESS_S)
        try:
            while not self._stop.is_set() and not worker.is_cancelled:
                reader = self._make_reader()
                if reader is not None:
                    try:
                        sig = reader.signature()
                        now = time.monotonic()
                        if sig != last_sig or now - last_load >= LIVENESS_S or self._reload.is_set():
                            self._reload.clear()
                            snap = reader.load()
                            last_sig, last_load = sig, now
                            # an unchanged snapshot would only make the UI redo its layout: idle CPU stays low
                            if last_snap is None or dataclasses.replace(snap, loaded_at=0) != last_snap:
                                last_snap = dataclasses.replace(snap, loaded_at=0)
                                self.post_message(StateChanged(snap))
                    except Exception as e:  # a transient read error must not stop the updates
                        self.log.warning(f"state watch: {e!r}")
                waiter.wait()  # a reload (or quitting) sets _reload, which ends the wait at once
        finally:
            waiter.close()

    def on_state_changed(self, message: StateChanged) -> None:
        self._apply_snapshot(message.snapshot)

    def _apply_snapshot(self, snap) -> None:
        self.snapshot = snap
        dash = self.dashboard
        if dash is not None:
            dash.apply_snapshot(snap)

    # --- GPUs, CPU, memory, runs ---
    def _take_sample(self):
        from .monitor import Monitor
        if self._monitor is None:
            if self.gpu_monitor is None:
                from core.gpu import GpuMonitor
                self.gpu_monitor = GpuMonitor()
            self._monitor = Monitor(self.gpu_monitor, self.root / ".autoresearch" / "experiments", clock=self.clock)
        return self._monitor.sample(self.snapshot)

    def _sample_loop(self) -> None:
        worker = get_current_worker()
        while not self._stop.is_set() and not worker.is_cancelled:
            try:
                self.post_message(MonitorSampled(self._take_sample()))
            except Exception as e:
                self.log.warning(f"monitor: {e!r}")
            self._sample_wake.wait(2 * SAMPLE_S)  # the 1 Hz tick wakes it
            self._sample_wake.clear()

    def on_monitor_sampled(self, message: MonitorSampled) -> None:
        self._sample_at = time.monotonic()
        self._apply_sample(message.sample)

    def _apply_sample(self, sample) -> None:
        dash = self.dashboard
        if dash is not None:
            dash.apply_sample(sample)  # also repaints the header's clock

    # --- commands ---
    def _workspace(self):
        from core.workspace import Workspace
        return Workspace(self.root)

    def say(self, text: str, severity: str = "information") -> None:
        self.last_message = text
        self.notify(text, severity=severity, markup=False)

    def send_control(self, command: str, exp_id: str | None = None) -> None:
        """A control command for the engine; exp_id: abort that run only (several slots), the others go on."""
        from core import control
        try:
            control.send(self._workspace(), command, exp_id=exp_id)
        except (OSError, ValueError) as e:
            self.say(f"could not send {command}: {e}", "error")
            return
        self.say(f"{command} of {exp_id} sent to the engine" if exp_id else f"{command} sent to the engine")
        self._reload.set()

    def queue_idea(self, text: str) -> None:
        from core import control
        try:
            control.queue_idea(self._workspace(), text)
        except (OSError, ValueError) as e:
            self.say(f"could not queue the idea: {e}", "error")
            return
        snap = self.snapshot
        agent = snap.engine.agent if snap is not None and snap.engine is not None else None
        if agent == "mutate":  # it perturbs constants only: say so instead of letting the idea vanish
            self.say("idea queued; note that the mutate agent ignores free-text ideas (claude, codex and anthropic "
                     "read them)", "warning")
        else:
            self.say("idea queued for the next proposal")
        self._reload.set()
        if not self.live:
            self.reload_state()

    def start_engine(self, extra: list[str] | None = None) -> None:
        if self.starting:
            return
        self.starting = True
        dash = self.dashboard
        dash.query_one("#header").starting = True
        dash.query_one("#header").refresh()
        dash.refresh_bindings()
        root, cmd = self.root, self.start_command

        def run() -> None:
            try:
                ok, detail = cmd(root, extra) if extra else cmd(root)
            except Exception as e:  # an injected or broken start command: report, never crash
                ok, detail = False, str(e)
            self.post_message(EngineStartFinished(ok, detail))

        self.run_worker(run, thread=True, exclusive=True, exit_on_error=False, group="engine-start")

    def on_engine_start_finished(self, message: EngineStartFinished) -> None:
        self.starting = False
        dash = self.dashboard
        dash.query_one("#header").starting = False
        if message.ok:
            self.say(message.detail or "engine started")
        else:
            self.say(f"the engine did not start: {message.detail}", "error")
        self._reload.set()
        self.reload_state()
        dash.refresh_bindings()

    def edit_program(self) -> None:
        """Edit program.md in $EDITOR. With an engine workspace the edit goes to a copy that is handed to
        the engine (core.control.submit_program): it commits it before the next proposal, and an edit that
        lands while the agent is proposing is never taken for the agent's (which the engine rejects)."""
        from textual.app import SuspendNotSupported

        from core import control
        from core.status import running_engine
        path = self.root / "program.md"
        ws = self._workspace()
        via_engine = running_engine(ws) is not None
        target = ws.state_dir / "program.edit.md" if via_engine else path
        current = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        # directives handed in earlier and not applied yet are the latest text: edit on from them
        pending = control.pending_program(ws)
        original = pending if pending is not None else current
        if via_engine or pending is not None:
            target.write_text(original, encoding="utf-8")
        editor = self.editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        argv = shlex.split(editor) + [str(target)]
        try:
            try:
                with self.suspend():
                    rc = subprocess.call(argv)
            except SuspendNotSupported:  # headless (tests) or a web driver: run it without the terminal
                rc = subprocess.call(argv, stdin=subprocess.DEVNULL)
        except OSError as e:
            self.say(f"could not run the editor {editor!r}: {e}; set $EDITOR.", "error")
            return
        edited = target.read_text(encoding="utf-8", errors="replace") if target.exists() else original
        if via_engine:
            target.unlink(missing_ok=True)
        elif pending is not None:
            control.program_pending_path(ws).unlink(missing_ok=True)  # its text is in program.md now
        if rc != 0:
            self.say(f"the editor exited with code {rc}; program.md is unchanged", "warning")
        elif edited == original:
            self.say("program.md unchanged")
        else:
            if via_engine:
                control.submit_program(ws, edited)
            self.say("program.md saved; the agent uses it from the next proposal")

    def action_help(self) -> None:
        from .screens.modals import HelpScreen
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    # --- demo ---
    def _prepare_demo(self) -> None:
        from . import demo
        pane = self.dashboard.query_one("#train-log")
        try:
            demo.prepare(self.root, pane.feed_external, cancel=self._stop)
        except UserError as e:
            self.post_message(DemoPrepared(False, str(e)))
            return
        except Exception as e:  # the scaffold/setup is someone else's code: show its failure, do not crash
            self.post_message(DemoPrepared(False, f"{type(e).__name__}: {e}"))
            return
        self.post_message(DemoPrepared(True))

    def on_demo_prepared(self, message: DemoPrepared) -> None:
        from . import demo
        header = self.dashboard.query_one("#header")
        header.preparing = False
        self.demo_ready = message.ok
        self.dashboard.refresh_bindings()
        if not message.ok:
            header.set_notice(f"demo workspace: {self.root} · {message.detail}")
            self.say(message.detail, "error")
            return
        header.set_notice(f"demo workspace: {self.root} ({demo.DEMO_PROFILE} profile, {demo.DEMO_DATASET} data, "
                          f"{demo.DEMO_AGENT} agent)")
        self.reload_state()
        if not (self.snapshot and self.snapshot.engine_alive):
            self.start_engine(demo.start_args())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoresearch-tui", description="Dashboard of an autoresearch workspace.")
    p.add_argument("path", nargs="?", default=".", help="workspace folder (default: current directory)")
    p.add_argument("--demo", action="store_true", help="build and run a CPU demo workspace, then watch it")
    p.add_argument("--demo-dir", default=None, help="where the demo workspace lives (default ~/.cache/autoresearch/demo)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.demo:
            from . import demo
            root = demo.resolve_demo_dir(args.demo_dir)
            app = DashboardApp(root, mode=WORKSPACE, demo=True)
        else:
            root = Path(args.path).expanduser().resolve()
            app = DashboardApp(root, mode=classify(root))
    except UserError as e:
        print(f"autoresearch-tui: {e}", file=sys.stderr)
        return 1
    app.run()
    if args.demo:
        print(f"Demo workspace: {root}")
        snap = app.snapshot
        if snap is not None and snap.engine_alive:
            run = "uv run " if os.environ.get("UV") else ""  # launched through `uv run`: say it the same way
            print(f"Its engine keeps running; stop it with `{run}autoresearch -C {root} stop`, "
                  f"watch again with `{run}autoresearch-tui {root}`.")
    return app.return_code or 0


if __name__ == "__main__":
    sys.exit(main())
