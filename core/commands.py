"""The engine's CLI commands: run, loop, status, pause, resume, abort, stop, idea (dispatched by core.cli)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

from . import config as config_mod
from . import control, events, ledger
from .errors import UserError
from .lock import lock_held, lock_holder_pid
from .pyconst import read_one as read_constant
from .report import printable
from .status import EngineStatus, read_status, running_engine
from .workspace import Workspace

# --- checks before starting -------------------------------------------------------------------------

def dataset_dir(ws: Workspace) -> tuple[str | None, Path]:
    """(DATASET of constants.py, where prepare.py keeps it); None for an upstream-style workspace."""
    from .training import cache_root
    from .training import dataset_dir as folder_of

    dataset = read_constant(ws.root / "constants.py", "DATASET", None)
    cache = cache_root()
    if not isinstance(dataset, str) or not dataset:
        return None, cache  # an upstream-style workspace: <cache>/data and <cache>/tokenizer
    return dataset, folder_of(dataset, cache)


def check_data(ws: Workspace) -> None:
    """The trainer needs the prepared data and tokenizer: say so before any experiment is spent on it."""
    dataset, d = dataset_dir(ws)
    if dataset is None:
        ok = (d / "tokenizer").is_dir() and any((d / "data").glob("*.parquet"))
    else:
        ok = (d / "tokenizer").is_dir() and any((d / "val").glob("*.parquet"))
    if not ok:
        name = f"dataset {dataset!r}" if dataset else "the dataset"
        raise UserError(f"the data or tokenizer for {name} is missing in {d}; run `autoresearch setup` in the "
                        "workspace first.")


def _preflight(ws: Workspace, data_here: bool = True):
    from .ratchet import Ratchet
    from .recovery import check_head

    if not ws.root.is_dir():
        raise UserError(f"workspace folder {ws.root} does not exist; pass an existing folder with -C.")
    if not ws.train_py.is_file():
        raise UserError(f"there is no train.py in {ws.root}: this is not a workspace; create one with `autoresearch-tui "
                        "--demo` or copy the project's trainer files (program.md, constants.py, prepare.py, train.py) "
                        "here and run `autoresearch setup`.")
    rat = Ratchet(ws.root)
    check_head(rat)
    if lock_held(ws):
        pid = lock_holder_pid(ws)
        raise UserError(f"another engine is already running in this workspace{f' (pid {pid})' if pid else ''}; "
                        "watch it with `autoresearch status` or stop it with `autoresearch stop`.")
    if data_here:  # with Ray the data lives on the nodes: each prepares its own cache on its first run
        check_data(ws)
    return rat


# --- loop and run -----------------------------------------------------------------------------------

def cmd_loop(ws: Workspace, args) -> int:
    """autoresearch loop [--tag T] [--agent A] [--max N] ... [--detach]: run the experiment loop."""
    if not getattr(args, "detach", False):
        from .containment import reexec_without_secrets
        reexec_without_secrets()  # API keys leave this process's exec-time environment (/proc/<pid>/environ)
    cfg = config_mod.resolve(ws, args)
    _preflight(ws, data_here=cfg.executor != "ray")
    from .agents import make_agent

    agent = make_agent(cfg.agent, cfg.agent_config())
    from .executors import make_executor

    executor = make_executor(ws.root, cfg)  # checks --gpus/--slots/--executor before anything is saved
    config_mod.save(ws, cfg)
    if getattr(args, "detach", False):
        from .detach import start_detached
        if getattr(agent, "notice", None):
            print(f"autoresearch: {agent.notice}.", file=sys.stderr)
        executor.close()
        return start_detached(ws, cfg)
    from .engine import Engine
    return Engine(ws, cfg, agent=agent, executor=executor).run()


def cmd_run(ws: Workspace, args) -> int:
    """autoresearch run: train the current train.py once (no git changes) and print val_bpb and peak_vram_mb."""
    from .training import LocalRunner

    if not (ws.root / "train.py").is_file():
        raise UserError(f"there is no train.py in {ws.root}; run this inside a workspace (or pass -C PATH).")
    st = running_engine(ws)
    # "paused" is reported as soon as the command arrives; the current experiment may still be training
    if st and (st.status != "paused" or st.current() is not None or st.phase != "idle"):
        raise UserError(f"an engine is running in this workspace (pid {st.pid}); pause it with "
                        "`autoresearch pause` or stop it before a manual run.")
    check_data(ws)
    try:
        saved = config_mod.load_saved(ws)
    except UserError:
        saved = {}
    timeout = saved.get("timeout") if isinstance(saved.get("timeout"), (int, float)) else None
    runner = LocalRunner(ws.root, timeout=timeout)
    cancel = threading.Event()
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None

    def echo(data: bytes) -> None:
        if out is not None:
            out.write(data)
            out.flush()

    try:
        res = runner.train([ws.run_log], None, cancel=cancel, on_output=echo)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if res.cancelled:
        print("autoresearch: run interrupted.", file=sys.stderr)
        return 130
    if not res.ok:
        print(f"autoresearch: the run crashed ({res.reason}); see {ws.run_log}.", file=sys.stderr)
        return 1
    print("---")
    print(f"val_bpb:      {res.val_bpb:.6f}")
    print(f"peak_vram_mb: {res.peak_vram_mb:.1f}")
    return 0


# --- status and control -----------------------------------------------------------------------------

def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def status_text(ws: Workspace, st: EngineStatus) -> str:
    lines = []
    if st.alive:
        lines.append(f"engine: {st.status} (pid {st.pid}, phase {st.phase}) on {st.branch}, agent {st.agent}")
    else:
        last = f" (last: {st.message})" if st.message else ""
        lines.append(f"engine: stopped{last}")
    now = time.time()
    many = st.alive and (len(st.slots) > 1 or len(st.proposals) > 1 or any(s.node for s in st.slots))
    cur = st.current() if st.alive and not many else None
    if many:  # one line per slot, then the proposals in flight
        for s in st.slots:
            where = s.label + (f" on {s.node}" if s.node and s.node not in s.label else "")
            if s.experiment:
                t = (f", training for {_ago(now - s.training_started_at)}" if s.training_started_at else "")
                lines.append(f"slot {where}: {s.experiment} {s.phase}{t}: {printable(s.description) or '(no description)'}")
            else:
                lines.append(f"slot {where}: free")
        for p in st.proposals:
            lines.append(f"proposal {p.id}: {p.state}" + (f": {printable(p.description)}" if p.description else ""))
    if cur:
        line = f"experiment {cur.id}: {printable(cur.description) or '(proposing)'}"
        if cur.training_started_at:
            line += f", training for {_ago(now - cur.training_started_at)}"
            if cur.time_budget:
                line += f" of a {_ago(cur.time_budget)} budget"
        elif cur.started_at:
            line += f", started {_ago(now - cur.started_at)} ago"
        lines.append(line)
    led = ledger.read(ws.results_tsv)
    best, base = st.best if st.alive else None, led.baseline
    if best:
        line = f"best: val_bpb {best.val_bpb:.6f} ({best.commit[:7]})"
        if base:
            line += f", baseline {base.val_bpb:.6f} ({best.val_bpb - base.val_bpb:+.6f})"
        lines.append(line)
    elif led.best:
        lines.append(f"best in results.tsv: val_bpb {led.best.val_bpb:.6f} ({led.best.commit})")
    extra = st.extra if st.alive else {}
    if isinstance(extra.get("noise"), dict) and extra["noise"].get("text"):
        lines.append(f"decisions: {extra['noise'].get('rule', 'noise')} rule, {printable(str(extra['noise']['text']))}")
    from .meta import spending
    from .report import spending_line
    line = spending_line(spending(ws.experiments_dir), len(led.rows))
    if line:
        lines.append(line)
    rows = led.rows
    kept = sum(r.status == "keep" for r in rows)
    crashed = sum(r.status == "crash" for r in rows)
    ideas = len(control.pending_ideas(ws))
    lines.append(f"results.tsv: {len(rows)} experiments ({kept} kept, {len(rows) - kept - crashed} discarded, "
                 f"{crashed} crashed)" + (f"; {ideas} idea{'s' if ideas != 1 else ''} queued" if ideas else ""))
    if led.bad_lines:
        lines.append(f"warning: {led.warning()}")
    return "\n".join(lines)


def cmd_status(ws: Workspace, args) -> int:
    """autoresearch status [--json]: engine state (a snapshot left by a dead engine reads as stopped)."""
    if not (ws.has_state() or ws.results_tsv.is_file() or ws.train_py.is_file()):
        raise UserError(f"{ws.root} is not an autoresearch workspace (no .autoresearch/, results.tsv or train.py); "
                        "run this inside one or pass it with -C.")
    st = read_status(ws)
    if getattr(args, "json", False):
        print(json.dumps({**st.to_json(), "alive": st.alive}, indent=2, sort_keys=True))
    else:
        print(status_text(ws, st))
    return 0


def _send(ws: Workspace, command: str, done: str) -> int:
    if running_engine(ws) is None:
        raise UserError(f"no engine is running in {ws.root}; start one with `autoresearch loop`.")
    control.send(ws, command)
    print(done)
    return 0


def cmd_pause(ws: Workspace, args) -> int:
    return _send(ws, "pause", "pause requested: the engine holds after the current experiment.")


def cmd_resume(ws: Workspace, args) -> int:
    return _send(ws, "resume", "resume requested.")


def cmd_abort(ws: Workspace, args) -> int:
    exp_id = getattr(args, "id", None)
    if exp_id is None:
        return _send(ws, "abort", "abort requested: the running experiments are killed and recorded as crashes; "
                                  "the engine then holds (resume with `autoresearch resume`).")
    exp_id = exp_id.strip()
    if not exp_id.isdigit():
        raise UserError(f"--id {exp_id!r} is not an experiment id; give its number, e.g. --id 0007.")
    exp_id = exp_id.zfill(4)
    st = running_engine(ws)
    if st is None:
        raise UserError(f"no engine is running in {ws.root}; start one with `autoresearch loop`.")
    live = {s.experiment for s in st.slots if s.experiment} | {p.id for p in st.proposals}
    if exp_id not in live:
        shown = ", ".join(sorted(live)) or "none"
        raise UserError(f"experiment {exp_id} is not in flight (in flight: {shown}); see `autoresearch status`.")
    control.send(ws, "abort", exp_id=exp_id)
    print(f"abort of {exp_id} requested: it is killed and recorded as a crash; the other runs go on.")
    return 0


def cmd_stop(ws: Workspace, args) -> int:
    return _send(ws, "stop", "stop requested: the engine exits after the current experiment.")


def _live(ws: Workspace, what: str) -> EngineStatus:
    st = running_engine(ws)
    if st is None:
        raise UserError(f"no engine is running in {ws.root}; {what} is carried out by the engine: start it with "
                        "`autoresearch loop --detach`, then run this again.")
    return st


def cmd_keep(ws: Workspace, args) -> int:
    """autoresearch keep NNNN: a person keeps a discarded experiment."""
    exp_id = str(args.id).strip()
    if not exp_id.isdigit():
        raise UserError(f"{exp_id!r} is not an experiment id; give its number, e.g. autoresearch keep 0007.")
    exp_id = exp_id.zfill(4)
    from .meta import read_meta
    m = read_meta(ws.experiment_dir(exp_id))
    if m is None:
        raise UserError(f"there is no experiment {exp_id} in {ws.root}; see `autoresearch results`.")
    if m.status != "discard" or m.val_bpb is None:
        raise UserError(f"experiment {exp_id} is {m.status}, not a measured discard; only those can be kept.")
    _live(ws, "a keep")
    control.send(ws, "keep", exp_id=exp_id)
    print(f"keep of {exp_id} requested: measured on the current best it is kept at once, otherwise its change is "
          "trained on the best first (a confirmation run), then kept.")
    return 0


def cmd_revert(ws: Workspace, args) -> int:
    """autoresearch revert: undo the last keep."""
    st = _live(ws, "a revert")
    control.send(ws, "revert")
    best = f" ({st.best.commit[:7]}, val_bpb {st.best.val_bpb:.6f})" if st.best else ""
    print(f"revert requested: the last kept experiment{best} is undone; the branch goes on with the best before it.")
    return 0


def cmd_noise(ws: Workspace, args) -> int:
    """autoresearch noise [--runs K]: measure sigma now (a live engine queues the runs first in line)."""
    runs = getattr(args, "runs", None)
    if runs is not None and runs < 1:
        raise UserError(f"--runs must be at least 1, not {runs}.")
    if running_engine(ws) is not None:
        if runs is not None:
            print("note: the running engine measures with its own --noise-runs; --runs applies to a stopped one.")
        control.send(ws, "noise")
        print("noise measurement requested: the runs go first in the queue; the header shows sigma when done.")
        return 0
    cfg = config_mod.resolve(ws, None)
    cfg.decide = "noise" if cfg.decide == "plain" else cfg.decide
    cfg.noise_runs = runs if runs is not None else cfg.noise_runs
    cfg.noise_only = True
    _preflight(ws)
    from .agents import make_agent
    from .engine import Engine
    from .executors import make_executor

    return Engine(ws, cfg, agent=make_agent("mutate", {}), executor=make_executor(ws.root, cfg)).run()


def cmd_idea(ws: Workspace, args) -> int:
    """autoresearch idea "TEXT": queue an idea; the next proposal takes it."""
    text = " ".join(getattr(args, "text", None) or []).strip()
    if not text:
        raise UserError('the idea is empty; pass its text, e.g. autoresearch idea "try SwiGLU".')
    if not ws.root.is_dir():
        raise UserError(f"workspace folder {ws.root} does not exist; pass an existing folder with -C.")
    control.queue_idea(ws, text)
    events.emit(ws, "idea_queued", None, text=" ".join(text.split()))
    n = len(control.pending_ideas(ws))
    print(f"idea queued ({n} pending); the next proposal takes it.")
    return 0
