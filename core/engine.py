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

from . import control, faults, journal, ledger, noise_store
from .config import LoopConfig
from .controls import Controls
from .decision import CONFIRM_EVERY_WIN, Decision, confidence, decide, decide_noise
from .early_stop import Calibration, Monitor, Verdict, calibrate
from .errors import UserError
from .events import EventLog, read_finished
from .executors.base import Executor, RunCallbacks, RunHandle, RunSpec, Slot
from .ledger import ABORTED
from .lock import EngineLock
from .meta import ExperimentMeta, read_meta, spending, write_meta
from .noise import NoiseFloor, measure, remeasure_reason
from .procs import ProcessId
from .progress import read_curve
from .proposer import ProposalJob, ProposalOutcome, make_proposal
from .ratchet import Ratchet, branch_name, experiment_ref, numstat
from .status import HEARTBEAT_S, Best, Proposal, SlotRun, StatusWriter
from .training import TrainResult, allowance_of, budget_of, default_timeout
from .validate import PERSON_FILES
from .workspace import EDITABLE_FILE, Workspace, format_experiment_id

CONTROL_POLL_S = 0.2  # control files are looked at 5 times a second, also while subprocesses run
MAX_AGENT_FAILURES = 3  # consecutive proposals lost to the agent itself (error, timeout, nothing changed) -> pause
MAX_REBASES = 2  # a proposal that no longer applies goes back to its agent at most this often
PROGRAM_MESSAGE = "program.md: directives updated"
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
    early_stop: Verdict | None = None  # set when the early-stop monitor stopped this run
    placed: Slot | None = None  # the slot as the executor placed the run (Ray: node and GPU)

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
        self.floor: NoiseFloor | None = None  # sigma of val_bpb on this setting (core.noise)
        self.calibration: Calibration | None = None  # the early-stop margins, from the noise runs' curves
        self.setting: noise_store.Setting | None = None
        self.noise_pending: dict[str, Exp] = {}  # noise runs not yet recorded
        self.noise_done: list[tuple[Exp, float, int]] = []
        self.noise_plan: dict = {}
        self.overrules: list[str] = []  # decisions a person made in this session (for the next prompt)
        self.cost_usd = 0.0  # what the agent spent on this tag (every proposal counts)
        self.cost_count = 0  # proposals whose cost is in cost_usd
        self.cost_estimated = False
        self.state: StatusWriter | None = None
        self.events: EventLog | None = None
        self.rat: Ratchet | None = None
        self._watcher_quit = threading.Event()

    # --- lifecycle -----------------------------------------------------------------------------------
    def run(self) -> int:
        from . import containment
        from .recovery import check_clean_tree, check_head, recover
        from .training import integrity

        self.rat = Ratchet(self.ws.root)
        lock = EngineLock(self.ws).acquire()
        containment.become_subreaper()  # orphans of a run come to the engine, not to init (Linux)
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
            level = integrity()
            if level.level != "L2":  # said once, plainly: which protections are off on this machine
                self.log(f"autoresearch: integrity {level}.")
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
            self._load_noise()
            self._load_cost()
            if self.cfg.noise_only and self.best_val is not None:
                self._maybe_measure_noise(force=True)
            base = led.baseline
            self.state.update_extra(integrity=str(level))
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
        elif cmd == "keep" and exp_id:
            self._person_keep(exp_id)
        elif cmd == "revert":
            self._person_revert()
        elif cmd == "noise":
            self._maybe_measure_noise(force=True)
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
                if not (stop or at_max or self.cfg.noise_only):
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
            elif kind == "early_stop" and payload in self.running.values() and not payload.cancel.is_set():
                self._cancel(payload, payload.early_stop.reason)
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
                p = e.placed or s
                node = (e.meta.slot or {}).get("node") or p.node
                out.append(SlotRun(s.id, label=p.label, gpu=p.gpu, node=node, phase=e.phase, experiment=e.id,
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
        if kind in ("baseline", "proposal"):  # --max counts these; confirmation and noise runs come on top
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
                              in_flight=[t for t in in_flight if t], hand_in=getattr(self.agent, "hand_in", "file"),
                              person_notes=self.overrules[-5:])
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
        self._add_cost(out.usage)  # rejected and failed proposals cost the same
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
        if self.best_val is None or self.noise_pending:  # decisions need the best, and sigma when it is measured
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
        repeat = m.extra.get("repeat_of")
        if repeat and not self._same_train(m.parent, self.head):
            # the best moved while it waited: a run of the change on the new best instead (decided afresh)
            text = self.rat.merge(self.rat.show_file(m.parent, EDITABLE_FILE) or "",
                                  self.rat.show_file(self.head, EDITABLE_FILE) or "", e.train_py or "")
            if text is None:
                self._record_untrained(e, "crash", f"rejected: the change of {repeat} no longer applies to the "
                                                   f"best train.py ({self.head[:7]})")
                return
            e.train_py, m.commit, repeat = text, None, None
            m.extra.pop("repeat_of", None)
        new_commit = m.commit is None
        if new_commit:
            m.commit = self.rat.commit_file(self.head, e.train_py, _commit_message(m))
            m.parent = self.head
        with self.git_lock:
            self.rat.set_ref(experiment_ref(e.id), m.commit)
        if new_commit:
            faults.point("committed")  # the experiment's commit and ref exist, its folder does not name them yet
        if not repeat:  # a repeat is decided against the best its first run was decided against
            m.reference_val_bpb, m.reference_id = self.best_val, self.best_id
        m.slot = {"id": slot.id, "label": slot.label, "gpu": slot.gpu, "node": slot.node}
        files = {name: self.rat.show_file(self.head, name) for name in ("prepare.py", "constants.py")}
        files = {k: v for k, v in files.items() if v is not None}
        files[EDITABLE_FILE] = e.train_py
        budget, allowance = budget_of(files), allowance_of(files)
        m.extra["time_budget"] = budget
        m.training_started_at = time.time()
        m.timings["queue_s"] = round(m.training_started_at - (m.started_at or m.training_started_at)
                                     - sum(m.timings.get(k, 0) for k in ("propose_s", "validate_s")), 3)
        m.status = "training"
        e.save()
        if m.kind not in ("baseline", "noise"):  # what is trained: the change against the best it starts from
            (e.dir / "diff.patch").write_text(self.rat.diff(self.head, m.commit), encoding="utf-8")
        e.slot, e.phase = slot, "starting"
        logs = [e.dir / "train.log"] + ([self.ws.run_log] if slot.id == self.slots[0].id else [])
        spec = RunSpec(exp_id=e.id, files=files, logs=tuple(logs), metrics_out=e.dir / "metrics.json",
                       timeout=self.cfg.timeout or default_timeout(budget, allowance), seed=m.seed)
        self.running[slot.id] = e
        monitor = self._monitor(e)
        callbacks = RunCallbacks(on_start=lambda child, node, e=e: self._run_started(e, child, node),
                                 on_placed=lambda placed, e=e: self._run_placed(e, placed),
                                 on_phase=lambda phase, e=e: self._run_phase(e, phase),
                                 on_output=(lambda data, e=e, mon=monitor: self._watch_output(e, mon, data))
                                 if monitor else None)
        e.handle = self.executor.start(slot, spec, callbacks)
        self._publish()

    def _run_placed(self, e: Exp, placed: Slot) -> None:
        """Where the executor put the run (a Ray node and its GPU): the slot as engine.json and meta.json show it."""
        e.placed = placed
        e.meta.slot = {"id": placed.id, "label": placed.label, "gpu": placed.gpu, "node": placed.node}
        self.state.update(slots=self._slot_status())

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
        if result.integrity:
            m.extra["integrity"] = result.integrity  # the level this score was obtained at
        if result.timings:
            m.extra["run_timings"] = result.timings  # measured by the engine: trainer wall time, hand-over, eval
        dirty = [p for p in self.rat.tracked_changes() if p not in PERSON_FILES]
        if dirty:  # a run's code reached out of its run folder into the workspace
            files = ", ".join(dirty[:5])
            self._record(e, "crash", None, None, f"rejected: {files} changed during training")
            self.fatal = (f"{files} changed while experiment {e.id} was training; check the change, commit or "
                          "revert it, then start the loop again")
            return
        if result.cancelled and e.early_stop is not None:
            v = e.early_stop
            m.extra["early_stop"] = v.to_json()
            m.description = f"{m.description} (stopped early at {round(100 * (v.fraction or 0))} %)"
            self._record(e, "discard", None, None, v.reason)
            return
        if result.cancelled:
            self._record(e, "crash", None, None, e.cancel_reason or ABORTED)
            if m.kind == "noise":
                self._noise_run_done(e)
            return
        if not result.ok:
            self.crash_tail = "\n".join(result.tail)
            self._record(e, "crash", None, None, result.reason)
            if m.kind == "noise":
                self._noise_run_done(e)
            if m.kind == "baseline":
                self.fatal = (f"the baseline run crashed ({result.reason}); see {e.dir / 'train.log'}, fix the "
                              "trainer or its data (`autoresearch setup`), then start the loop again")
            return
        val = result.val_bpb
        if m.kind == "noise":
            self._record(e, "discard", val, result.memory_gb, f"noise run (seed {m.seed})")
            self._noise_run_done(e, val, result)
            return
        repeat_of = m.extra.get("repeat_of")
        first = read_meta(self.ws.experiment_dir(repeat_of)) if repeat_of else None
        d = self._decide(e, val, first)
        if m.decided_by == "person":  # a person's keep: trained (so the branch moves to a measured commit), kept
            d = Decision("keep", False, f"kept by a person (val_bpb {val:.6f}, the best was {m.reference_val_bpb:.6f})")
        if d.status in ("keep", "confirm") and m.kind != "baseline" and not self._same_train(m.parent, self.head):
            self._confirm_elsewhere(e, d.mean if d.mean is not None else val, result, d.reason)
            return
        if d.status == "confirm":
            self._repeat(e, val, result, d)
            return
        if d.simplification:
            m.description = f"{m.description} [simplify]"
        m.simplification = d.simplification
        m.extra["keep_rule"] = _rule_record(d)
        if first is not None and first.val_bpb is not None:
            self.floor_pool([first.extra.get("run_val_bpb", first.val_bpb), val])
        if d.status == "keep" and d.runs > 1:  # the row carries what the decision used: the mean of the runs
            m.description = f"{m.description} [mean of {d.runs} runs]"
            self._record(e, "keep", d.mean, result.memory_gb, d.reason, runs_val=val)
            return
        self._record(e, d.status, val, result.memory_gb, d.reason)

    def _confirm_elsewhere(self, e: Exp, val: float, result: TrainResult, why: str) -> None:
        """It beat the best it started from, but another run was kept meanwhile: its change goes onto the new
        best and that combination trains first (a confirmation run) before anything can be kept."""
        m = e.meta
        c = self._queue_on_best(m, e.train_py or "")
        if c is None:
            self._record(e, "discard", val, result.memory_gb,
                         f"{why} on its base, but it does not apply on the new best {self.head[:7]} "
                         f"({self.best_id}); the idea goes back to the agent")
            if m.description:
                control.queue_idea(self.ws, f"Redo on the current train.py (it conflicted): {m.description}")
            return
        self._record(e, "discard", val, result.memory_gb,
                     f"{why} on its base; the best moved to {self.best_id} meanwhile, so the change trains again "
                     f"on it as {c.id}")

    def _queue_on_best(self, m: ExperimentMeta, train_py: str, decided_by: str | None = None) -> Exp | None:
        """A confirmation run of experiment m's change applied onto the current best (3-way), first in line;
        None when the change no longer applies."""
        text = self.rat.merge(self.rat.show_file(m.parent, EDITABLE_FILE) or "",
                              self.rat.show_file(self.head, EDITABLE_FILE) or "", train_py)
        if text is None:
            return None
        c = self._new_exp("confirmation", description=m.description, base=m.parent, confirms=m.id, status="queued",
                          lines_added=m.lines_added, lines_removed=m.lines_removed, idea=m.idea,
                          decided_by=decided_by or m.decided_by)
        c.train_py = text
        c.save()
        (c.dir / "agent.log").write_text(f"confirmation of {m.id}: its change, applied onto the best {self.head[:7]} "
                                         f"({self.best_id}), is trained again; no agent runs.\n", encoding="utf-8")
        m.confirmed_by = c.id
        self.events.emit("experiment_started", c.id, parent=self.head, baseline=False, kind="confirmation",
                         confirms=m.id)
        self.confirm_queue.insert(0, c)
        return c

    # --- the keep rule: upstream's, or beyond the noise band -----------------------------------------
    def _rule(self) -> str:
        if self.cfg.decide == "plain" or self.floor is None:
            return "plain"
        return "noise"

    def _decide(self, e: Exp, val: float, first: ExperimentMeta | None) -> Decision:
        """keep | discard | confirm (run the same commit again with another seed) for a run that measured val;
        first: the earlier run of the same commit, when this run is its repeat."""
        m = e.meta
        if self._rule() == "plain" or m.kind == "baseline":
            return decide(val, m.reference_val_bpb, m.lines_added, m.lines_removed, self.cfg.min_delta,
                          self.cfg.simplify_tolerance)
        first_val = first.extra.get("run_val_bpb", first.val_bpb) if first is not None else None
        runs = (first_val, [val]) if first_val is not None else (val, [])
        return decide_noise(runs[0], m.reference_val_bpb, self.floor.sigma, z=self.cfg.z, min_delta=self.cfg.min_delta,
                            lines_added=m.lines_added, lines_removed=m.lines_removed,
                            simplify_tolerance=self.cfg.simplify_tolerance, confirmations=runs[1],
                            sure_z=CONFIRM_EVERY_WIN if self.cfg.confirm == "wins" else None)

    def _repeat(self, e: Exp, val: float, result: TrainResult, d: Decision) -> None:
        """A win inside (or, with --confirm wins, beyond) the band: the same commit runs again with another seed,
        first in line; the mean of both runs decides."""
        m = e.meta
        c = self._new_exp("confirmation", description=m.description, base=m.base, parent=m.parent, commit=m.commit,
                          confirms=e.id, status="queued", seed=1000 + int(e.id), lines_added=m.lines_added,
                          lines_removed=m.lines_removed, idea=m.idea, reference_val_bpb=m.reference_val_bpb,
                          reference_id=m.reference_id)
        c.meta.extra["repeat_of"] = e.id
        c.train_py = e.train_py
        c.save()
        (c.dir / "agent.log").write_text(f"repeat of {e.id} with seed {c.meta.seed}: the same commit "
                                         f"{str(m.commit)[:7]} is trained again; no agent runs.\n", encoding="utf-8")
        m.confirmed_by = c.id
        m.extra["keep_rule"] = _rule_record(d)
        self.events.emit("experiment_started", c.id, parent=m.parent, baseline=False, kind="confirmation",
                         confirms=e.id, repeat=True)
        self._record(e, "discard", val, result.memory_gb, f"{d.reason} as {c.id}")
        self.confirm_queue.insert(0, c)

    # --- a person overrules --------------------------------------------------------------------------
    def _refuse(self, what: str, why: str) -> None:
        self.log(f"autoresearch: {what} refused: {why}.")
        self.events.emit("overrule_refused", None, action=what, reason=why)

    def _person_keep(self, exp_id: str) -> None:
        """Keep a discarded experiment: at once when it was measured on the current best, else its change goes
        onto the best and is trained first (the branch only moves to measured commits), then kept."""
        m = read_meta(self.ws.experiment_dir(exp_id))
        if m is None or m.status != "discard" or m.val_bpb is None or not m.commit:
            self._refuse(f"keep {exp_id}", f"experiment {exp_id} is not a measured discard")
            return
        if any(x.id == exp_id for x in self._in_flight()):
            self._refuse(f"keep {exp_id}", f"experiment {exp_id} is still in flight")
            return
        train_py = self.rat.show_file(m.commit, EDITABLE_FILE) or ""
        note = f"A person kept experiment {exp_id} ({m.description}), which the engine had discarded."
        self.overrules.append(note)
        self.events.emit("overruled", exp_id, action="keep")
        if m.parent and self._same_train(m.parent, self.head):
            c = self._new_exp("confirmation", description=f"{m.description} [kept by a person]", base=m.parent,
                              parent=m.parent, commit=m.commit, confirms=exp_id, status="recording",
                              decided_by="person", lines_added=m.lines_added, lines_removed=m.lines_removed,
                              reference_val_bpb=self.best_val, reference_id=self.best_id)
            c.train_py = train_py
            (c.dir / "agent.log").write_text(f"a person kept {exp_id}: it was measured on the current best, so it "
                                             "is kept as it was measured; nothing is trained.\n", encoding="utf-8")
            (c.dir / "diff.patch").write_text(self.rat.diff(self.head, m.commit), encoding="utf-8")
            self._record(c, "keep", m.val_bpb, m.memory_gb, f"kept by a person (val_bpb {m.val_bpb:.6f}, the best "
                         f"was {self.best_val:.6f})")
            return
        c = self._queue_on_best(m, train_py, decided_by="person")
        if c is None:
            self._refuse(f"keep {exp_id}", f"its change no longer applies to the best train.py ({self.head[:7]})")
            return
        write_meta(self.ws.experiment_dir(exp_id), m)
        self.log(f"autoresearch: a person keeps {exp_id}: its change is trained on the best as {c.id}, then kept.")

    def _person_revert(self) -> None:
        """Undo the last keep: the branch goes on with the train.py of the best before it (measured there). Runs
        still in flight were started on the reverted best: the ratchet's rule retrains a winner on the new one."""
        m = read_meta(self.ws.experiment_dir(self.best_id)) if self.best_id else None
        if m is None or m.kind == "baseline" or not m.parent or m.reference_val_bpb is None:
            self._refuse("revert", "the best is the baseline; there is no earlier best to go back to")
            return
        prev = m.parent
        text = self.rat.show_file(prev, EDITABLE_FILE) or ""
        r = self._new_exp("revert", description=f"revert {m.id} ({m.description}): back to "
                                                f"{m.reference_id or prev[:7]}", base=self.head, parent=self.head,
                          decided_by="person", status="recording", reference_val_bpb=self.best_val,
                          reference_id=self.best_id)
        r.train_py = text
        r.meta.commit = self.rat.commit_file(self.head, text, f"revert {m.id} (by a person)")
        (r.dir / "agent.log").write_text(f"a person reverted {m.id}: train.py goes back to {prev[:7]}, as measured "
                                         f"there ({m.reference_val_bpb:.6f}); nothing is trained.\n", encoding="utf-8")
        (r.dir / "diff.patch").write_text(self.rat.diff(self.head, r.meta.commit), encoding="utf-8")
        self.overrules.append(f"A person reverted experiment {m.id} ({m.description}); the best is back at "
                              f"{m.reference_id or prev[:7]} (val_bpb {m.reference_val_bpb:.6f}).")
        self.events.emit("overruled", m.id, action="revert")
        self._record(r, "keep", m.reference_val_bpb, m.memory_gb, f"reverted by a person: back to "
                     f"{m.reference_id or prev[:7]}")
        self.best_id = m.reference_id or self.best_id  # its train.log has the curve of this train.py

    # --- the noise floor: K more runs of the best, once per setting ----------------------------------
    def _load_noise(self) -> None:
        from .hardware import nvml_gpus

        gpus = {g["index"]: g["name"] for g in nvml_gpus()}
        self.setting = noise_store.setting(self.ws, [gpus[s.gpu] for s in self.slots if s.gpu in gpus])
        if self.cfg.decide == "plain":
            return
        floor, cal, problem = noise_store.load(self.ws, self.cfg.tag)
        if problem:
            self.log(f"autoresearch: {problem}.")
        st = self.setting
        if floor is not None and remeasure_reason(floor, st.profile, st.time_budget, st.hardware) is None:
            self.floor, self.calibration = floor, cal
            if self.best_id and floor.experiments and floor.experiments[0] == self.best_id:
                self.best_val = floor.mean  # the best is the measured baseline: the mean of its runs
            self._publish_noise()
        elif self.best_val is not None:
            self._maybe_measure_noise(floor)

    def _maybe_measure_noise(self, stored: NoiseFloor | None = None, force: bool = False) -> None:
        """Queue the noise runs (first in line) when sigma is unknown or was measured under another setting."""
        if self.cfg.decide == "plain" or self.noise_pending or self.best_val is None:
            return
        st = self.setting
        k = noise_store.noise_runs(self.cfg.noise_runs, st.profile)
        stored = stored or self.floor
        changed = remeasure_reason(stored, st.profile, st.time_budget, st.hardware) if stored else None
        reason = "asked for" if force else (changed if stored else "no noise floor has been measured yet")
        if k == 0 or reason is None:
            if self.cfg.noise_only:  # `autoresearch noise --runs 0`, or the plain rule: nothing to do
                self.log("autoresearch: no noise runs to make (--noise-runs 0 or --decide plain).")
                self.controls.request_stop()
            return
        # after a change of setting the best's old value is not comparable: all runs are new
        fresh = changed is not None
        runs = k + 1 if fresh else k
        self.noise_plan = {"fresh": fresh, "best_val": self.best_val, "best_id": self.best_id}
        self.events.emit("noise_remeasure", None, reason=reason, runs=runs)
        self.log(f"autoresearch: measuring the noise floor ({reason}): {runs} more run{'s' if runs != 1 else ''} "
                 f"of {self.head[:7]}.")
        desc = self._best_description()
        for i in range(1, runs + 1):
            c = self._new_exp("noise", description=f"noise run {i}/{runs}: {desc} re-run with seed {i}",
                              commit=self.head, parent=self.head, base=self.head, seed=i, status="queued")
            c.meta.extra["noise_of"] = self.best_id
            c.train_py = self.rat.show_file(self.head, EDITABLE_FILE)
            c.save()
            (c.dir / "diff.patch").write_text("", encoding="utf-8")
            (c.dir / "agent.log").write_text(f"noise run: the best train.py ({self.head[:7]}) with seed {i}; no "
                                             "agent runs.\n", encoding="utf-8")
            self.events.emit("experiment_started", c.id, parent=self.head, baseline=False, kind="noise", seed=i)
            self.noise_pending[c.id] = c
            self.confirm_queue.append(c)

    def _noise_run_done(self, e: Exp, val: float | None = None, result: TrainResult | None = None) -> None:
        self.noise_pending.pop(e.id, None)
        if val is not None:
            self.noise_done.append((e, val, int((result.metrics or {}).get("num_steps") or 0)))
        if self.noise_pending:
            return
        plan, done, self.noise_done = self.noise_plan, self.noise_done, []
        vals = [v for _, v, _ in done]
        ids = [x.id for x, _, _ in done]
        steps = [n for _, _, n in done]
        curves = [read_curve(x.dir / "train.log") for x, _, _ in done]
        if not plan["fresh"] and plan["best_id"]:
            vals, ids = [plan["best_val"], *vals], [plan["best_id"], *ids]
            steps = [0, *steps]
            curves = [read_curve(self.ws.experiment_dir(plan["best_id"]) / "train.log"), *curves]
        st = self.setting
        if len(vals) < 2:
            self.log("autoresearch: the noise floor could not be measured (the noise runs crashed); decisions use "
                     "the plain rule until `autoresearch noise` measures it.")
            if self.cfg.noise_only:
                self.controls.request_stop()
            return
        self.floor = measure(vals, st.profile, st.time_budget, st.hardware, experiments=ids, num_steps=steps)
        self.calibration = calibrate([c for c in curves if c])
        noise_store.save(self.ws, self.cfg.tag, self.floor, self.calibration)
        if self.best_commit == self.head or self._same_train(self.best_commit or self.head, self.head):
            self.best_val = self.floor.mean  # the best's value is the mean of its runs from now on
        self.events.emit("noise_measured", None, sigma=self.floor.sigma, runs=self.floor.runs, experiments=ids,
                         best=self.best_val)
        self.log(f"autoresearch: {self.floor.describe()} (mean {self.floor.mean:.6f}).")
        self._publish_noise()
        if self.cfg.noise_only:
            self.controls.request_stop()

    def floor_pool(self, vals: list[float]) -> None:
        """Two runs of one commit (a win and its repeat) are one more sample of the noise: sigma improves."""
        if self.floor is None:
            return
        self.floor = self.floor.pooled_with(vals)
        noise_store.save(self.ws, self.cfg.tag, self.floor, self.calibration)
        self._publish_noise()

    def _publish_noise(self) -> None:
        f = self.floor
        self.state.update_extra(noise={"sigma": f.sigma, "runs": f.runs, "text": f.describe(), "z": self.cfg.z,
                                       "rule": self._rule()} if f else None)

    def _best_description(self) -> str:
        led = ledger.read(self.ws.results_tsv)
        row = next((r for r in reversed(led.rows) if r.status == "keep" and r.commit[:7] == (self.best_commit or
                                                                                             self.head)[:7]), None)
        return row.description if row else "the best"

    # --- early stop: a clear loser against the best run's curve --------------------------------------
    def _monitor(self, e: Exp) -> Monitor | None:
        if not self.cfg.early_stop or e.meta.kind != "proposal" or self.calibration is None or not self.best_id:
            return None
        return Monitor(read_curve(self.ws.experiment_dir(self.best_id) / "train.log"), self.calibration)

    def _watch_output(self, e: Exp, mon: Monitor, data: bytes) -> None:
        """On the run's output thread: feed the monitor; the main loop does the stopping."""
        v = mon.feed_bytes(data)
        if v is None:
            return
        if v.stop and e.early_stop is None:
            e.early_stop = v
            self.inbox.put(("early_stop", e))
        elif v.note and "early_stop_note" not in e.meta.extra:
            e.meta.extra["early_stop_note"] = v.note

    # --- what the agent spends -------------------------------------------------------------------------
    def _load_cost(self) -> None:
        spent = spending(self.ws.experiments_dir, self.cfg.tag)  # this tag's, over every session
        self.cost_usd, self.cost_count, self.cost_estimated = spent.usd, spent.proposals, spent.estimated
        self._publish_cost()

    def _add_cost(self, usage) -> None:
        if usage is None or not usage.cost_usd:
            return
        self.cost_usd += usage.cost_usd
        self.cost_count += 1
        self.cost_estimated |= usage.cost_estimated
        self._publish_cost()
        cap = self.cfg.max_cost
        if cap is not None and self.cost_usd >= cap:
            self._pause_for(f"the agent has spent ${self.cost_usd:.2f}, which reaches --max-cost ${cap:.2f}; paused. "
                            "Start the loop with a higher --max-cost to go on.")

    def _publish_cost(self) -> None:
        self.state.update_extra(cost={"usd": round(self.cost_usd, 4), "estimated": self.cost_estimated,
                                      "max_usd": self.cfg.max_cost, "proposals": self.cost_count})

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

    def _record(self, e: Exp, status: str, val_bpb: float | None, memory_gb: float | None, reason: str | None,
                runs_val: float | None = None) -> None:
        """Intent first: meta says what is about to be recorded, then the row (the commit point), then the
        branch, then meta says it is done. Recovery after kill -9 between any two steps finishes the job."""
        t0 = time.monotonic()
        m = e.meta
        e.phase = "recording"
        keep = status == "keep"
        m.status, m.reason = "recording", reason
        m.extra["decision"] = status
        m.val_bpb = val_bpb
        if runs_val is not None:
            m.extra["run_val_bpb"] = runs_val  # this run's own value; val_bpb is the mean the decision used
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
                self._maybe_measure_noise(force=self.cfg.noise_only)
        m.timings["record_s"] = round(time.monotonic() - t0, 3)
        m.status, m.finished_at = status, time.time()
        m.extra.pop("decision", None)
        e.save()
        faults.point("meta_written")
        self.done += 1
        self.events.emit("experiment_finished", e.id, status=status, val_bpb=val_bpb, memory_gb=memory_gb,
                         commit=commit, description=description, reason=reason, reference=reference,
                         best=self.best_val, kind=m.kind, confirms=m.confirms,
                         slot=(m.slot or {}).get("id"), confidence=(m.extra.get("keep_rule") or {}).get("confidence"),
                         decided_by=m.decided_by, stopped_early=e.early_stop is not None and status == "discard")
        self._publish()
        faults.point("between_experiments")

    def _commit_program_md(self) -> None:
        """Directives a person handed in (or edited in place) are committed on the branch before the next
        proposal; the best's train.py is unchanged, so the new head stands on the same measured result."""
        pending = control.take_program(self.ws)
        if pending is not None:
            self.ws.program_md.write_text(pending, encoding="utf-8")
        if self.ws.program_md.exists() and self.rat.differs_from_head("program.md"):
            blob = self.rat.git("hash-object", "--", str(self.ws.program_md)).strip()
            journal.write(self.ws, journal.Journal(self.branch, self.head, None, None, program_blob=blob))
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


def _rule_record(d: Decision) -> dict:
    """meta.json's keep_rule: what the decision saw (the dashboard's confidence column)."""
    return {"rule": "noise" if d.sigma is not None else "plain", "sigma": d.sigma, "z": d.z, "bar": d.bar,
            "mean": d.mean, "runs": d.runs, "confidence": confidence(d)}


def _commit_message(m: ExperimentMeta) -> str:
    desc = m.description or "(no description)"
    return f"{desc}\n\nautoresearch experiment {m.id}" + (f" (confirms {m.confirms})" if m.confirms else "")


def _size(path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


__all__ = ["Engine", "find_best", "next_experiment_id", "numstat"]
