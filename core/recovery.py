"""Start-up checks and recovery after kill -9 or power loss: every interrupted experiment is recorded exactly once,
nothing the dead engine started keeps running, and its branch goes back where the recorded rows say it belongs."""

from __future__ import annotations

import os
import shutil
import socket
import time
from typing import Callable

from . import journal, ledger
from .errors import UserError
from .events import EventLog, read_finished
from .meta import ACTIVE, ExperimentMeta, read_meta, write_meta
from .procs import kill_group, pid_alive
from .ratchet import Ratchet, experiment_ref
from .status import EngineStatus
from .validate import PERSON_FILES
from .workspace import Workspace, read_json

INTERRUPTED = "engine interrupted"
RECENT = 200  # only the newest experiment folders can still be undecided (proposals ahead, N slots)


def check_head(rat: Ratchet) -> None:
    rat.head()  # raises a UserError on a repository without commits
    if rat.current_branch() is None:
        raise UserError("HEAD is detached; check out a branch first (e.g. `git checkout main`), then start the "
                        "loop again.")


def check_clean_tree(rat: Ratchet) -> None:
    """Refuse to run over uncommitted work: the engine moves the branch and must never lose a person's edits."""
    dirty = [p for p in rat.tracked_changes() if p not in PERSON_FILES]
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        raise UserError(f"the working tree has uncommitted changes ({shown}); commit or stash them, then start "
                        "the loop again.")


def kill_orphans(ws: Workspace, log: Callable[[str], None]) -> EngineStatus | None:
    """Agents and trainers left running by a dead engine would hold the GPU: stop their process groups.
    Returns the dead engine's last status (None when there is none, or it is alive elsewhere)."""
    st = EngineStatus.from_json(read_json(ws.engine_json, None))
    if st is None or st.hostname not in (None, socket.gethostname()):
        return st
    if pid_alive(st.pid) and st.pid != os.getpid():
        return st  # the engine is alive (the lock says otherwise only in a race); leave its children alone
    for child in st.children():
        if child.start_time is not None and child.alive():
            log(f"autoresearch: stopping process group {child.pid} left running by the interrupted engine.")
            kill_group(child.pid)
    return st


def undecided_experiments(ws: Workspace) -> list[ExperimentMeta]:
    d = ws.experiments_dir
    if not d.is_dir():
        return []
    ids = sorted((p.name for p in d.iterdir() if p.name.isdigit()), key=int)[-RECENT:]
    out = []
    for exp_id in ids:
        meta = read_meta(d / exp_id)
        if meta is not None and (meta.status in ACTIVE or meta.status == "running"):
            out.append(meta)
    return out


def remove_leftovers(ws: Workspace, rat: Ratchet) -> None:
    """Worktrees of proposals, run folders and half-written temp files of the dead engine."""
    wt_root = ws.state_dir / "worktrees"
    for path in rat.worktrees():
        if path.resolve().parent == wt_root.resolve():
            rat.remove_worktree(path)
    if wt_root.is_dir():
        shutil.rmtree(wt_root, ignore_errors=True)
    rat.git("worktree", "prune")
    shutil.rmtree(ws.state_dir / "runs", ignore_errors=True)
    shutil.rmtree(ws.state_dir / "tmp", ignore_errors=True)
    for folder in [ws.state_dir] + ([p for p in ws.experiments_dir.iterdir() if p.is_dir()][-RECENT:]
                                    if ws.experiments_dir.is_dir() else []):
        for p in folder.glob(".*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass


def recover(ws: Workspace, rat: Ratchet, events: EventLog, log: Callable[[str], None], executor=None) -> list[str]:
    """Record every experiment a dead engine left undecided, once; end what it left running; put its branch back
    at the best measured commit. Safe to run again after being interrupted itself."""
    from . import containment

    st = kill_orphans(ws, log)
    containment.kill_orphans(ws.root, log)  # what carries this workspace's run marker, wherever it was re-parented
    if executor is not None:
        executor.cleanup_orphans(log)  # runs elsewhere (Ray nodes)
    remove_leftovers(ws, rat)
    done = []
    for meta in undecided_experiments(ws):
        _recover_one(ws, rat, events, meta)
        log(f"autoresearch: experiment {meta.id} was interrupted; recorded it as a crash ({INTERRUPTED}).")
        done.append(meta.id)
    interrupted = bool(done) or (st is not None and st.status != "stopped")
    if interrupted:
        _restore_branch(ws, rat, log)
        _backfill_events(ws, events)
    return done


def _recover_one(ws: Workspace, rat: Ratchet, events: EventLog, meta: ExperimentMeta) -> None:
    exp_dir = ws.experiment_dir(meta.id)
    parent = meta.parent or meta.base
    if not parent or rat.rev(parent) is None:
        raise UserError(f"experiment {meta.id} was interrupted but its meta.json names no valid parent commit; "
                        f"set its status to crash by hand in {exp_dir / 'meta.json'}, then start again.")
    row = _recorded_row(ws, meta.commit, meta.tsv_offset)
    if row is not None:
        status, reason = row.status, meta.reason or "recorded before the interruption"
        commit = meta.commit
    else:
        status, reason = "crash", INTERRUPTED
        commit = meta.commit
        if not commit:  # interrupted while proposing: the agent's worktree is gone with its edit
            commit = rat.snapshot(meta.description or "(interrupted proposal)", parent, [])
            meta.commit = commit
            write_meta(exp_dir, meta)  # the commit first: a second interruption cannot duplicate the row
        rat.set_ref(experiment_ref(meta.id), commit)
        desc = meta.description or "(interrupted proposal)"
        ledger.append(ws.results_tsv, commit, 0.0, 0.0, "crash", f"{desc} ({INTERRUPTED})")
    meta.status, meta.reason = status, reason
    meta.finished_at = meta.finished_at or time.time()
    meta.extra.pop("decision", None)
    if status == "crash":
        meta.val_bpb = meta.memory_gb = None
    write_meta(exp_dir, meta)
    events.emit("recovered", meta.id, reason=reason, commit=commit)
    events.emit("experiment_finished", meta.id, status=status, val_bpb=meta.val_bpb, memory_gb=meta.memory_gb,
                commit=commit, description=meta.description, reason=reason,
                reference=meta.reference_val_bpb, kind=meta.kind)


def _backfill_events(ws: Workspace, events: EventLog) -> None:
    """An experiment whose record was complete when the engine died just before announcing it: the event log
    gets its experiment_finished (the dashboard rebuilds its view from the events)."""
    said = {f.exp_id for f in read_finished(ws.events)}
    d = ws.experiments_dir
    for exp_id in sorted((p.name for p in d.iterdir() if p.name.isdigit()), key=int)[-RECENT:]:
        meta = read_meta(d / exp_id)
        if meta is not None and meta.finished and exp_id not in said:
            events.emit("experiment_finished", exp_id, status=meta.status, val_bpb=meta.val_bpb,
                        memory_gb=meta.memory_gb, commit=meta.commit, description=meta.description,
                        reason=meta.reason, reference=meta.reference_val_bpb, kind=meta.kind)


def _restore_branch(ws: Workspace, rat: Ratchet, log: Callable[[str], None]) -> None:
    """The journal says where the branch was and where it was about to move; the rows decide which one holds."""
    j = journal.read(ws)
    if j is None or rat.rev("refs/heads/" + j.branch) is None:
        return
    target = j.head
    if j.next and j.next_id:
        row = _row_of(ws, j.next)
        if row is not None and row.status == "keep":
            target = j.next
    elif j.next:  # a program.md commit: it stands on the same measured train.py
        if rat.rev(j.next) and rat.blob(j.next) == rat.blob(j.head):
            target = j.next
    if rat.rev(target) is None:
        return
    current = rat.rev("refs/heads/" + j.branch)
    if j.program_blob and current and _program_commit_on(rat, current, target, j.program_blob):
        target = current  # killed after committing a person's directives: they stay (the pending file is gone)
    if current == target:
        return
    if rat.current_branch() == j.branch:
        try:
            rat.reset_keep(target)
        except Exception:
            raise UserError(f"the branch {j.branch} must go back to {target[:7]} (its best measured commit), but git "
                            "refuses without losing local changes; commit or revert them, then start again.") from None
    else:
        rat.move_branch(j.branch, target, current)
    log(f"autoresearch: the branch {j.branch} was at {current[:7]}, which was never measured; it is back at "
        f"{target[:7]}.")
    journal.write(ws, journal.Journal(j.branch, target))


def _program_commit_on(rat: Ratchet, commit: str, base: str, blob: str) -> bool:
    """commit is the engine's commit of a person's directives: a child of base that changes program.md only,
    to the text the journal announced (an agent's own commit of a program.md is undone like any other)."""
    try:
        if rat.rev(commit + "^") != rat.rev(base):
            return False
        return (rat.git("diff", "--name-only", base, commit).split() == ["program.md"]
                and rat.git("rev-parse", f"{commit}:program.md").strip() == blob)
    except Exception:
        return False


def _recorded_row(ws: Workspace, commit: str | None, offset) -> ledger.Row | None:
    """The results.tsv row of this commit if it was appended before the interruption: only rows after the
    file size noted when the experiment started count (an older row may carry the same commit)."""
    if not commit:
        return None
    try:
        with open(ws.results_tsv, "rb") as f:
            if isinstance(offset, int) and offset > 0:
                f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for r in reversed(ledger.parse(text).rows):
        if r.commit[:7] == commit[:7]:
            return r
    return None


def _row_of(ws: Workspace, commit: str) -> ledger.Row | None:
    for r in reversed(ledger.read(ws.results_tsv).rows):
        if r.commit[:7] == commit[:7]:
            return r
    return None
