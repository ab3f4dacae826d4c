"""One proposal: the agent runs in its own git worktree at the best commit of that moment, then its change is
checked (only train.py, it compiles, integrity), cleaned up after, and handed back as data.

This runs on a worker thread, several at once; it never touches the person's working tree or the branch.
Git commands that change state shared by every worktree (worktree add/remove, refs) hold `git_lock`.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import containment
from . import description as describe
from .errors import UserError
from .meta import AgentUsage
from .ratchet import Ratchet, numstat
from .runner import run
from .validate import check_changes, check_source
from .workspace import EDITABLE_FILE, STATE_DIR, Workspace, read_json

LEFTOVER_REF_PREFIX = "refs/autoresearch/leftovers/"


@dataclass
class ProposalOutcome:
    kind: str  # ready | empty | rejected | agent_error | cancelled
    reason: str | None = None
    description: str = ""
    train_py: str | None = None  # the proposed train.py (ready)
    patch: str = ""  # its diff against the base
    lines_added: int = 0
    lines_removed: int = 0
    snapshot: str | None = None  # a commit of the proposal on its base (browsable under the experiment ref)
    usage: AgentUsage = field(default_factory=AgentUsage)
    tail: list[str] = field(default_factory=list)
    error_kind: str | None = None  # auth | rate_limit | ... (the agent's own classification)
    propose_s: float = 0.0
    validate_s: float = 0.0


@dataclass
class ProposalJob:
    """What one proposal needs (built by the engine on its main thread)."""

    ws: Workspace
    exp_id: str
    exp_dir: Path
    base: str
    prompt: str
    agent: object  # core.agents.Agent
    agent_timeout: float
    cancel: threading.Event
    git_lock: threading.Lock
    on_child: Callable[[int | None], None] = lambda pid: None
    cancel_reason: Callable[[], str | None] = lambda: None


def worktree_dir(ws: Workspace, exp_id: str) -> Path:
    return ws.state_dir / "worktrees" / exp_id


def make_proposal(job: ProposalJob) -> ProposalOutcome:
    """Run the agent once in a fresh worktree and turn what it did into a ProposalOutcome (never raises for
    what an agent can do; the worktree is always removed)."""
    ws, rat = job.ws, Ratchet(job.ws.root)
    wt = worktree_dir(ws, job.exp_id)
    with job.git_lock:
        if wt.exists():
            rat.remove_worktree(wt)
        wt.parent.mkdir(parents=True, exist_ok=True)
        rat.add_worktree(wt, job.base)
        branches_before = rat.refs("refs/heads/")
    try:
        out = _propose_in(job, wt)
    finally:
        with job.git_lock:
            left = _leftovers(rat, ws, job.exp_id, branches_before)
            rat.remove_worktree(wt)
    if left:
        note = f"the agent left {', '.join(left)} behind (moved under {LEFTOVER_REF_PREFIX}{job.exp_id}/)"
        if out.kind == "ready":
            out.kind, out.reason = "rejected", f"rejected: {note}"
        elif out.reason:
            out.reason += f"; {note}"
        else:
            out.reason = note
    return out


def _propose_in(job: ProposalJob, wt: Path) -> ProposalOutcome:
    from .agents.base import AgentContext, agent_env

    t0 = time.monotonic()
    exp_dir = job.exp_dir
    prompt_file = exp_dir / "prompt.md"
    prompt_file.write_text(job.prompt, encoding="utf-8")
    proposal_file, usage_file = exp_dir / "proposal.txt", exp_dir / "usage.json"
    ctx = AgentContext(workspace=Workspace(wt), exp_id=job.exp_id, prompt=job.prompt, prompt_file=prompt_file,
                       proposal_file=proposal_file, usage_file=usage_file, log_file=exp_dir / "agent.log",
                       timeout=job.agent_timeout)
    agent_error = None
    res = None
    try:
        argv = job.agent.command(ctx)
        env = dict(os.environ)
        env.update(job.agent.env(ctx))
        env.update(agent_env(ctx))
        env["AUTORESEARCH_WORKSPACE"] = str(job.ws.root)  # for built-in agents that read the history (mutate)
        # the run marker: after a kill -9 of the engine, recovery finds the agent and what it started
        env[containment.RUN_ENV] = containment.run_marker(containment.workspace_key(job.ws.root), f"agent-{job.exp_id}")
    except UserError as e:
        agent_error = str(e)
    else:
        res = run(argv, cwd=wt, env=env, logs=[ctx.log_file], timeout=job.agent_timeout, cancel=job.cancel,
                  on_start=job.on_child)
        job.on_child(None)
    usage = read_usage(usage_file, getattr(job.agent, "name", "agent"), getattr(job.agent, "model", None))
    if res is not None and agent_error is None:
        if res.error:
            agent_error = res.error
        elif res.timed_out:
            agent_error = f"agent timed out after {job.agent_timeout:.0f} s"
        elif res.returncode != 0 and not res.cancelled:
            if usage.error:  # the agent's own sentence (bad key, rate limit...), not the last line it printed
                agent_error = usage.error
            else:
                last = next((ln for ln in reversed(res.tail) if ln.strip()), "")
                agent_error = f"agent exited with code {res.returncode}" + (f": {last.strip()[:160]}" if last else "")
    propose_s = time.monotonic() - t0
    t1 = time.monotonic()
    for home in exp_dir.glob("*-home-*"):  # a CLI wrapper's private config folder, left when it was killed
        shutil.rmtree(home, ignore_errors=True)
    out = _validate(job, wt, res.tail if res else [], proposal_file)
    out.usage, out.propose_s, out.validate_s = usage, propose_s, time.monotonic() - t1
    if res is not None and res.cancelled:
        out.kind, out.reason = "cancelled", job.cancel_reason() or "cancelled"
    elif agent_error:
        out.kind, out.reason, out.error_kind = "agent_error", agent_error, usage.error_kind
        # an agent's error output is never its description: only what it handed in, else nothing
        out.description = describe.of_proposal(proposal_file, [], 0, 0) if _size(proposal_file) \
            else "(agent failed)"
    return out


def _validate(job: ProposalJob, wt: Path, tail: list[str], proposal_file: Path) -> ProposalOutcome:
    """What the agent left in its worktree, judged by the engine's rules (not the prompt's)."""
    wrat = Ratchet(wt)
    if wrat.head() != job.base:  # the agent committed, or checked out something else: undo, keep its edits
        try:
            wrat.git("reset", "-q", "--soft", job.base)
            wrat.git("reset", "-q")
        except Exception:
            wrat.git("checkout", "-q", "-f", "--detach", job.base)
    entries = wrat.status()
    verdict = check_changes(entries, set())
    reason = verdict.reason if verdict.status == "rejected" else None
    program_changed = wrat.differs_from_head("program.md")
    if program_changed:  # the person's file: the agent's text is kept aside, never committed
        saved = job.exp_dir / "program.md.proposed"
        if (wt / "program.md").exists():
            saved.write_bytes((wt / "program.md").read_bytes())
        reason = f"rejected: changed program.md (its text is kept in {saved.name})"
    if verdict.status == "empty" and not program_changed:
        desc = describe.of_proposal(proposal_file, tail, 0, 0) if _size(proposal_file) or tail else "(no change)"
        return ProposalOutcome("empty", "the agent changed nothing", desc, tail=tail)
    source = None
    if reason is None:
        try:
            source = (wt / EDITABLE_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = f"rejected: {EDITABLE_FILE} cannot be read ({e})"
    if reason is None:
        reason = check_source(source)
    patch = wrat.diff(job.base)
    added, removed = numstat(patch)
    desc = describe.of_proposal(proposal_file, tail, added, removed)
    if patch:
        (job.exp_dir / "diff.patch").write_text(patch, encoding="utf-8")
    paths = [p for p in verdict.tracked + verdict.new_files if not _too_big(wt / p)]
    if program_changed and "program.md" not in paths:
        paths.append("program.md")
    snapshot = wrat.snapshot(desc, job.base, paths)
    if reason is not None:
        if verdict.new_files:  # what the agent created is kept for the person, out of git
            _keep_files(wt, verdict.new_files, job.exp_dir / "created-files")
        return ProposalOutcome("rejected", reason, desc, patch=patch, lines_added=added, lines_removed=removed,
                               snapshot=snapshot, tail=tail)
    return ProposalOutcome("ready", None, desc, train_py=source, patch=patch, lines_added=added,
                           lines_removed=removed, snapshot=snapshot, tail=tail)


def _leftovers(rat: Ratchet, ws: Workspace, exp_id: str, branches_before: dict[str, str]) -> list[str]:
    """Branches and worktrees the agent created (they would outlive the proposal): branches are moved under
    refs/autoresearch/leftovers/<id>/ (nothing is lost), worktrees outside the engine's folder removed."""
    left = []
    for ref, sha in rat.refs("refs/heads/").items():
        if ref not in branches_before:
            name = ref[len("refs/heads/"):]
            rat.set_ref(f"{LEFTOVER_REF_PREFIX}{exp_id}/{name}", sha)
            rat.delete_ref(ref)
            left.append(f"branch {name}")
    ours = (ws.state_dir / "worktrees").resolve()
    for path in rat.worktrees():
        if path.resolve().parent != ours:
            rat.remove_worktree(path)
            left.append(f"worktree {path}")
    nested = ours / exp_id / STATE_DIR
    if nested.exists():  # e.g. a tool's own worktree folder inside the agent's checkout
        shutil.rmtree(nested, ignore_errors=True)
    return left


def read_usage(path: Path, name: str, model: str | None) -> AgentUsage:
    """$AUTORESEARCH_USAGE_FILE as the agent wrote it (a missing or broken file: only the agent's name)."""
    usage = AgentUsage.from_json(read_json(path, None))
    usage.name = name
    if usage.model is None:
        usage.model = model
    return usage


def _keep_files(root: Path, rel_paths: list[str], dest: Path) -> None:
    for rel in rel_paths:
        src = root / rel
        try:
            if src.is_file() and not src.is_symlink() and not _too_big(src):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
        except OSError:
            continue


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
