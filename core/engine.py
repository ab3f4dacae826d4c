"""The experiment loop (DESIGN.md 5.1): propose -> validate -> commit -> train -> measure -> decide -> record."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from . import control, ledger
from .config import LoopConfig
from .decision import decide
from .errors import UserError
from .events import EventLog, read_finished
from .lock import EngineLock
from .procs import ProcessId
from .ratchet import Ratchet, branch_name, experiment_ref, numstat
from .runner import run
from .status import HEARTBEAT_S, Best, Proposal, SlotRun, StatusWriter
from .training import LocalRunner, read_time_budget
from .validate import PERSON_FILES, Verdict, check_changes, check_source
from .workspace import EDITABLE_FILE, Workspace, atomic_write_json, format_experiment_id, read_json

CONTROL_POLL_S = 0.2  # control files are looked at 5 times a second, also while a subprocess runs
MAX_AGENT_FAILURES = 3  # consecutive proposals lost to the agent itself (error, timeout, nothing changed) -> pause
PROGRAM_MESSAGE = "program.md: directives updated"
ABORTED = "aborted by user"
STOPPED = "engine stopped"
INTERRUPTED = "engine interrupted"


# --- helpers --------------------------------------------------------------------------------------

def next_experiment_id(ws: Workspace) -> str:
    """Reserve the next id: one more than the largest existing folder (ids are never reused)."""
    ws.experiments_dir.mkdir(parents=True, exist_ok=True)
    while True:
        nums = [int(p.name) for p in ws.experiments_dir.iterdir() if p.name.isdigit()]
        exp_id = format_experiment_id(max(nums, default=0) + 1)
        try:
            ws.experiment_dir(exp_id).mkdir()  # mkdir is the reservation: a racing worker gets the next one
            return exp_id
        except FileExistsError:
            continue


def find_best(rat: Ratchet, rows: list[ledger.Row], head: str) -> tuple[str, ledger.Row] | None:
    """The kept result the branch head stands on: walk back the first-parent history to a commit with a
    `keep` row; valid only if train.py did not change since (commits in between only touched program.md)."""
    kept = {r.commit[:7]: r for r in rows if r.status == "keep" and r.val_bpb > 0}
    if not kept:
        return None
    for sha in rat.first_parent_history(head, limit=5000):
        row = kept.get(sha[:7])
        if row is not None:
            if sha != head and rat.diff(sha, head).strip():
                return None  # someone changed train.py on the branch after it was measured
            return sha, row
    return None


def describe_proposal(proposal_file: Path, agent_tail: list[str], added: int, removed: int) -> str:
    """The description: the agent's proposal file, else its `DESCRIPTION:` or last output line, else the diff size."""
    try:
        for line in proposal_file.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                return ledger.clean_description(line)[:200]
    except OSError:
        pass
    for line in reversed(agent_tail):
        if line.strip().upper().startswith("DESCRIPTION:"):
            text = line.strip()[len("DESCRIPTION:"):].strip()
            if text:
                return ledger.clean_description(text)[:200]
    for line in reversed(agent_tail):
        if line.strip():
            return ledger.clean_description(line)[:200]
    return f"edit {EDITABLE_FILE} (+{added} -{removed} lines)"


class _Experiment:
    """Bookkeeping of the experiment in flight (meta.json is written from it)."""

    def __init__(self, ws: Workspace, exp_id: str, meta: dict):
        self.id = exp_id
        self.dir = ws.experiment_dir(exp_id)
        self.meta = meta
        self.timings: dict[str, float] = {}

    def save(self) -> None:
        self.meta["timings"] = {k: round(v, 3) for k, v in self.timings.items()}
        atomic_write_json(self.dir / "meta.json", self.meta)


class Engine:
    """One engine per workspace (engine.lock). `run()` loops until stop, --max, a signal or a fatal error."""

    def __init__(self, ws: Workspace, cfg: LoopConfig, agent=None, runner: LocalRunner | None = None,
                 trainer_argv: list[str] | None = None, log: Callable[[str], None] | None = None,
                 handle_signals: bool = True):
        self.ws = ws
        self.cfg = cfg
        self.agent = agent
        self.runner = runner or LocalRunner(ws.root, timeout=cfg.timeout,
                                            **({"argv": trainer_argv} if trainer_argv else {}))
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.handle_signals = handle_signals
        self.branch = branch_name(cfg.tag)
        self.best_commit: str | None = None
        self.best_val: float | None = None
        self.crash_tail: str | None = None
        self.done = 0
        self.agent_failures = 0
        self.exit_code = 0
        # control state, shared with the watcher thread and signal handlers
        self._cv = threading.Condition()
        self._paused = False
        self._stop = False
        self._signalled: str | None = None
        self._cancel = threading.Event()
        self._cancel_reason: str | None = None
        self._in_experiment = False
        self._watcher_quit = threading.Event()
        self.state: StatusWriter | None = None
        self._view: dict | None = None  # the experiment in flight, as engine.json shows it
        self._slot_label = "slot 0"
        self.events: EventLog | None = None
        self.rat: Ratchet | None = None

    # --- control -------------------------------------------------------------------------------------
    def _on_control(self, cmd: str) -> None:
        exp_id = self._current_id()
        with self._cv:
            if cmd == "abort":
                self.events.emit("abort_requested", exp_id)
                if self._in_experiment:
                    self._cancel_reason = ABORTED
                    self._cancel.set()
                if not self._paused:
                    self._paused = True
                    self.events.emit("paused", exp_id, reason="abort")
            elif cmd == "stop":
                self._stop = True
            elif cmd == "pause" and not self._paused:
                self._paused = True
                self.events.emit("paused", exp_id)
            elif cmd == "resume" and self._paused:
                self._paused = False
                self.events.emit("resumed", exp_id)
            self._publish_status()
            self._cv.notify_all()

    def _publish_status(self) -> None:
        status = "stopping" if (self._stop or self._signalled) else "paused" if self._paused else "running"
        self.state.update(status=status)

    def _watch_controls(self) -> None:
        beat = time.monotonic()
        while not self._watcher_quit.wait(CONTROL_POLL_S):
            if time.monotonic() - beat >= HEARTBEAT_S:  # dashboards on other hosts judge liveness by it
                beat = time.monotonic()
                self.state.heartbeat()
            try:
                for cmd in control.take(self.ws):
                    self._on_control(cmd)
            except Exception as e:  # a broken control file must not kill the engine
                self.log(f"autoresearch: ignoring a control command that could not be read ({e}).")

    def _on_signal(self, signum, frame) -> None:
        """SIGTERM, SIGINT and SIGHUP stop the engine soon: a running agent or trainer is killed at once (a
        system shutdown or `kill` will not wait minutes for a training run), the experiment is reverted and
        recorded as a crash "engine stopped (SIGTERM)", then the engine exits. `autoresearch stop` is the
        gentle way: it lets the current experiment finish."""
        # only set flags here: the main thread may hold any lock when the signal arrives
        self._signalled = signal.Signals(signum).name
        self._stop = True
        if self._in_experiment:
            self._cancel_reason = f"{STOPPED} ({self._signalled})"
            self._cancel.set()

    def _current_id(self) -> str | None:
        return self._view["id"] if self._view else None

    def _show(self, phase: str | None = None, **fields) -> None:
        """engine.json's view of the experiment in flight: a proposal while the agent works and validation
        runs, slot 0's run while it trains and is recorded."""
        v = self._view
        if v is None:
            self.state.update(phase=phase or "idle", proposals=(), slots=(SlotRun("0", label=self._slot_label),))
            return
        v.update(fields)
        if phase:
            v["phase"] = phase
        child = v.get("child")
        if v["phase"] in ("proposing", "validating"):
            prop = Proposal(v["id"], base=v.get("parent"), state=v["phase"], description=v.get("description") or "",
                            idea=v.get("idea"), started_at=v.get("started_at"), child=child)
            self.state.update(phase=v["phase"], proposals=(prop,), slots=(SlotRun("0", label=self._slot_label),))
        else:
            slot = SlotRun("0", label=self._slot_label, phase="training" if v["phase"] == "training" else "recording",
                           experiment=v["id"], commit=v.get("commit"), description=v.get("description") or "",
                           started_at=v.get("started_at"), training_started_at=v.get("training_started_at"),
                           time_budget=v.get("time_budget"), child=child)
            self.state.update(phase=v["phase"], proposals=(), slots=(slot,))

    def _phase(self, phase: str, exp_id: str | None) -> None:
        self._show(phase)
        self.events.emit("phase_changed", exp_id, phase=phase)

    # --- lifecycle -----------------------------------------------------------------------------------
    def run(self) -> int:
        from .recovery import check_clean_tree, check_head, recover

        self.rat = Ratchet(self.ws.root)
        lock = EngineLock(self.ws).acquire()
        old_handlers = {}
        try:
            check_head(self.rat)
            self.events = EventLog(self.ws.events)
            self.state = StatusWriter(self.ws, tag=self.cfg.tag, branch=self.branch,
                                      max_experiments=self.cfg.max_experiments, status="running")
            if self.agent is None:
                from .agents import make_agent
                self.agent = make_agent(self.cfg.agent, self.cfg.agent_config())
            notice = getattr(self.agent, "notice", None)
            if notice:
                self.log(f"autoresearch: {notice}.")
            control.take(self.ws)  # commands left from an earlier engine are stale
            recover(self.ws, self.rat, self.events, self.log)  # reads the dead engine's engine.json: before ours
            self.state.update(agent=self.agent.describe())
            self._show()
            check_clean_tree(self.rat)
            created = self.rat.checkout_branch(self.branch)
            led = ledger.read(self.ws.results_tsv)
            if led.bad_lines:
                self.log(f"autoresearch: warning: {led.warning()}")
            head = self.rat.head()
            found = None if created else find_best(self.rat, led.rows, head)
            if found:
                self.best_commit, self.best_val = head, found[1].val_bpb
            else:
                self.best_commit = head
            base = led.baseline
            self.state.update(best=self._best_info(), baseline_val_bpb=base.val_bpb if base else None)
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    old_handlers[sig] = signal.signal(sig, self._on_signal)
            self.events.emit("engine_started", None, pid=os.getpid(), tag=self.cfg.tag, branch=self.branch,
                             agent=self.agent.describe(), created_branch=created)
            self.log(f"autoresearch: engine {os.getpid()} running on branch {self.branch} with agent "
                     f"{self.agent.describe()}.")
            watcher = threading.Thread(target=self._watch_controls, name="control-watcher", daemon=True)
            watcher.start()
            message = None
            try:
                message = self._loop()
            finally:
                self._watcher_quit.set()
                watcher.join(timeout=2)
            self._view = None
            self.state.update(status="stopped", phase="idle", proposals=(), slots=(), message=message)
            self.events.emit("engine_stopped", None, reason=message or "stopped")
            self.log(f"autoresearch: engine stopped ({message or 'stopped'}).")
            return self.exit_code
        except BaseException as e:
            if self.state is not None:
                msg = str(e) if isinstance(e, UserError) else f"engine error: {type(e).__name__}: {e}"
                self.state.update(status="stopped", phase="idle", proposals=(), slots=(), message=msg)
                if self.events is not None:
                    self.events.emit("engine_stopped", None, reason=msg)
            raise
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            if self.events is not None:
                self.events.close()
            lock.release()

    def _best_info(self) -> Best | None:
        if self.best_val is None:
            return None
        return Best(self.best_commit, self.best_val)

    def _loop(self) -> str:
        while True:
            with self._cv:
                while self._paused and not self._stop:
                    if self.state.status.phase != "idle":
                        self.state.update(phase="idle")
                    self._cv.wait(CONTROL_POLL_S)
            if self._signalled:
                return f"{self._signalled} received"
            if self._stop:
                return "stop requested"
            if self.cfg.max_experiments is not None and self.done >= self.cfg.max_experiments:
                return f"--max {self.cfg.max_experiments} reached"
            with self._cv:
                if self._paused or self._stop:
                    continue
                self._cancel.clear()
                self._cancel_reason = None
                self._in_experiment = True  # from now on an abort cancels this experiment
            fatal = self.run_one()
            if fatal:
                self.exit_code = 1
                return fatal

    # --- one experiment ------------------------------------------------------------------------------
    def run_one(self) -> str | None:
        """Run one experiment end to end. Returns a message when the engine must stop."""
        self._commit_program_md()
        exp_id = next_experiment_id(self.ws)
        baseline = self.best_val is None
        parent = self.rat.head()
        now = time.time()
        exp = _Experiment(self.ws, exp_id, {
            "id": exp_id, "tag": self.cfg.tag, "branch": self.branch, "status": "running",
            "description": "baseline" if baseline else None, "commit": parent if baseline else None,
            "parent": parent, "val_bpb": None, "memory_gb": None, "metrics": {}, "reason": None,
            "simplification": False, "lines_added": 0, "lines_removed": 0, "idea": None, "baseline": baseline,
            "agent": None, "tsv_offset": _size(self.ws.results_tsv), "started_at": now, "training_started_at": None, "finished_at": None, "timings": {}})
        exp.save()  # from here on a crash of the engine leaves a marker that recovery finds
        self._in_experiment = True
        try:
            self._view = {"id": exp_id, "commit": exp.meta["commit"], "description": exp.meta["description"],
                          "parent": parent, "started_at": now, "training_started_at": None, "child": None,
                          "time_budget": read_time_budget(self.ws.root), "phase": "proposing"}
            self._show("proposing" if not baseline else "training")
            self.events.emit("experiment_started", exp_id, parent=parent, baseline=baseline)
            if baseline:
                # the baseline's folder is as complete as any other: an empty diff and a one-line agent log
                (exp.dir / "diff.patch").write_text("", encoding="utf-8")
                (exp.dir / "agent.log").write_text(
                    f"baseline: the unmodified train.py of {parent[:7]} is trained; no agent runs.\n", encoding="utf-8")
            else:
                outcome = self._propose(exp)
                if outcome is not None:
                    return outcome if outcome != "done" else None
            return self._train_and_record(exp)
        finally:
            self._in_experiment = False
            self.done += 1
            self._view = None
            self._show()
            self.state.update(experiments_done=self.done, best=self._best_info())
            self.events.emit("phase_changed", exp_id, phase="idle")

    def _reject_program_edit(self, exp: _Experiment) -> str | None:
        """program.md is the person's: a proposal that changed it is rejected, the file goes back to the
        committed directives, and the proposed text is kept in the experiment folder (nothing is lost).

        People edit it between proposals, or at any time through `control.submit_program` (the
        dashboard's `e`), which the engine applies before the next proposal."""
        if not self.rat.differs_from_head("program.md"):
            return None
        saved = exp.dir / "program.md.proposed"
        if self.ws.program_md.exists():
            saved.write_bytes(self.ws.program_md.read_bytes())
        self.rat.restore(["program.md"], [])
        return f"rejected: changed program.md (its text is kept in {saved.name})"

    def _commit_program_md(self) -> None:
        pending = control.take_program(self.ws)
        if pending is not None:
            self.ws.program_md.write_text(pending, encoding="utf-8")
        if (self.ws.program_md.exists() and self.rat.differs_from_head("program.md")):
            sha = self.rat.commit_paths(["program.md"], PROGRAM_MESSAGE)
            self.best_commit = sha
            self.events.emit("program_committed", None, commit=sha)
            self.state.update(best=self._best_info())

    def _child_started(self, pid: int) -> None:
        self._show(child=ProcessId.of(pid))

    def _propose(self, exp: _Experiment) -> str | None:
        """Agent, then validation, then commit. Returns None to go on training, "done" when the experiment
        was finished here (skipped, rejected, agent failure, abort), or a message to stop the engine."""
        t0 = time.monotonic()
        self._phase("proposing", exp.id)
        parent = exp.meta["parent"]
        before = self.rat.status()
        untracked_before = self.rat.untracked(before)
        tsv_before = _stat(self.ws.results_tsv)
        idea = control.take_idea(self.ws)
        if idea:
            exp.meta["idea"] = idea
            self.events.emit("idea_taken", exp.id, text=idea)
            exp.save()
        led = ledger.read(self.ws.results_tsv)
        best_row = next((r for r in reversed(led.rows) if r.status == "keep" and r.val_bpb == self.best_val), None)
        best_arg = {"commit": self.best_commit, "val_bpb": self.best_val,
                    "description": best_row.description if best_row else None}
        try:
            from .prompt import build_prompt
        except ImportError:  # the prompt builder is optional for custom agents
            build_prompt = None
        prompt = (build_prompt(self.ws, led, best_arg, self.crash_tail, idea, read_finished(self.ws.events))
                  if build_prompt
                  else self.ws.program_md.read_text(encoding="utf-8", errors="replace"))
        self.crash_tail = None
        from .agents.base import AgentContext, agent_env
        prompt_file = exp.dir / "prompt.md"
        prompt_file.write_text(prompt, encoding="utf-8")
        proposal_file, usage_file = exp.dir / "proposal.txt", exp.dir / "usage.json"
        ctx = AgentContext(workspace=self.ws, exp_id=exp.id, prompt=prompt, prompt_file=prompt_file,
                           proposal_file=proposal_file, usage_file=usage_file, log_file=exp.dir / "agent.log",
                           timeout=self.cfg.agent_timeout)
        try:
            argv = self.agent.command(ctx)
            env = dict(os.environ)
            env.update(self.agent.env(ctx))
            env.update(agent_env(ctx))
        except UserError as e:
            res, argv = None, None
            agent_error = str(e)
        else:
            agent_error = None
        if argv is not None:
            res = run(argv, cwd=self.ws.root, env=env, logs=[ctx.log_file], timeout=self.cfg.agent_timeout,
                      cancel=self._cancel, on_start=self._child_started)
            self._show(child=None)
            if res.error:
                agent_error = res.error
            elif res.timed_out:
                agent_error = f"agent timed out after {self.cfg.agent_timeout:.0f} s"
            elif res.returncode != 0 and not res.cancelled:
                last = next((ln for ln in reversed(res.tail) if ln.strip()), "")
                agent_error = f"agent exited with code {res.returncode}" + (f": {last.strip()[:160]}" if last else "")
        exp.meta["agent"] = self._usage(usage_file)
        exp.timings["propose_s"] = time.monotonic() - t0

        t1 = time.monotonic()
        self._phase("validating", exp.id)
        self._undo_agent_commits(parent)
        program_rejection = self._reject_program_edit(exp)
        entries = self.rat.status()
        verdict = check_changes(entries, untracked_before)
        if program_rejection:  # the rest of the proposal is undone with it, its new files included
            verdict = Verdict("rejected", program_rejection, verdict.tracked, verdict.new_files)
        tail = res.tail if res else []
        if res is not None and res.cancelled:
            return self._finish_without_training(exp, verdict, self._cancel_reason or ABORTED, t1)
        if agent_error:
            self.agent_failures += 1
            out = self._finish_without_training(exp, verdict, agent_error, t1)
            return self._maybe_pause_for_agent(out)
        if verdict.status == "empty":
            self.agent_failures += 1
            desc = describe_proposal(proposal_file, tail, 0, 0) if _size(proposal_file) or tail else "(no change)"
            exp.meta.update(status="skipped", reason="the agent changed nothing", finished_at=time.time(),
                            description=desc)
            exp.timings["validate_s"] = time.monotonic() - t1
            exp.save()
            self.events.emit("experiment_finished", exp.id, status="skipped", val_bpb=None, memory_gb=None,
                             commit=None, description=exp.meta["description"], reason=exp.meta["reason"])
            return self._maybe_pause_for_agent("done")
        self.agent_failures = 0
        reason = verdict.reason
        if reason is None and _stat(self.ws.results_tsv) != tsv_before:
            reason = "rejected: results.tsv was modified during the proposal (the ledger is the engine's)"
        if reason is None:
            try:
                source = self.ws.train_py.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                source, reason = None, f"rejected: {EDITABLE_FILE} cannot be read ({e})"
            if source is not None:
                reason = check_source(source)
        patch = self.rat.diff("HEAD")
        added, removed = numstat(patch)
        description = describe_proposal(proposal_file, tail, added, removed)
        exp.meta.update(description=description, lines_added=added, lines_removed=removed)
        if reason:
            self.events.emit("rejected", exp.id, reason=reason)
            return self._finish_without_training(exp, verdict, reason, t1, description=description)
        (exp.dir / "diff.patch").write_text(patch, encoding="utf-8")
        commit = self.rat.commit_paths([EDITABLE_FILE], description)
        self.rat.set_ref(experiment_ref(exp.id), commit)
        exp.meta["commit"] = commit
        exp.timings["validate_s"] = time.monotonic() - t1
        exp.save()
        self._show(commit=commit, description=description)
        self.events.emit("proposal_ready", exp.id, description=description, commit=commit,
                         lines_added=added, lines_removed=removed)
        return None

    def _maybe_pause_for_agent(self, outcome: str) -> str:
        if self.agent_failures >= MAX_AGENT_FAILURES:
            with self._cv:
                if not self._paused:
                    self._paused = True
                    msg = (f"{self.agent_failures} proposals in a row gave no usable change; paused. Check "
                           "the agent (see agent.log of the last experiments), then resume.")
                    self.log(f"autoresearch: {msg}")
                    self.events.emit("paused", None, reason=msg)
                    self.state.update(message=msg)
                    self._publish_status()
            self.agent_failures = 0
        return outcome

    def _usage(self, usage_file: Path) -> dict:
        info = {"name": getattr(self.agent, "name", "agent"), "model": self.cfg.model, "input_tokens": None,
                "output_tokens": None, "cost_usd": None}
        data = read_json(usage_file, None)
        if isinstance(data, dict):
            for k in ("model", "input_tokens", "output_tokens", "cost_usd"):
                v = data.get(k)
                if k == "model" and isinstance(v, str):
                    info[k] = v[:100]
                elif k != "model" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    info[k] = v
        return info

    def _undo_agent_commits(self, parent: str) -> None:
        """An agent that ran `git commit` (or switched branches) is put back: its changes stay in the
        working tree as uncommitted edits, where validation sees them like any other proposal."""
        if self.rat.current_branch() != self.branch:
            try:
                self.rat.git("checkout", "-q", self.branch)
            except Exception as e:
                raise UserError(f"the agent left the branch {self.branch} and the engine could not switch back "
                                f"({e}); check out {self.branch} by hand and start the loop again.") from None
        if self.rat.head() != parent:
            self.rat.git("reset", "-q", "--soft", parent)
            self.rat.git("reset", "-q")

    def _finish_without_training(self, exp: _Experiment, verdict, reason: str, t_validate: float,
                                 description: str | None = None) -> str:
        """Record a proposal that never trained (rejected, agent failure, abort) as a crash: its changes are
        kept browsable in a snapshot commit under the experiment ref, then the working tree is restored."""
        parent = exp.meta["parent"]
        desc = description or exp.meta.get("description") or describe_proposal(
            exp.dir / "proposal.txt", [], 0, 0)
        paths = [p for p in verdict.tracked + verdict.new_files if p not in PERSON_FILES]
        snap_paths = [p for p in paths if not _too_big(self.ws.root / p)]
        patch = self.rat.diff("HEAD", paths=tuple(p for p in verdict.tracked if p not in PERSON_FILES)) \
            if verdict.tracked else ""
        if patch:
            (exp.dir / "diff.patch").write_text(patch, encoding="utf-8")
        commit = self.rat.snapshot(desc, parent, snap_paths)
        exp.meta.update(description=desc, commit=commit)
        exp.timings.setdefault("validate_s", time.monotonic() - t_validate)
        self.rat.restore([p for p in verdict.tracked if p not in PERSON_FILES], verdict.new_files,
                         keep_dir=exp.dir / "created-files")
        self._record(exp, "crash", commit, None, None, desc, reason)
        return "done"

    def _train_and_record(self, exp: _Experiment) -> str | None:
        t0 = time.monotonic()
        self._phase("training", exp.id)
        started = time.time()
        exp.meta["training_started_at"] = started
        exp.save()
        self._show(training_started_at=started)

        def on_start(pid: int) -> None:
            # the child is in engine.json before anyone hears that training started (recovery relies on it)
            self._child_started(pid)
            self.events.emit("training_started", exp.id, commit=exp.meta["commit"], pid=pid)

        result = self.runner.train([exp.dir / "train.log", self.ws.run_log], exp.dir / "metrics.json",
                                   cancel=self._cancel, on_start=on_start, run_id=exp.id)
        self._show(child=None)
        exp.timings["train_s"] = time.monotonic() - t0
        exp.meta["metrics"] = result.metrics
        commit = exp.meta["commit"]
        # the trainer runs the agent's code: it must not have changed tracked files while it ran
        dirty = [p for p in self.rat.tracked_changes() if p not in PERSON_FILES]
        if EDITABLE_FILE in dirty:
            self.rat.restore([EDITABLE_FILE], [])  # the commit holds what was measured
            dirty.remove(EDITABLE_FILE)
        if dirty:
            files = ", ".join(dirty[:5])
            self._record(exp, "crash", commit, None, None, exp.meta["description"],
                         f"rejected: {files} changed during training")
            return (f"{files} changed while experiment {exp.id} was training; check the change, commit or revert "
                    "it, then start the loop again")
        if result.cancelled:
            self._record(exp, "crash", commit, None, None, exp.meta["description"],
                         self._cancel_reason or ABORTED)
            return None
        if not result.ok:
            self.crash_tail = "\n".join(result.tail)
            self._record(exp, "crash", commit, None, None, exp.meta["description"], result.reason)
            if exp.meta.get("baseline"):
                return (f"the baseline run crashed ({result.reason}); see {exp.dir / 'train.log'}, fix the "
                        "trainer or its data (`autoresearch setup`), then start the loop again")
            return None
        d = decide(result.val_bpb, self.best_val, exp.meta["lines_added"], exp.meta["lines_removed"],
                   self.cfg.min_delta, self.cfg.simplify_tolerance)
        desc = exp.meta["description"]
        if d.simplification:
            desc = f"{desc} [simplify]"
        exp.meta["simplification"] = d.simplification
        self._record(exp, d.status, commit, result.val_bpb, result.memory_gb, desc, d.reason)
        return None

    def _record(self, exp: _Experiment, status: str, commit: str, val_bpb: float | None,
                memory_gb: float | None, description: str, reason: str | None) -> None:
        """The commit point is the results.tsv line: meta (with the commit) and the ref are written first so
        that recovery after a crash here neither loses nor duplicates the row."""
        t0 = time.monotonic()
        self._phase("recording", exp.id)
        reference = self.best_val  # what this run was decided against
        exp.meta["commit"] = commit
        exp.save()
        self.rat.set_ref(experiment_ref(exp.id), commit)
        tsv_desc = description if status != "crash" else f"{description} ({reason})"
        ledger.append(self.ws.results_tsv, commit, val_bpb or 0.0, memory_gb or 0.0, status, tsv_desc)
        if status == "keep":
            self.best_commit, self.best_val = commit, val_bpb
            if exp.meta.get("baseline"):
                self.state.update(baseline_val_bpb=val_bpb)
        elif self.rat.head() != self.best_commit:
            self.rat.reset_keep(self.best_commit)
        exp.timings["record_s"] = time.monotonic() - t0
        exp.meta.update(status=status, val_bpb=val_bpb, memory_gb=None if memory_gb is None else round(memory_gb, 3),
                        reason=reason, description=description, finished_at=time.time())
        exp.save()
        self.events.emit("experiment_finished", exp.id, status=status, val_bpb=val_bpb, memory_gb=memory_gb,
                         commit=commit, description=description, reason=reason, reference=reference,
                         best=self.best_val)
        self.state.update(best=self._best_info())


def _stat(path: Path):
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _too_big(path: Path, limit: int = 5 << 20) -> bool:
    """Files above 5 MB are left out of snapshot commits (an agent's stray data file must not bloat git)."""
    try:
        return path.is_file() and path.stat().st_size > limit
    except OSError:
        return False
