"""The offline mutate agent: one constant line per proposal, never a repeated change, deterministic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from core import ledger
from core.agents import mutate

# The constants block of the real trainer (upstream's names and values), plus code that must stay untouched.
TRAIN_PY = textwrap.dedent("""\
    \"\"\"GPT pretraining script (the file the agent edits).\"\"\"
    import os
    from prepare import MAX_SEQ_LEN

    # --- hyperparameters ---
    DEPTH = 8                  # number of transformer layers
    ASPECT_RATIO = 64          # model_dim = DEPTH * ASPECT_RATIO (rounded up to HEAD_DIM)
    HEAD_DIM = 128             # attention head size
    WINDOW_PATTERN = "SSSL"    # S = half-context sliding window, L = full; last layer always L
    TOTAL_BATCH_SIZE = 2**19   # tokens per optimizer step
    DEVICE_BATCH_SIZE = 128    # rows per micro-batch (reduce if OOM)
    EMBEDDING_LR = 0.6         # AdamW lr — token embeddings
    UNEMBEDDING_LR = 0.004     # AdamW lr — lm_head
    MATRIX_LR = 0.04           # Muon lr — 2-D matrices
    SCALAR_LR = 0.5            # AdamW lr — per-layer scalars
    WEIGHT_DECAY = 0.2         # cautious weight decay, decays linearly to 0
    ADAM_BETAS = (0.8, 0.95)   # AdamW betas
    MUON_MOMENTUM = (0.85, 0.95, 300)  # start, end, ramp steps
    WARMUP_RATIO = 0.0         # fraction of the budget for lr warm-up
    WARMDOWN_RATIO = 0.5       # fraction of the budget for linear lr warm-down
    FINAL_LR_FRAC = 0.0        # lr multiplier at the end of warm-down

    def model_dim(depth=DEPTH):
        DEPTH = 3  # a local name: never a candidate
        return depth * ASPECT_RATIO
""")
CONSTANTS_PY = "MAX_SEQ_LEN = 2048\nTIME_BUDGET = 300\n"


@pytest.fixture
def ws(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "train.py").write_text(TRAIN_PY)
    (root / "constants.py").write_text(CONSTANTS_PY)
    return root


def run_mutate(root, seed="0", proposal=None):
    env = dict(os.environ, AUTORESEARCH_MUTATE_SEED=str(seed))
    if proposal:
        env["AUTORESEARCH_PROPOSAL_FILE"] = str(proposal)
    return subprocess.run([sys.executable, "-m", "core.agents.mutate"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    """(old line, new line) pairs of a diff; one pair means exactly one line was rewritten."""
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b) if x != y]


def test_thirty_proposals_are_distinct_and_touch_one_line(ws, tmp_path):
    """Grow a history like the engine would (kept changes stay, discarded ones are reverted)."""
    tried = set()
    results = ws / "results.tsv"
    ledger.append(results, "a000000", 1.0, 40.0, "keep", "baseline")
    for i in range(30):
        before = (ws / "train.py").read_text()
        proposal = tmp_path / f"proposal{i}.txt"
        proc = run_mutate(ws, seed="42", proposal=proposal)
        assert proc.returncode == 0, proc.stderr
        after = (ws / "train.py").read_text()
        diff = changed_lines(before, after)
        assert len(diff) == 1, diff
        old, new = diff[0]
        # only the value changed: the name, the spacing and the trailing comment are byte-identical
        name = old.split("=")[0].strip()
        assert new.split("=")[0] == old.split("=")[0]
        assert old.split("#", 1)[1] == new.split("#", 1)[1]
        desc = proposal.read_text().strip()
        assert desc.startswith(name + " ") and proc.stdout.strip() == desc
        key = mutate.parse_description(desc)
        assert key is not None and key not in tried, f"repeated change {desc}"
        tried.add(key)
        compile(after, "train.py", "exec")
        # every third proposal is "kept", the others are reverted (the engine's ratchet)
        status = "keep" if i % 3 == 0 else ("crash" if i % 7 == 0 else "discard")
        ledger.append(results, f"{i + 1:07x}", 0.99 - i * 1e-4, 40.0, status, desc)
        if status != "keep":
            (ws / "train.py").write_text(before)
    assert len(tried) == 30
    assert len({k[0] for k in tried}) >= 6  # it explores many constants, not one


def test_history_in_meta_json_counts_as_tried(ws):
    first = mutate.propose(ws, seed="1")[1]
    exp = ws / ".autoresearch" / "experiments" / "0001"
    exp.mkdir(parents=True)
    (exp / "meta.json").write_text(json.dumps({"id": "0001", "status": "crash", "description": first.description}))
    second = mutate.propose(ws, seed="1")[1]
    assert second.key != first.key


def test_descriptions_written_differently_still_match(ws):
    (ws / "train.py").write_text("TOTAL_BATCH_SIZE = 524288  # tokens\nWINDOW_PATTERN = 'SSSL'\n")
    rows = ["TOTAL_BATCH_SIZE 2**19 -> 2**18", "TOTAL_BATCH_SIZE 524288 -> 1048576",
            "WINDOW_PATTERN \"SSSL\" -> 'L'", "WINDOW_PATTERN 'SSSL' -> \"SL\"", "WINDOW_PATTERN 'SSSL' -> 'SSL'",
            "WINDOW_PATTERN 'SSSL' -> 'SSSSL'"]
    for i, d in enumerate(rows):
        ledger.append(ws / "results.tsv", f"{i:07x}", 1.0, 1.0, "discard", d)
    new, change = mutate.propose(ws, seed="3")
    assert change.description == "WINDOW_PATTERN 'SSSL' -> 'SLSL'"  # the only untried change left
    assert new == "TOTAL_BATCH_SIZE = 524288  # tokens\nWINDOW_PATTERN = 'SLSL'\n"
    ledger.append(ws / "results.tsv", "fffffff", 1.0, 1.0, "discard", change.description)
    proc = run_mutate(ws)
    assert proc.returncode == 2 and "every single-constant change" in proc.stderr
    assert (ws / "train.py").read_text() == "TOTAL_BATCH_SIZE = 524288  # tokens\nWINDOW_PATTERN = 'SSSL'\n"


def test_deterministic_given_seed_and_history(ws):
    a = [mutate.propose(ws, seed="5")[1] for _ in range(3)]
    assert a[0] == a[1] == a[2]
    seeds = {mutate.propose(ws, seed=str(s))[1].key for s in range(12)}
    assert len(seeds) > 3  # the seed matters


def test_batch_sizes_keep_their_divisibility(ws):
    consts = mutate.parse_constants(TRAIN_PY)
    cands = {c.description for c in mutate.candidates(consts, 2048)}
    # 128 x 2048 = 2**18 rows per micro-step; 2**19 tokens per step allows doubling once, halving the total once
    assert "DEVICE_BATCH_SIZE 128 -> 256" in cands and "DEVICE_BATCH_SIZE 128 -> 64" in cands
    assert "TOTAL_BATCH_SIZE 2**19 -> 2**18" in cands and "TOTAL_BATCH_SIZE 2**19 -> 2**20" in cands
    consts_big = mutate.parse_constants(TRAIN_PY.replace("DEVICE_BATCH_SIZE = 128", "DEVICE_BATCH_SIZE = 256"))
    cands_big = {c.description for c in mutate.candidates(consts_big, 2048)}
    assert "DEVICE_BATCH_SIZE 256 -> 512" not in cands_big
    assert "TOTAL_BATCH_SIZE 2**19 -> 2**18" not in cands_big


def test_bounds_and_kinds(ws):
    consts = mutate.parse_constants(TRAIN_PY)
    assert "HEAD_DIM" not in consts  # not a knob mutate turns (it would reshape attention)
    cands = mutate.candidates(consts, 2048)
    by = {}
    for c in cands:
        by.setdefault(c.name, []).append(c)
    assert {c.new_text for c in by["DEPTH"]} == {"7", "9"}
    assert {c.new_text for c in by["WARMUP_RATIO"]} == {"0.05"}  # 0.0 - 0.05 is clipped to 0.0: no change
    assert all(0.0 <= float(c.new_text) <= 1.0 for c in by["WEIGHT_DECAY"])
    assert all(c.new_text.startswith('"') for c in by["WINDOW_PATTERN"])  # quotes follow the original
    assert "MATRIX_LR 0.04 -> 0.05" in {c.description for c in by["MATRIX_LR"]}
    betas = {c.new_text for c in by["ADAM_BETAS"]}
    assert {c.new_text for c in by["MUON_MOMENTUM"]} == {"(0.8, 0.95, 300)", "(0.9, 0.95, 300)", "(0.85, 0.93, 300)", "(0.85, 0.97, 300)"}
    assert "(0.85, 0.95)" in betas and "(0.8, 0.97)" in betas


def test_missing_constants_and_bad_files(ws):
    (ws / "train.py").write_text("print('no knobs here')\n")
    proc = run_mutate(ws)
    assert proc.returncode == 2 and "none of the constants" in proc.stderr
    (ws / "train.py").write_text("DEPTH = 8\nMATRIX_LR = (\n")
    proc = run_mutate(ws)
    assert proc.returncode == 2 and "does not parse" in proc.stderr
    # a name assigned twice at top level is ambiguous and skipped; the other constant still works
    (ws / "train.py").write_text("DEPTH = 8\nDEPTH = 9\nMATRIX_LR = 0.04  # lr\n")
    assert mutate.propose(ws)[1].name == "MATRIX_LR"


def test_bad_history_is_ignored(ws):
    (ws / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\ngarbage line\n"
                                    "abc1234\t1.0\t1.0\tdiscard\tsomething by hand\n")
    exp = ws / ".autoresearch" / "experiments" / "0001"
    exp.mkdir(parents=True)
    (exp / "meta.json").write_text("{not json")
    assert run_mutate(ws).returncode == 0


@pytest.mark.parametrize("desc, key", [
    ("MATRIX_LR 0.04 -> 0.05", ("MATRIX_LR", "0.04", "0.05")),
    ("MATRIX_LR 0.04 -> 0.05: faster start", ("MATRIX_LR", "0.04", "0.05")),
    ("DEPTH 8 -> 7 (rejected: train.py does not compile)", ("DEPTH", "8", "7")),
    ("ADAM_BETAS (0.8, 0.95) -> (0.85, 0.95) warmer", ("ADAM_BETAS", "(0.8, 0.95)", "(0.85, 0.95)")),
    ("TOTAL_BATCH_SIZE 2**19 -> 2**18", ("TOTAL_BATCH_SIZE", "524288", "262144")),
    ("SwiGLU activation", None),
    ("FOO 1 -> 2", None),
    ("DEPTH eight -> 9", None),
])
def test_parse_description(desc, key):
    assert mutate.parse_description(desc) == key


def test_form_feeds_and_crlf_do_not_shift_the_edited_line():
    import ast

    from core.agents.mutate import parse_constants
    from core.pyconst import replace as apply
    for nl in ("\n", "\r\n"):
        src = nl.join(["X = 1", "\x0c", "MATRIX_LR = 0.04  # lr", "DEPTH = 8  # layers", ""])
        const = parse_constants(src)["MATRIX_LR"]
        out = apply(src, const, "0.05")
        ast.parse(out)
        assert out == src.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.05")
