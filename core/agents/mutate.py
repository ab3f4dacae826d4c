"""mutate: the offline agent; perturbs one hyperparameter constant of train.py, never repeating a tried change.

Usage (the engine runs it with cwd = workspace):
  python -m core.agents.mutate

It reads train.py, results.tsv and .autoresearch/experiments/*/meta.json, picks one top-level constant
(learning rates, weight decay, warm-down, depth, batch sizes, window pattern, Adam betas...), rewrites
only that line (the trailing comment is kept) and writes a description such as `MATRIX_LR 0.04 -> 0.05`
to $AUTORESEARCH_PROPOSAL_FILE. A change (name, from value, to value) that history already holds is
never proposed again. The choice is deterministic given the history and AUTORESEARCH_MUTATE_SEED.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import pyconst
from ..pyconst import Constant
from ..workspace import STATE_DIR
from .base import Agent, AgentContext

# How each known constant may move. kind:
#   mul    float, multiplied by one of FACTORS, clipped to [lo, hi]
#   add    float, shifted by one of `steps`, clipped to [lo, hi] (ratios where 0 is a sane value)
#   int    integer, shifted by one of `steps`
#   pow2   integer power of two, halved or doubled (batch sizes keep their divisibility)
#   choice one of `choices`
#   tuple  a tuple of numbers (Adam betas, Muon momentum ramp): one float element shifts by one of
#          `steps` = ((index, shift), ...), clipped to [lo, hi]; the other elements stay as they are
FACTORS = (0.5, 0.75, 1.25, 1.5, 2.0)


@dataclass(frozen=True)
class Spec:
    kind: str
    lo: float = 0.0
    hi: float = 0.0
    steps: tuple = ()
    choices: tuple = ()


SPECS: dict[str, Spec] = {
    "MATRIX_LR": Spec("mul", 0.002, 0.3),
    "EMBEDDING_LR": Spec("mul", 0.02, 5.0),
    "UNEMBEDDING_LR": Spec("mul", 0.0002, 0.05),
    "SCALAR_LR": Spec("mul", 0.02, 5.0),
    "WEIGHT_DECAY": Spec("add", 0.0, 1.0, steps=(-0.1, -0.05, 0.05, 0.1)),
    "WARMDOWN_RATIO": Spec("add", 0.0, 1.0, steps=(-0.2, -0.1, 0.1, 0.2)),
    "WARMUP_RATIO": Spec("add", 0.0, 0.5, steps=(-0.05, 0.05)),
    "FINAL_LR_FRAC": Spec("add", 0.0, 1.0, steps=(-0.05, 0.05, 0.1)),
    "ADAM_BETAS": Spec("tuple", 0.5, 0.999, steps=((0, -0.05), (0, 0.05), (1, -0.02), (1, 0.02))),
    "MUON_MOMENTUM": Spec("tuple", 0.5, 0.99, steps=((0, -0.05), (0, 0.05), (1, -0.02), (1, 0.02))),
    "DEPTH": Spec("int", 1, 32, steps=(-1, 1)),
    "ASPECT_RATIO": Spec("int", 16, 256, steps=(-16, 16)),
    "TOTAL_BATCH_SIZE": Spec("pow2", 2**10, 2**22),
    "DEVICE_BATCH_SIZE": Spec("pow2", 1, 1024),
    "WINDOW_PATTERN": Spec("choice", choices=("L", "SL", "SSL", "SSSL", "SSSSL", "SLSL")),
}
DESCRIPTION_RE = re.compile(r"^([A-Z][A-Z0-9_]*) (.+?) -> (.+?)\s*$")


class MutateError(Exception):
    """Nothing sensible to propose (no known constants, or every change was tried)."""


@dataclass(frozen=True)
class Change:
    name: str
    old_text: str
    new_text: str
    old_key: str
    new_key: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.name, self.old_key, self.new_key)

    @property
    def description(self) -> str:
        return f"{self.name} {self.old_text} -> {self.new_text}"


# --- parsing -----------------------------------------------------------------------------------

def value_key(value) -> str:
    """Canonical text of a value, so that 2**19 and 524288, or 'SSL' and "SSL", compare equal."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e15:
            return repr(float(value))
        return repr(float(f"{value:.6g}"))
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(value_key(v) for v in value) + ")"
    return repr(value)


def text_key(text: str) -> str | None:
    """value_key of a value written as source text (from a description); None if it does not parse."""
    try:
        return value_key(pyconst.literal(ast.parse(text.strip(), mode="eval").body))
    except (SyntaxError, ValueError, TypeError, OverflowError):
        return None


def parse_constants(source: str) -> dict[str, Constant]:
    """The SPECS constants of train.py (see core.pyconst.parse)."""
    return pyconst.parse(source, SPECS)


# --- candidate changes -------------------------------------------------------------------------

def _fmt_float(v: float) -> str:
    text = f"{v:.3g}"
    if "e" in text:
        text = repr(float(text))
    if not any(c in text for c in ".en"):
        text += ".0"
    return text


def _fmt_pow2(v: int, like: str) -> str:
    if "**" in like.replace(" ", "") and v > 0 and v & (v - 1) == 0:
        return f"2**{v.bit_length() - 1}"
    return str(v)


def _fmt_like(v: str, like: str) -> str:
    quote = "'" if like.startswith("'") else '"'
    return f"{quote}{v}{quote}"


def candidates(consts: dict[str, Constant], seq_len: int | None) -> list[Change]:
    """Every single-constant change allowed from the current values."""
    out: list[Change] = []

    def add(c: Constant, new_value, new_text: str):
        old_key, new_key = value_key(c.value), value_key(new_value)
        if old_key != new_key:
            out.append(Change(c.name, c.text, new_text, old_key, new_key))

    for name, c in consts.items():
        spec, v = SPECS[name], c.value
        if spec.kind == "mul" and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            for f in FACTORS:
                nv = float(_fmt_float(min(max(v * f, spec.lo), spec.hi)))
                add(c, nv, _fmt_float(nv))
        elif spec.kind == "add" and isinstance(v, (int, float)) and not isinstance(v, bool):
            for s in spec.steps:
                nv = round(min(max(v + s, spec.lo), spec.hi), 4)
                add(c, float(nv), _fmt_float(nv))
        elif spec.kind == "int" and isinstance(v, int) and not isinstance(v, bool):
            for s in spec.steps:
                nv = int(min(max(v + s, spec.lo), spec.hi))
                add(c, nv, str(nv))
        elif spec.kind == "pow2" and isinstance(v, int) and not isinstance(v, bool) and v > 0:
            for nv in (v // 2, v * 2):
                if not spec.lo <= nv <= spec.hi or (nv < v and v % 2):
                    continue
                if not _batch_ok(name, nv, consts, seq_len):
                    continue
                add(c, nv, _fmt_pow2(nv, c.text))
        elif spec.kind == "choice" and isinstance(v, str):
            for ch in spec.choices:
                add(c, ch, _fmt_like(ch, c.text))
        elif (spec.kind == "tuple" and isinstance(v, (tuple, list))
              and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in v)):
            for i, s in spec.steps:
                if i >= len(v) or not isinstance(v[i], float):
                    continue
                nb = list(v)
                nb[i] = round(min(max(nb[i] + s, spec.lo), spec.hi), 4)
                nv = tuple(nb)
                add(c, nv, "(" + ", ".join(_fmt_elem(b) for b in nv) + ")")
    return out


def _fmt_elem(b) -> str:
    if isinstance(b, int):
        return str(b)
    text = f"{b:.4g}"
    return text if "." in text else text + ".0"


def _batch_ok(name: str, new: int, consts: dict[str, Constant], seq_len: int | None) -> bool:
    """TOTAL_BATCH_SIZE must stay a multiple of DEVICE_BATCH_SIZE x MAX_SEQ_LEN (gradient accumulation)."""
    total = consts.get("TOTAL_BATCH_SIZE")
    device = consts.get("DEVICE_BATCH_SIZE")
    total_v = new if name == "TOTAL_BATCH_SIZE" else (total.value if total else None)
    device_v = new if name == "DEVICE_BATCH_SIZE" else (device.value if device else None)
    if not isinstance(total_v, int) or not isinstance(device_v, int) or not seq_len:
        return True
    per_step = device_v * seq_len
    return per_step <= total_v and total_v % per_step == 0


# --- history -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tried:
    name: str
    old_key: str
    new_key: str
    status: str  # keep | discard | crash | other


def parse_description(desc: str) -> tuple[str, str, str] | None:
    m = DESCRIPTION_RE.match(desc.strip())
    if not m or m.group(1) not in SPECS:
        return None
    old_key = text_key(m.group(2))
    if old_key is None:
        return None
    # The new value may be followed by prose ("0.05: faster start") or the engine's "(rejected: ...)":
    # take the longest leading run of words that parses as a value.
    words = m.group(3).split(" ")
    for k in range(len(words), 0, -1):
        new_key = text_key(" ".join(words[:k]).rstrip(":;,"))
        if new_key is not None:
            return m.group(1), old_key, new_key
    return None


def read_history(root: Path) -> list[Tried]:
    """Changes already tried, from results.tsv and experiments/*/meta.json (bad lines are ignored)."""
    from .. import ledger

    tried: list[Tried] = []
    for row in ledger.read(root / "results.tsv").rows:
        p = parse_description(row.description)
        if p:
            tried.append(Tried(*p, row.status))
    exp_dir = root / STATE_DIR / "experiments"
    if exp_dir.is_dir():
        for meta_path in sorted(exp_dir.glob("*/meta.json")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(meta, dict) or not isinstance(meta.get("description"), str):
                continue
            p = parse_description(meta["description"])
            if p:
                tried.append(Tried(*p, str(meta.get("status") or "other")))
    return tried


# --- choice ------------------------------------------------------------------------------------

def _direction(old_key: str, new_key: str) -> int:
    try:
        a, b = ast.literal_eval(old_key), ast.literal_eval(new_key)
    except (ValueError, SyntaxError):
        return 0
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return (b > a) - (b < a)
    return 0


def choose(cands: list[Change], history: list[Tried], seed: str, salt: str) -> Change:
    """Pick one untried change: weighted random, deterministic given (seed, history, train.py)."""
    tried_keys = {(t.name, t.old_key, t.new_key) for t in history}
    fresh = [c for c in cands if c.key not in tried_keys]
    if not fresh:
        raise MutateError("every single-constant change from the current values of train.py has been tried; "
                          "edit program.md/train.py by hand or use an LLM agent (--agent claude|anthropic)")
    # Momentum: a change that was kept suggests going further the same way from its new value.
    kept_dir = {}
    for t in history:
        if t.status == "keep":
            kept_dir[(t.name, t.new_key)] = _direction(t.old_key, t.new_key)
    # Constants that were tried often get a little less attention (breadth first).
    tries = {}
    for t in history:
        tries[t.name] = tries.get(t.name, 0) + 1
    weights = []
    for c in fresh:
        w = 1.0 / (1.0 + 0.5 * tries.get(c.name, 0))
        d = kept_dir.get((c.name, c.old_key))
        if d and _direction(c.old_key, c.new_key) == d:
            w *= 6.0
        weights.append(w)
    digest = hashlib.sha256(f"{seed}\n{salt}\n{len(history)}".encode()).hexdigest()
    rng = random.Random(int(digest[:16], 16))
    return rng.choices(fresh, weights=weights, k=1)[0]


def propose(root: Path, seed: str = "0", history_root: Path | None = None, salt_extra: str = "") -> tuple[str, Change]:
    """The new train.py text and the change, for the workspace at root (nothing is written)."""
    train = root / "train.py"
    try:
        source = train.read_bytes().decode("utf-8")  # no newline translation: a CRLF file stays CRLF
    except FileNotFoundError:
        raise MutateError(f"no train.py in {root}") from None
    try:
        consts = parse_constants(source)
        consts_all = {k: c.value for k, c in pyconst.parse(source, ("MAX_SEQ_LEN",)).items()}
    except SyntaxError as e:
        raise MutateError(f"train.py does not parse (line {e.lineno}): fix it before running mutate") from None
    if not consts:
        raise MutateError("train.py has none of the constants mutate knows (" + ", ".join(SPECS) + ")")
    seq_len = _int(pyconst.read_one(root / "constants.py", "MAX_SEQ_LEN")) or _int(consts_all.get("MAX_SEQ_LEN"))
    history = read_history(history_root or root)
    # the experiment id in the salt: two proposals made at once from the same history choose differently
    salt = hashlib.sha256((source + salt_extra).encode("utf-8")).hexdigest()
    change = choose(candidates(consts, seq_len), history, seed, salt)
    return pyconst.replace(source, consts[change.name], change.new_text), change


def _int(v) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class MutateAgent(Agent):
    """The offline agent as the engine sees it: `python -m core.agents.mutate` in the workspace."""

    name = "mutate"

    def __init__(self, config: dict):
        self.seed = config.get("seed")

    def command(self, ctx: AgentContext) -> list[str]:
        return [sys.executable, "-m", "core.agents.mutate"]

    def env(self, ctx: AgentContext) -> dict[str, str]:
        return {"AUTORESEARCH_MUTATE_SEED": str(self.seed)} if self.seed is not None else {}


def main(argv: list[str] | None = None) -> int:
    root = Path.cwd()  # the proposal's worktree
    seed = os.environ.get("AUTORESEARCH_MUTATE_SEED", "0")
    workspace = os.environ.get("AUTORESEARCH_WORKSPACE")  # results.tsv and experiments/ live there
    try:
        new_source, change = propose(root, seed, Path(workspace) if workspace else None,
                                     os.environ.get("AUTORESEARCH_EXPERIMENT", ""))
    except MutateError as e:
        print(f"mutate: {e}", file=sys.stderr)
        return 2
    (root / "train.py").write_bytes(new_source.encode("utf-8"))
    proposal = os.environ.get("AUTORESEARCH_PROPOSAL_FILE")
    if proposal:
        Path(proposal).write_text(change.description + "\n", encoding="utf-8")
    print(change.description)
    return 0


if __name__ == "__main__":
    sys.exit(main())
