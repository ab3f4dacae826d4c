"""The prompt of one proposal: program.md, the results so far, the best, the last crash, a queued idea, the contract."""

from __future__ import annotations

from .ledger import Finished, Ledger, Row, annotate
from .workspace import Workspace

MAX_RECENT_ROWS = 50  # long histories: the last 50 rows plus every kept row
MAX_PROGRAM_CHARS = 40_000
MAX_CRASH_LINES = 50
MAX_CRASH_CHARS = 6_000
MAX_IN_FLIGHT = 16

CONTRACT = """\
## Your task and the rules
1. Read train.py (you may also read program.md, prepare.py and constants.py; they are read-only).
2. Propose ONE experiment: a focused change to train.py that you expect to lower val_bpb within the
   fixed time budget, following the research directives above and learning from the results so far.
   Do not repeat an experiment that is already in the table.
3. Edit ONLY train.py. A change to any other file (prepare.py, constants.py, program.md, pyproject.toml,
   uv.lock, new files) makes the engine reject the experiment before it runs. Use only the packages that
   are already installed.
4. Do NOT run training, tests, benchmarks or package installs: the engine commits your change, trains it
   for the time budget, measures val_bpb and keeps or reverts it after you finish.
{hand_in}
"""

HAND_IN = {
    "file": """5. When done, write a one-line description of the change (under 100 characters, no tabs, e.g.
   "MATRIX_LR 0.04 -> 0.05" or "SwiGLU MLP instead of ReLU^2") to the file named by the environment
   variable $AUTORESEARCH_PROPOSAL_FILE. If you cannot write that file, end your final message with a
   line `DESCRIPTION: <one line>`.""",
    "final_message": """5. You can read the files of your working directory and edit train.py; nothing else can be
   written. When done, end your final message with one line `DESCRIPTION: <one line, under 100
   characters, no tabs>` describing the change (e.g. "MATRIX_LR 0.04 -> 0.05" or "SwiGLU MLP instead of
   ReLU^2"); the engine records it.""",
}


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside text, so untrusted text cannot close it early."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def _best_fields(best) -> tuple[str | None, float | None, str | None]:
    """best may be a ledger Row, a dict {commit, val_bpb[, description]} or None."""
    if best is None:
        return None, None, None
    if isinstance(best, Row):
        return best.commit, best.val_bpb, best.description
    if isinstance(best, dict):
        return best.get("commit"), best.get("val_bpb"), best.get("description")
    return getattr(best, "commit", None), getattr(best, "val_bpb", None), getattr(best, "description", None)


def results_table(ledger: Ledger, max_recent: int = MAX_RECENT_ROWS, finished: list[Finished] = ()) -> str:
    """results.tsv as a compact table with a Δ column (against the best each run was decided on, see
    core.ledger.annotate); long histories keep the last rows and all kept rows."""
    rows = ledger.rows
    if not rows:
        return "(no experiments yet: the first one should usually be the unchanged baseline)"
    shown = set(range(max(0, len(rows) - max_recent), len(rows)))
    shown |= {i for i, r in enumerate(rows) if r.status == "keep"}
    entries = annotate(rows, finished)
    out = ["#    commit   val_bpb   delta      mem_gb  status   description"]
    skipped = 0
    for i, r in enumerate(rows):
        if i not in shown:
            skipped += 1
            continue
        if skipped:
            out.append(f"     ... {skipped} earlier non-kept experiment{'s' if skipped != 1 else ''} omitted")
            skipped = 0
        e = entries[i]
        if e.val_bpb is None:
            bpb, delta = "-", ""
        else:
            bpb = f"{r.val_bpb:.6f}"
            delta = f"{e.delta:+.6f}" if e.delta is not None else "baseline"
        out.append(f"{i + 1:<4} {r.commit[:7]:<8} {bpb:<9} {delta:<10} {r.memory_gb:<7.1f} {r.status:<8} "
                   f"{' '.join(r.description.split())}")
    return "\n".join(out)


def build_prompt(ws: Workspace, ledger: Ledger, best, crash_tail: str | None, idea: str | None,
                 finished: list[Finished] = (), in_flight: list[str] = (), hand_in: str = "file",
                 person_notes: list[str] = ()) -> str:
    """The whole prompt as Markdown (the engine writes it to $AUTORESEARCH_PROMPT_FILE)."""
    parts = ["# autoresearch: propose the next experiment",
             "You are the research agent of an autonomous ML research loop. The engine runs train.py for a "
             "fixed wall-clock budget and measures val_bpb (validation bits per byte, LOWER is better). "
             "A change is kept only if it lowers val_bpb; otherwise it is reverted."]

    try:
        program = ws.program_md.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        program = ""
    if len(program) > MAX_PROGRAM_CHARS:
        program = program[:MAX_PROGRAM_CHARS] + "\n[... program.md truncated]"
    parts.append("## Research directives (program.md)\n\n" + (program or "(program.md is empty or missing)"))

    rows = ledger.rows
    n = len(rows)
    kept = sum(r.status == "keep" for r in rows)
    crashed = sum(r.status == "crash" for r in rows)
    summary = f"{n} experiment{'s' if n != 1 else ''} so far: {kept} kept, {n - kept - crashed} discarded, {crashed} crashed."
    if ledger.baseline is not None:
        summary += f" Baseline val_bpb {ledger.baseline.val_bpb:.6f}."
    parts.append("## Results so far (results.tsv; delta is against the best at that time)\n\n" + summary
                 + "\n\n" + "```\n" + results_table(ledger, finished=finished) + "\n```")

    commit, bpb, desc = _best_fields(best)
    if commit or bpb:
        line = f"train.py in the workspace is the current best: commit {str(commit or '?')[:7]}"
        if isinstance(bpb, (int, float)) and bpb > 0:
            line += f", val_bpb {bpb:.6f}"
        if desc:
            line += f" ({' '.join(str(desc).split())})"
        parts.append("## Current best\n\n" + line + ". Your change is measured against it.")
    else:
        parts.append("## Current best\n\nNo result yet: train.py is the starting point.")

    if crash_tail and crash_tail.strip():
        lines = crash_tail.rstrip().splitlines()[-MAX_CRASH_LINES:]
        tail = "\n".join(lines)[-MAX_CRASH_CHARS:]
        fence = _fence(tail)
        parts.append("## The last experiment crashed\n\nThe tail of its output is below. If the cause was your "
                     "change, do not repeat it; if a fix is obvious, you may try the idea again, fixed.\n\n"
                     f"{fence}text\n{tail}\n{fence}")

    if person_notes:
        parts.append("## Decisions the person running this session made\n\n"
                     + "\n".join(f"- {' '.join(n.split())[:300]}" for n in person_notes)
                     + "\n\nTake them into account: they override the engine's keep rule.")

    shown = [" ".join(t.split())[:200] for t in in_flight if t and t.strip()][:MAX_IN_FLIGHT]
    if shown:
        parts.append("## Experiments in flight\n\nThese are being trained or proposed right now, in other slots. Do "
                     "not propose the same thing; pick a different idea.\n\n" + "\n".join(f"- {t}" for t in shown))

    if idea and idea.strip():
        text = " ".join(idea.split())
        parts.append("## Request from the person running this session\n\n"
                     "The person watching this run queued the idea below for THIS experiment. Try it (within "
                     "the rules further down) unless it is impossible; then say why in your description.\n\n"
                     + "\n".join("> " + ln for ln in text.splitlines()))

    parts.append(CONTRACT.format(hand_in=HAND_IN.get(hand_in, HAND_IN["file"])).rstrip())
    return "\n\n".join(parts) + "\n"
