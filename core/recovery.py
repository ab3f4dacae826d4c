"""Start-up checks and recovery after kill -9 or power loss: the interrupted experiment is recorded exactly once."""

from __future__ import annotations

import os
import socket
import time
from typing import Callable

from . import ledger
from .errors import UserError
from .events import EventLog
from .procs import kill_group, pid_alive
from .ratchet import Ratchet, experiment_ref
from .status import EngineStatus
from .validate import PERSON_FILES
from .workspace import EDITABLE_FILE, Workspace, atomic_write_json, read_json

INTERRUPTED = "engine interrupted"
RECENT = 20  # only the newest experiment folders can still be undecided (one engine per workspace)


def check_head(rat: Ratchet) -> None:
    rat.head()  # raises a UserError on a repository without commits
    if rat.current_branch() is None:
        raise UserError("HEAD is detached; check out a branch first (e.g. `git checkout main`), then start the "
                        "loop again.")


def check_clean_tree(rat: Ratchet) -> None:
    """Refuse to run over uncommitted work: the engine resets train.py and must never lose a person's edits."""
    dirty = [p for p in rat.tracked_changes() if p not in PERSON_FILES]
    if dirty:
        shown = ", ".join(dirty[:5]) + (f" and {len(dirty) - 5} more" if len(dirty) > 5 else "")
        raise UserError(f"the working tree has uncommitted changes ({shown}); commit or stash them, then start "
                        "the loop again.")


def kill_orphan(ws: Workspace, log: Callable[[str], None]) -> None:
    """A trainer or agent left running by a dead engine would hold the GPU: stop its process group."""
    st = EngineStatus.from_json(read_json(ws.engine_json, None))
    if st is None or st.hostname not in (None, socket.gethostname()):
        return
    if pid_alive(st.pid) and st.pid != os.getpid():
        return  # the engine is alive (the lock says otherwise only in a race); leave its children alone
    for child in st.children():
        if child.start_time is not None and child.alive():
            log(f"autoresearch: stopping process group {child.pid} left running by the interrupted engine.")
            kill_group(child.pid)


def undecided_experiments(ws: Workspace) -> list[tuple[str, dict]]:
    d = ws.experiments_dir
    if not d.is_dir():
        return []
    ids = sorted((p.name for p in d.iterdir() if p.name.isdigit()), key=int)[-RECENT:]
    out = []
    for exp_id in ids:
        meta = read_json(d / exp_id / "meta.json", None)
        if isinstance(meta, dict) and meta.get("status") == "running":
            out.append((exp_id, meta))
    return out


def recover(ws: Workspace, rat: Ratchet, events: EventLog, log: Callable[[str], None]) -> list[str]:
    """Record every experiment a dead engine left undecided, once, and put its branch back at the best commit."""
    kill_orphan(ws, log)
    done = []
    for exp_id, meta in undecided_experiments(ws):
        _recover_one(ws, rat, events, exp_id, meta)
        log(f"autoresearch: experiment {exp_id} was interrupted; recorded it as a crash ({INTERRUPTED}).")
        done.append(exp_id)
    return done


def _recover_one(ws: Workspace, rat: Ratchet, events: EventLog, exp_id: str, meta: dict) -> None:
    meta_path = ws.experiment_dir(exp_id) / "meta.json"
    branch = meta.get("branch") or ("autoresearch/" + str(meta.get("tag")))
    parent = meta.get("parent")
    commit = meta.get("commit")
    on_branch = rat.current_branch() == branch
    if not parent or rat.rev(parent) is None:
        raise UserError(f"experiment {exp_id} was interrupted but its meta.json names no valid parent commit; "
                        f"set its status to crash by hand in {meta_path}, then start again.")

    row = _recorded_row(ws, commit, meta.get("tsv_offset"))
    if row is not None:
        status, reason = row.status, meta.get("reason") or "recorded before the interruption"
    else:
        status, reason = "crash", INTERRUPTED
        train_dirty = False
        if not commit:
            # interrupted while the agent was proposing: the working tree may hold its edit of train.py
            paths: list[str] = []
            if on_branch and rat.head() == parent:
                dirty = [p for p in rat.tracked_changes() if p not in PERSON_FILES]
                others = [p for p in dirty if p != EDITABLE_FILE]
                if others:
                    raise UserError(f"experiment {exp_id} was interrupted while the agent was proposing and "
                                    f"{', '.join(others[:5])} have uncommitted changes the engine cannot vouch "
                                    "for; inspect them, commit or revert them (`git checkout -- FILE`), then "
                                    "start again.")
                paths = dirty
                train_dirty = bool(dirty)
                if rat.differs_from_head("program.md") and (ws.root / "program.md").exists():
                    # the agent may have written it: keep the text aside and restore the committed directives,
                    # so that it is not committed as the person's edit
                    exp_dir = meta_path.parent
                    (exp_dir / "program.md.proposed").write_bytes((ws.root / "program.md").read_bytes())
                    rat.restore(["program.md"], [])
            commit = rat.snapshot(meta.get("description") or "(interrupted proposal)", parent, paths)
            meta["commit"] = commit
            atomic_write_json(meta_path, meta)  # the commit first: a second interruption cannot duplicate the row
        rat.set_ref(experiment_ref(exp_id), commit)
        desc = meta.get("description") or "(interrupted proposal)"
        ledger.append(ws.results_tsv, commit, 0.0, 0.0, "crash", f"{desc} ({INTERRUPTED})")
        if train_dirty:
            rat.restore([EDITABLE_FILE], [])

    best = commit if status == "keep" else parent
    if on_branch:
        if rat.head() == commit and commit != best:
            try:
                rat.reset_keep(best)
            except Exception:
                raise UserError(f"experiment {exp_id} was interrupted, but the branch {branch} could not be moved "
                                f"back to {best[:7]} without losing local changes; commit or revert them, then "
                                "start again.") from None
    elif rat.rev("refs/heads/" + branch) == commit and commit != best:
        rat.move_branch(branch, best, commit)

    meta.update(status=status, reason=reason, finished_at=meta.get("finished_at") or time.time())
    if status == "crash":
        meta.update(val_bpb=None, memory_gb=None)
    atomic_write_json(meta_path, meta)
    events.emit("recovered", exp_id, reason=reason, commit=commit)
    events.emit("experiment_finished", exp_id, status=status, val_bpb=meta.get("val_bpb"),
                memory_gb=meta.get("memory_gb"), commit=commit, description=meta.get("description"), reason=reason)


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
