"""The engine: proposals made ahead in their own worktrees, runs in N slots, one exact ratchet (docs/architecture.md).

One experiment: propose (agent in a worktree at the best commit) -> validate -> queue -> apply onto the best of
that moment and commit (off the branch) -> train in a free slot -> measure -> decide against the best it
started from -> record (results.tsv, one writer, finish order) -> the branch moves only to measured commits.
The main thread owns git's branch, the ledger and every decision; agents and runs work on other threads.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import control, faults, journal, ledger
from .config import LoopConfig
from .controls import Controls
from .decision import decide
from .errors import UserError
from .events import EventLog, read_finished
from .executors.base import Executor, RunCallbacks, RunHandle, RunSpec, Slot
from .lock import EngineLock
from .meta import ExperimentMeta, write_meta
from .procs import ProcessId
from .proposer import ProposalJob, ProposalOutcome, make_proposal
from .ratchet import Ratchet, branch_name, experiment_ref, numstat
from .status import HEARTBEAT_S, Best, Proposal, SlotRun, StatusWriter
from .training import TrainResult, budget_of, default_timeout
from .validate import PERSON_FILES
from .workspace import EDITABLE_FILE, Workspace, format_experiment_id

CONTROL_POLL_S = 0.2  # control files are looked at 5 times a second, also while subprocesses run
MAX_AGENT_FAILURES = 3  # consecutive proposals lost to the agent itself (error, timeout, nothing changed) -> pause
MAX_REBASES = 2  # a proposal that no longer applies goes back to its agent at most this often
PROGRAM_MESSAGE = "program.md: directives updated"
ABORTED = "aborted by user"
STOPPED = "engine stopped"
INTERRUPTED = "engine interrupted"
NOT_TRAINED = "not trained: the engine was stopping"


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
    kept = {r.commit[:7]: r for r in rows if r.status == "keep" and r.measured}
    if not kept:
        return None
    for sha in rat.first_parent_history(head, limit=5000):
        row = kept.get(sha[:7])
        if row is not None:
            if sha != head and rat.diff(sha, head).strip():
                return None  # someone changed train.py on the branch after it was measured
            return sha, row
    return None


@dataclass
class Exp:
    """One experiment in flight (its meta.json is written from `meta` at every step)."""

    meta: ExperimentMeta
    dir: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str | None = None
    outcome: ProposalOutcome | None = None  # the validated proposal
    train_py: str | None = None  # what it trains (set when it is applied onto the best)
    handle: RunHandle | None = None
    slot: Slot | None = None
    child: ProcessId | None = None
    phase: str = "proposing"
    rebases: int = 0
    thread: threading.Thread | None = None

    @property
    def id(self) -> str:
        return self.meta.id

    def save(self) -> None:
        write_meta(self.dir, self.meta)


class Engine:
    """One engine per workspace (engine.lock). `run()` loops until stop, --max, a signal or a fatal error."""

    def __init__(self, ws: Workspace, cfg: LoopConfig, agent=None, executor: Executor | None = None,
                 trainer_argv: list[str] | None = None, log: Callable[[str], None] | None = None,
                 handle_signals: bool = True):
        self.ws = ws
        self.cfg = cfg
        self.agent = agent
        self.executor = executor
        self.trainer_argv = trainer_argv
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.handle_signals = handle_signals
        self.branch = branch_name(cfg.tag)
        self.controls = Controls()
        self.inbox: queue.Queue = queue.Queue()  # (kind, payload) from worker threads to the main loop
        self.git_lock = threading.Lock()  # git state shared by every worktree (worktrees, refs)
        self.head: str | None = None  # the branch head the engine put there
        self.best_commit: str | None = None  # the measured commit the head stands on
        self.best_val: float | None = None
        self.best_id: str | None = None
        self.crash_tail: str | None = None
        self.started = 0  # experiments begun in this session (--max counts them)
        self.done = 0
        self.agent_failures = 0
        self.exit_code = 0
        self.fatal: str | None = None
        self.proposing: dict[str, Exp] = {}
        self.ready: list[Exp] = []  # validated proposals waiting for a slot, oldest first
        self.confirm_queue: list[Exp] = []  # confirmation runs: first in line for a slot
        self.running: dict[str, Exp] = {}  # slot id -> run
        self.slots: list[Slot] = []
        self.state: StatusWriter | None = None
        self.events: EventLog | None = None
        self.rat: Ratchet | None = None
        self._watcher_quit = threading.Event()

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
            if self.executor is None:
                from .executors.local import LocalExecutor, plan_slots
                self.executor = LocalExecutor(self.ws.root, plan_slots(None, None, []), argv=self.trainer_argv)
            self.slots = self.executor.slots()
            control.take(self.ws)  # commands left from an earlier engine are stale
            recover(self.ws, self.rat, self.events, self.log, self.executor)  # before our engine.json replaces its
            check_clean_tree(self.rat)
            created = self.rat.checkout_branch(self.branch)
            led = ledger.read(self.ws.results_tsv)
            if led.bad_lines:
                self.log(f"autoresearch: warning: {led.warning()}")
            self.head = self.rat.head()
            found = None if created else find_best(self.rat, led.rows, self.head)
            if found:
                self.best_commit, self.best_val = found[0], found[1].val_bpb
                self.best_id = self._id_of(found[0])
            journal.write(self.ws, journal.Journal(self.branch, self.head))
            base = led.baseline
            self.state.update(agent=self.agent.describe(), best=self._best(), slots=self._slot_status(),
                              baseline_val_bpb=base.val_bpb if base else None,
                              options={"slots": len(self.slots), "lookahead": self.cfg.lookahead,
                                       "agents": self.cfg.agents, "executor": getattr(self.executor, "name", "?")})
            if self.handle_signals and threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    old_handlers[sig] = signal.signal(sig, self.controls.on_signal)
            self.events.emit("engine_started", None, pid=os.getpid(), tag=self.cfg.tag, branch=self.branch,
                             agent=self.agent.describe(), created_branch=created,
                             slots=[s.label for s in self.slots], lookahead=self.cfg.lookahead)
            self.log(f"autoresearch: engine {os.getpid()} running on branch {self.branch} with agent "
                     f"{self.agent.describe()}" + (f", {len(self.slots)} slots" if len(self.slots) > 1 else "")
                     + ".")
            watcher = threading.Thread(target=self._watch_controls, name="control-watcher", daemon=True)
            watcher.start()
            message = None
            try:
                message = self._loop()
            finally:
                self._watcher_quit.set()
                watcher.join(timeout=2)
                self._shutdown_in_flight()
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
            if self.executor is not None:
                self.executor.close()
            lock.release()

    # --- control -------------------------------------------------------------------------------------
    def _watch_controls(self) -> None:
        beat = time.monotonic()
        while not self._watcher_quit.wait(CONTROL_POLL_S):
            if time.monotonic() - beat >= HEARTBEAT_S:  # dashboards on other hosts judge liveness by it
                beat = time.monotonic()
                self.state.heartbeat()
            try:
                for cmd, exp_id in control.take(self.ws):
                    self.inbox.put(("control", (cmd, exp_id)))
            except Exception as e:  # a broken control file must not kill the engine
                self.log(f"autoresearch: ignoring a control command that could not be read ({e}).")

    def _on_control(self, cmd: str, exp_id: str | None) -> None:
        if cmd == "abort":
            self.events.emit("abort_requested", exp_id)
            targets = [e for e in self._in_flight() if exp_id is None or e.id == exp_id]
            for e in targets:
                self._cancel(e, ABORTED)
            if exp_id is None and self.controls.pause("abort"):
                self.events.emit("paused", None, reason="abort")
        elif cmd == "stop":
            self.controls.request_stop()
        elif cmd == "pause" and self.controls.pause():
            self.events.emit("paused", None)
        elif cmd == "resume" and self.controls.resume():
            self.events.emit("resumed", None)
        self.state.update(status=self.controls.status())

    def _cancel(self, e: Exp, reason: str) -> None:
        e.cancel_reason = reason
        e.cancel.set()
        if e.handle is not None:
            e.handle.cancel(reason)

    def _in_flight(self) -> list[Exp]:
        return [*self.proposing.values(), *self.ready, *self.confirm_queue, *self.running.values()]

    def _pause_for(self, msg: str) -> None:
        if self.controls.pause(msg):
            self.log(f"autoresearch: {msg}")
            self.events.emit("paused", None, reason=msg)
            self.state.update(status=self.controls.status(), message=msg)

    # --- the loop ------------------------------------------------------------------------------------
    def _loop(self) -> str:
        while True:
            self._drain(CONTROL_POLL_S)
            if self.controls.signalled:
                sig = self.controls.signalled
                for e in self._in_flight():
                    self._cancel(e, f"{STOPPED} ({sig})")
                self._wait_idle()
                return f"{sig} received"
            if self.fatal:
                self.exit_code = 1
                for e in self._in_flight():
                    self._cancel(e, STOPPED)
                self._wait_idle()
                return self.fatal
            limit = self.cfg.max_experiments
            stop = self.controls.stop_requested
            at_max = limit is not None and self.started >= limit
            if stop:
                self._drop_unstarted()
            if (stop or at_max) and not self._in_flight():
                return "stop requested" if stop else f"--max {limit} reached"
            if not self.controls.paused:
                if self.best_val is None and not (stop or at_max) and \
                        not any(e.meta.kind == "baseline" for e in self._in_flight()):
                    self._start_baseline()  # nothing measured yet (a new branch, or its baseline was aborted)
                self._dispatch()
                if not (stop or at_max):
                    self._start_proposals()
            self._publish()

    def _drain(self, timeout: float) -> None:
        """Handle what worker threads and the control watcher sent, and runs that ended."""
        try:
            kind, payload = self.inbox.get(timeout=timeout)
        except queue.Empty:
            kind = None
        while kind is not None:
            if kind == "control":
                self._on_control(*payload)
            elif kind == "proposal":
                self._proposal_done(*payload)
            try:
                kind, payload = self.inbox.get_nowait()
            except queue.Empty:
                kind = None
        for slot_id, e in list(self.running.items()):
            if e.handle is not None and e.handle.done():
                del self.running[slot_id]
                self._run_done(e, e.handle.result(0))

    def _wait_idle(self) -> None:
        """After cancelling everything: wait for the threads to report, record each experiment once."""
        deadline = time.monotonic() + 60
        while (self.running or self.proposing) and time.monotonic() < deadline:
            self._drain(0.1)
        self._drop_unstarted()

    def _drop_unstarted(self) -> None:
        """The engine is stopping: what has not started training never will (it used no slot; it is recorded
        as skipped, without a results.tsv row, and a person's idea goes back to the queue); agents still
        proposing are ended the same way. Running runs finish (stop) or were cancelled (signal, fatal)."""
        for e in self.ready + self.confirm_queue:
            why = NOT_TRAINED + (f" (keep it by hand: autoresearch keep {e.meta.confirms})" if e.meta.confirms else "")
            self._record_untrained(e, "skipped", why)
        self.ready, self.confirm_queue = [], []
        for e in self.proposing.values():
            if not e.cancel.is_set():
                self._cancel(e, NOT_TRAINED)

    def _shutdown_in_flight(self) -> None:
        """Whatever still runs when the loop ends (an exception): killed, then recorded by the next recovery."""
        for e in self._in_flight():
            self._cancel(e, STOPPED)
        for e in list(self.running.values()):
            if e.handle is not None:
                e.handle.result(30)
        for e in list(self.proposing.values()):
            if e.thread is not None:
                e.thread.join(30)

    # --- status --------------------------------------------------------------------------------------
    def _best(self) -> Best | None:
        return Best(self.head, self.best_val) if self.best_val is not None else None

    def _slot_status(self) -> tuple[SlotRun, ...]:
        out = []
        for s in self.slots:
            e = self.running.get(s.id)
            if e is None:
                out.append(SlotRun(s.id, label=s.label, gpu=s.gpu, node=s.node))
            else:
                node = (e.meta.slot or {}).get("node") or s.node
                out.append(SlotRun(s.id, label=s.label, gpu=s.gpu, node=node, phase=e.phase, experiment=e.id,
                                   commit=e.meta.commit, description=e.meta.description or "",
                                   confirms=e.meta.confirms, started_at=e.meta.started_at,
                                   training_started_at=e.meta.training_started_at,
                                   time_budget=e.meta.extra.get("time_budget"), child=e.child))
        return tuple(out)

    def _proposal_status(self) -> tuple[Proposal, ...]:
        out = [Proposal(e.id, base=e.meta.base, state=e.phase, description=e.meta.description or "",
                        idea=e.meta.idea, started_at=e.meta.started_at, child=e.child)
               for e in self.proposing.values()]
        out += [Proposal(e.id, base=e.meta.base, state="ready", description=e.meta.description or "",
                         idea=e.meta.idea, started_at=e.meta.started_at) for e in self.ready]
        return tuple(out)

    def _publish(self) -> None:
        running = [e for e in self.running.values()]
        if running:
            phase = "recording" if any(e.phase == "recording" for e in running) else "training"
        elif self.proposing:
            phase = "validating" if any(e.phase == "validating" for e in self.proposing.values()) else "proposing"
        else:
            phase = "idle"
        new = dict(status=self.controls.status(), phase=phase, slots=self._slot_status(),
                   proposals=self._proposal_status(), experiments_done=self.done, best=self._best())
        cur = self.state.status
        if any(getattr(cur, k) != v for k, v in new.items()):
            self.state.update(**new)

    def _phase(self, e: Exp, phase: str) -> None:
        e.phase = phase
        self.events.emit("phase_changed", e.id, phase=phase)
        self._publish()

    # --- experiments ---------------------------------------------------------------------------------
    def _new_exp(self, kind: str, **fields) -> Exp:
        exp_id = next_experiment_id(self.ws)
        if kind != "confirmation":  # --max counts experiments; the confirmations they need come on top
            self.started += 1
        meta = ExperimentMeta(id=exp_id, tag=self.cfg.tag, branch=self.branch, kind=kind,
                              started_at=time.time(), tsv_offset=_size(self.ws.results_tsv), **fields)
        e = Exp(meta=meta, dir=self.ws.experiment_dir(exp_id))
        e.save()  # from here on a crash of the engine leaves a marker that recovery finds
        return e

    def _start_baseline(self) -> None:
        e = self._new_exp("baseline", description="baseline", commit=self.head, parent=self.head, base=self.head,
                          status="queued")
        (e.dir / "diff.patch").write_text("", encoding="utf-8")
        (e.dir / "agent.log").write_text(f"baseline: the unmodified train.py of {self.head[:7]} is trained; no "
                                         "agent runs.\n", encoding="utf-8")
        e.train_py = self.rat.show_file(self.head, EDITABLE_FILE)
        e.save()
        self.events.emit("experiment_started", e.id, parent=self.head, baseline=True, kind="baseline")
        self.confirm_queue.append(e)

    def _start_proposals(self) -> None:
        """Keep proposals coming: while runs train, the next ones are being made (--lookahead), so a slot that
        frees finds one ready. Baseline first: nothing is proposed before there is a train.py to start from."""
        limit = self.cfg.max_experiments
        cap = self.cfg.agents or (len(self.slots) + self.cfg.lookahead)
        while True:
            in_pipeline = len(self.proposing) + len(self.ready) + len(self.confirm_queue) + len(self.running)
            if in_pipeline >= len(self.slots) + self.cfg.lookahead or len(self.proposing) >= cap:
                return
            if limit is not None and self.started >= limit:
                return
            self._start_proposal()

    def _start_proposal(self, rebase_of: Exp | None = None) -> None:
        from .prompt import build_prompt

        self._commit_program_md()  # the person's newest directives reach this proposal
        if rebase_of is None:
            e = self._new_exp("proposal", base=self.head, status="proposing")
            idea = control.take_idea(self.ws)
            if idea:
                e.meta.idea = idea
                self.events.emit("idea_taken", e.id, text=idea)
            self.events.emit("experiment_started", e.id, parent=self.head, baseline=False, kind="proposal")
        else:
            e = rebase_of
            log = e.dir / "agent.log"
            if log.exists():  # the next agent run starts a new log: keep the first one beside it
                os.replace(log, e.dir / f"agent.{e.rebases}.log")
            e.meta = e.meta.with_(base=self.head, status="proposing", commit=None)
            e.cancel = threading.Event()
            e.outcome = None
        e.phase = "proposing"
        e.save()
        led = ledger.read(self.ws.results_tsv)
        best_row = next((r for r in reversed(led.rows) if r.status == "keep" and r.val_bpb == self.best_val), None)
        best_arg = {"commit": self.head, "val_bpb": self.best_val,
                    "description": best_row.description if best_row else None}
        in_flight = [x.meta.description or x.meta.idea for x in self._in_flight() if x is not e]
        prompt = build_prompt(self.ws, led, best_arg, self.crash_tail, e.meta.idea, read_finished(self.ws.events),
                              in_flight=[t for t in in_flight if t], hand_in=getattr(self.agent, "hand_in", "file"))
        self.crash_tail = None
        job = ProposalJob(ws=self.ws, exp_id=e.id, exp_dir=e.dir, base=self.head, prompt=prompt, agent=self.agent,
                          agent_timeout=self.cfg.agent_timeout, cancel=e.cancel, git_lock=self.git_lock,
                          on_child=lambda pid, e=e: self._child(e, pid),
                          cancel_reason=lambda e=e: e.cancel_reason)
        self.proposing[e.id] = e
        e.thread = threading.Thread(target=self._propose_thread, args=(e, job), name=f"propose-{e.id}", daemon=True)
        e.thread.start()
        self._publish()

    def _propose_thread(self, e: Exp, job: ProposalJob) -> None:
        try:
            out = make_proposal(job)
        except BaseException as ex:  # git failing under the agent: recorded as a crash, never a hang
            out = ProposalOutcome("agent_error", f"proposal failed: {type(ex).__name__}: {ex}")
        self.inbox.put(("proposal", (e, out)))

    def _child(self, e: Exp, pid: int | None) -> None:
        """The agent of this proposal started (or ended): engine.json names it for recovery."""
        if pid:
            faults.point("agent_spawned")
        e.child = ProcessId.of(pid) if pid else None
        self.state.update(proposals=self._proposal_status())

    def _proposal_done(self, e: Exp, out: ProposalOutcome) -> None:
        self.proposing.pop(e.id, None)
        e.child = None
        moved = self.rat.rev("refs/heads/" + self.branch)
        if moved != self.head:  # an agent moved the branch from its worktree (git update-ref): put it back
            with self.git_lock:
                self.rat.set_ref("refs/heads/" + self.branch, self.head)
            self.log(f"autoresearch: the branch {self.branch} was moved to {str(moved)[:7]} during proposal {e.id}; "
                     f"it is back at {self.head[:7]}.")
            if out.kind == "ready":
                out.kind, out.reason = "rejected", f"rejected: moved the branch {self.branch}"
        e.outcome = out
        m = e.meta
        m.agent = out.usage
        m.timings.update(propose_s=round(out.propose_s, 3), validate_s=round(out.validate_s, 3))
        m.description = out.description or m.description
        m.lines_added, m.lines_removed = out.lines_added, out.lines_removed
        if out.kind == "ready":
            self.agent_failures = 0
            m.status = "ready"
            e.train_py = out.train_py
            e.save()
            self.events.emit("proposal_ready", e.id, description=m.description, commit=out.snapshot,
                             lines_added=out.lines_added, lines_removed=out.lines_removed)
            self.ready.append(e)
        elif out.kind == "empty":
            self.agent_failures += 1
            m.status, m.reason, m.finished_at = "skipped", out.reason, time.time()
            e.save()
            self.done += 1
            self.events.emit("experiment_finished", e.id, status="skipped", val_bpb=None, memory_gb=None,
                             commit=None, description=m.description, reason=m.reason)
            self._maybe_pause_for_agent(out)
        elif out.kind == "cancelled" and e.cancel_reason == NOT_TRAINED:
            self._record_untrained(e, "skipped", e.cancel_reason)
        else:
            if out.kind == "rejected":
                self.agent_failures = 0
                self.events.emit("rejected", e.id, reason=out.reason)
            elif out.kind == "agent_error":
                self.agent_failures += 1
            self._record_untrained(e, "crash", out.reason or "proposal failed")
            if out.kind == "agent_error":
                self._maybe_pause_for_agent(out)
        self._publish()

    def _maybe_pause_for_agent(self, out: ProposalOutcome) -> None:
        if out.error_kind in ("auth", "version"):  # these fail every proposal the same way: no point in two more
            self._pause_for(f"paused: {out.reason.rstrip('.')}; fix it, then resume.")
            self.agent_failures = 0
        elif self.agent_failures >= MAX_AGENT_FAILURES:
            self._pause_for(f"{self.agent_failures} proposals in a row gave no usable change; paused. Check the "
                            "agent (see agent.log of the last experiments), then resume.")
            self.agent_failures = 0

    # --- dispatch: apply onto the best of this moment, commit, start in a free slot -------------------
    def _free_slots(self) -> list[Slot]:
        return [s for s in self.slots if s.id not in self.running]

    def _dispatch(self) -> None:
        for slot in self._free_slots():
            e = self._next_run()
            if e is None:
                return
            self._start_run(e, slot)

    def _next_run(self) -> Exp | None:
        """Confirmation and baseline runs first; a proposal only once the best is measured."""
        while self.confirm_queue:
            return self.confirm_queue.pop(0)
        if self.best_val is None:
            return None
        while self.ready:
            e = self.ready.pop(0)
            if self._apply_onto_best(e):
                return e
        return None

    def _same_train(self, a: str, b: str) -> bool:
        return a == b or self.rat.blob(a) == self.rat.blob(b)

    def _apply_onto_best(self, e: Exp) -> bool:
        """The proposal's change onto the current best (3-way); one that no longer applies spends no GPU time:
        its idea goes back to the agent with the new train.py (a new proposal under the same id)."""
        base = e.meta.base
        if self._same_train(base, self.head):
            text = e.train_py
        else:
            text = self.rat.merge(self.rat.show_file(base, EDITABLE_FILE) or "",
                              self.rat.show_file(self.head, EDITABLE_FILE) or "", e.train_py or "")
        if text is None:
            if e.rebases >= MAX_REBASES:
                self._record_untrained(e, "crash", f"rejected: the change no longer applies to the best "
                                                   f"train.py ({self.head[:7]}) after {e.rebases} retries")
                return False
            e.rebases += 1
            idea = (f"Your proposal \"{e.meta.description}\" was made on an older train.py and no longer applies "
                    f"to the current best. Make the same change on the current train.py. Your earlier diff:\n"
                    f"{(e.outcome.patch if e.outcome else '')[:4000]}")
            e.meta.idea = idea
            self.events.emit("rebase_needed", e.id, base=base, best=self.head)
            self._start_proposal(rebase_of=e)
            return False
        e.train_py = text
        return True

    def _start_run(self, e: Exp, slot: Slot) -> None:
        m = e.meta
        new_commit = m.kind != "baseline" or m.commit is None
        if new_commit:
            m.commit = self.rat.commit_file(self.head, e.train_py, _commit_message(m))
            m.parent = self.head
        with self.git_lock:
            self.rat.set_ref(experiment_ref(e.id), m.commit)
        if new_commit:
            faults.point("committed")  # the experiment's commit and ref exist, its folder does not name them yet
        m.reference_val_bpb, m.reference_id = self.best_val, self.best_id
        m.slot = {"id": slot.id, "label": slot.label, "gpu": slot.gpu, "node": slot.node}
        files = {name: self.rat.show_file(self.head, name) for name in ("prepare.py", "constants.py")}
        files = {k: v for k, v in files.items() if v is not None}
        files[EDITABLE_FILE] = e.train_py
        budget = budget_of(files)
        m.extra["time_budget"] = budget
        m.training_started_at = time.time()
        m.timings["queue_s"] = round(m.training_started_at - (m.started_at or m.training_started_at)
                                     - sum(m.timings.get(k, 0) for k in ("propose_s", "validate_s")), 3)
        m.status = "training"
        e.save()
        if m.kind != "baseline":  # what is trained: the change against the best it starts from
            (e.dir / "diff.patch").write_text(self.rat.diff(self.head, m.commit), encoding="utf-8")
        e.slot, e.phase = slot, "starting"
        logs = [e.dir / "train.log"] + ([self.ws.run_log] if slot.id == self.slots[0].id else [])
        spec = RunSpec(exp_id=e.id, files=files, logs=tuple(logs), metrics_out=e.dir / "metrics.json",
                       timeout=self.cfg.timeout or default_timeout(budget), seed=m.seed)
        self.running[slot.id] = e
        callbacks = RunCallbacks(on_start=lambda child, node, e=e: self._run_started(e, child, node),
                                 on_phase=lambda phase, e=e: self._run_phase(e, phase))
        e.handle = self.executor.start(slot, spec, callbacks)
        self._publish()

    def _run_started(self, e: Exp, child: ProcessId | None, node: str | None) -> None:
        # the child is in engine.json before anyone hears that training started (recovery relies on it)
        faults.point("trainer_spawned")
        e.child = child
        if node:
            e.meta.slot = {**(e.meta.slot or {}), "node": node}
        self.state.update(slots=self._slot_status())
        self.events.emit("training_started", e.id, commit=e.meta.commit, pid=child.pid if child else None,
                         slot=e.slot.id if e.slot else None, node=node)

    def _run_phase(self, e: Exp, phase: str) -> None:
        e.phase = phase
        self.state.update(slots=self._slot_status())
        self.events.emit("phase_changed", e.id, phase=phase)

    # --- a run ended: decide against the best it started from ----------------------------------------
    def _run_done(self, e: Exp, result: TrainResult | None) -> None:
        m = e.meta
        e.child = None
        if result is None:
            result = TrainResult(False, None, None, {}, "the run ended without a result", [], 0.0)
        m.timings["train_s"] = round(result.duration_s, 3)
        m.metrics = result.metrics
        dirty = [p for p in self.rat.tracked_changes() if p not in PERSON_FILES]
        if dirty:  # a run's code reached out of its run folder into the workspace
            files = ", ".join(dirty[:5])
            self._record(e, "crash", None, None, f"rejected: {files} changed during training")
            self.fatal = (f"{files} changed while experiment {e.id} was training; check the change, commit or "
                          "revert it, then start the loop again")
            return
        if result.cancelled:
            self._record(e, "crash", None, None, e.cancel_reason or ABORTED)
            return
        if not result.ok:
            self.crash_tail = "\n".join(result.tail)
            self._record(e, "crash", None, None, result.reason)
            if m.kind == "baseline":
                self.fatal = (f"the baseline run crashed ({result.reason}); see {e.dir / 'train.log'}, fix the "
                              "trainer or its data (`autoresearch setup`), then start the loop again")
            return
        val = result.val_bpb
        d = decide(val, m.reference_val_bpb, m.lines_added, m.lines_removed, self.cfg.min_delta,
                   self.cfg.simplify_tolerance)
        if d.status == "keep" and m.kind != "baseline" and not self._same_train(m.parent, self.head):
            self._confirm_elsewhere(e, val, result, d.reason)
            return
        if d.simplification:
            m.description = f"{m.description} [simplify]"
        m.simplification = d.simplification
        self._record(e, d.status, val, result.memory_gb, d.reason)

    def _confirm_elsewhere(self, e: Exp, val: float, result: TrainResult, why: str) -> None:
        """It beat the best it started from, but another run was kept meanwhile: its change goes onto the new
        best and that combination trains first (a confirmation run) before anything can be kept."""
        m = e.meta
        text = self.rat.merge(self.rat.show_file(m.parent, EDITABLE_FILE) or "",
                          self.rat.show_file(self.head, EDITABLE_FILE) or "", e.train_py or "")
        if text is None:
            self._record(e, "discard", val, result.memory_gb,
                         f"{why} on its base, but it does not apply on the new best {self.head[:7]} "
                         f"({self.best_id}); the idea goes back to the agent")
            if m.description:
                control.queue_idea(self.ws, f"Redo on the current train.py (it conflicted): {m.description}")
            return
        c = self._new_exp("confirmation", description=m.description, base=m.parent, confirms=e.id, status="queued",
                          lines_added=m.lines_added, lines_removed=m.lines_removed, idea=m.idea)
        c.train_py = text
        c.save()
        (c.dir / "agent.log").write_text(f"confirmation of {e.id}: its change, applied onto the best {self.head[:7]} "
                                         f"({self.best_id}), is trained again; no agent runs.\n", encoding="utf-8")
        m.confirmed_by = c.id
        self.events.emit("experiment_started", c.id, parent=self.head, baseline=False, kind="confirmation",
                         confirms=e.id)
        self._record(e, "discard", val, result.memory_gb,
                     f"{why} on its base; the best moved to {self.best_id} meanwhile, so the change trains again "
                     f"on it as {c.id}")
        self.confirm_queue.insert(0, c)

    # --- recording: the results.tsv line is the commit point -----------------------------------------
    def _record_untrained(self, e: Exp, status: str, reason: str) -> None:
        """A proposal that never trained: a crash row (rejected, agent failure, abort), or skipped (no row)."""
        for coll in (self.ready, self.confirm_queue):
            if e in coll:
                coll.remove(e)
        self.proposing.pop(e.id, None)
        m = e.meta
        if status == "skipped":
            m.status, m.reason, m.finished_at = "skipped", reason, time.time()
            e.save()
            self.done += 1
            if m.idea and m.kind == "proposal" and not m.idea.startswith("Your proposal"):
                control.queue_idea(self.ws, m.idea)  # a person's idea is not lost with it
            self.events.emit("experiment_finished", e.id, status="skipped", val_bpb=None, memory_gb=None,
                             commit=None, description=m.description, reason=reason)
            return
        snapshot = e.outcome.snapshot if e.outcome and e.outcome.snapshot else None
        if snapshot is None:
            snapshot = self.rat.snapshot(m.description or "(no description)", m.base or self.head, [])
        m.commit = m.commit or snapshot
        m.parent = m.parent or m.base
        self._record(e, "crash", None, None, reason)

    def _record(self, e: Exp, status: str, val_bpb: float | None, memory_gb: float | None, reason: str | None) -> None:
        """Intent first: meta says what is about to be recorded, then the row (the commit point), then the
        branch, then meta says it is done. Recovery after kill -9 between any two steps finishes the job."""
        t0 = time.monotonic()
        m = e.meta
        e.phase = "recording"
        keep = status == "keep"
        m.status, m.reason = "recording", reason
        m.extra["decision"] = status
        m.val_bpb = val_bpb
        m.memory_gb = None if memory_gb is None else round(memory_gb, 3)
        description = m.description or "(no description)"
        commit = m.commit
        if keep and m.kind != "baseline" and commit != self.head and self.rat.rev(commit + "^") != self.head:
            # a program.md commit landed on the branch while it trained: the same train.py, on top of it
            commit = self.rat.commit_file(self.head, e.train_py, _commit_message(m))
            m.extra["trained_commit"] = m.commit
            m.commit = commit
        e.save()
        with self.git_lock:
            self.rat.set_ref(experiment_ref(e.id), commit)
        reference = m.reference_val_bpb
        if keep and commit != self.head:
            journal.write(self.ws, journal.Journal(self.branch, self.head, commit, e.id))
        tsv_desc = description if status != "crash" else f"{description} ({reason})"
        ledger.append(self.ws.results_tsv, commit, val_bpb or 0.0, memory_gb or 0.0, status, tsv_desc)
        faults.point("row_written")
        if keep:
            if commit != self.head:
                self.rat.reset_keep(commit)  # a fast-forward of the branch (and the person's tree) to it
            self.head, self.best_commit, self.best_val, self.best_id = commit, commit, val_bpb, e.id
            journal.write(self.ws, journal.Journal(self.branch, self.head))
            if m.kind == "baseline":
                self.state.update(baseline_val_bpb=val_bpb)
        m.timings["record_s"] = round(time.monotonic() - t0, 3)
        m.status, m.finished_at = status, time.time()
        m.extra.pop("decision", None)
        e.save()
        faults.point("meta_written")
        self.done += 1
        self.events.emit("experiment_finished", e.id, status=status, val_bpb=val_bpb, memory_gb=memory_gb,
                         commit=commit, description=description, reason=reason, reference=reference,
                         best=self.best_val, kind=m.kind, confirms=m.confirms,
                         slot=(m.slot or {}).get("id"))
        self._publish()
        faults.point("between_experiments")

    def _commit_program_md(self) -> None:
        """Directives a person handed in (or edited in place) are committed on the branch before the next
        proposal; the best's train.py is unchanged, so the new head stands on the same measured result."""
        pending = control.take_program(self.ws)
        if pending is not None:
            self.ws.program_md.write_text(pending, encoding="utf-8")
        if self.ws.program_md.exists() and self.rat.differs_from_head("program.md"):
            journal.write(self.ws, journal.Journal(self.branch, self.head, None, None))
            sha = self.rat.commit_paths(["program.md"], PROGRAM_MESSAGE)
            self.head = sha
            journal.write(self.ws, journal.Journal(self.branch, self.head))
            self.events.emit("program_committed", None, commit=sha)
            self._publish()

    def _id_of(self, commit: str) -> str | None:
        for f in reversed(read_finished(self.ws.events)):
            if f.status == "keep" and f.commit[:7] == commit[:7]:
                return f.exp_id
        return None


def _commit_message(m: ExperimentMeta) -> str:
    desc = m.description or "(no description)"
    return f"{desc}\n\nautoresearch experiment {m.id}" + (f" (confirms {m.confirms})" if m.confirms else "")


def _size(path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


__all__ = ["Engine", "find_best", "next_experiment_id", "numstat"]
