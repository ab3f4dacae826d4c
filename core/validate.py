"""Checks on an agent's proposal before any training time is spent: only train.py changed, it compiles, integrity."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from .ratchet import StatusEntry
from .workspace import EDITABLE_FILE

# program.md is the person's file: they may edit it while the loop runs (the engine commits it before
# the next proposal). A change to it during a proposal is rejected by the engine itself
# (core.proposer's validation, which keeps the text); the other checks leave it out.
PERSON_FILES = frozenset({"program.md"})

# attributes that the evaluation in prepare.py relies on; rebinding them could fake the metric
_TORCH_PROTECTED_PREFIXES = ("torch.nn.functional.", "torch.Tensor.", "torch.nn.Module.", "torch.autograd.")
_MODULE_LEVEL_PROTECTED = ("torch", "math", "prepare")


@dataclass
class Verdict:
    status: str  # ok | empty | rejected
    reason: str | None = None
    tracked: list[str] = field(default_factory=list)  # tracked paths the proposal changed (train.py included)
    new_files: list[str] = field(default_factory=list)  # untracked files the proposal created

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _short_list(paths: list[str], n: int = 3) -> str:
    shown = ", ".join(paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def check_changes(entries: list[StatusEntry], untracked_before: set[str]) -> Verdict:
    """Classify the working tree after a proposal (HEAD was clean apart from untracked_before)."""
    tracked = sorted({e.path for e in entries if not e.untracked and e.path not in PERSON_FILES})
    new_files = sorted({e.path for e in entries if e.untracked and e.path not in untracked_before})
    others = [p for p in tracked if p != EDITABLE_FILE]
    if others:
        return Verdict("rejected", f"rejected: changed {_short_list(others)}", tracked, new_files)
    if new_files:
        return Verdict("rejected", f"rejected: created {_short_list(new_files)}", tracked, new_files)
    deleted = [e for e in entries if e.path == EDITABLE_FILE and "D" in e.code]
    if deleted:
        return Verdict("rejected", f"rejected: deleted {EDITABLE_FILE}", tracked, new_files)
    if EDITABLE_FILE not in tracked:
        return Verdict("empty", "the agent changed nothing", tracked, new_files)
    return Verdict("ok", None, tracked, new_files)


def check_compiles(source: str, filename: str = EDITABLE_FILE) -> str | None:
    """Same check as py_compile, without writing a .pyc: the reason it does not compile, or None."""
    try:
        compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as e:
        return f"rejected: {filename} does not compile (line {e.lineno}: {e.msg})"
    except ValueError as e:  # e.g. null bytes
        return f"rejected: {filename} does not compile ({e})"
    return None


def _dotted(node: ast.AST) -> str | None:
    """`a.b.c` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_prepare_expr(node: ast.AST) -> bool:
    """sys.modules['prepare'], importlib.import_module('prepare'), __import__('prepare')."""
    if isinstance(node, ast.Subscript):
        key = node.slice
        return _dotted(node.value) == "sys.modules" and isinstance(key, ast.Constant) and key.value == "prepare"
    if isinstance(node, ast.Call) and node.args:
        fn = _dotted(node.func) or ""
        arg = node.args[0]
        return (fn.endswith("import_module") or fn == "__import__") and isinstance(arg, ast.Constant) \
            and arg.value == "prepare"
    return False


class _Integrity(ast.NodeVisitor):
    """Finds code that would let train.py tamper with the evaluation in prepare.py."""

    def __init__(self):
        self.aliases: dict[str, str] = {}  # local name -> dotted module/object path it stands for
        self.problem: str | None = None

    def _flag(self, msg: str) -> None:
        if self.problem is None:
            self.problem = msg

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.asname:
                self.aliases[a.asname] = a.name
            else:
                root = a.name.split(".")[0]
                self.aliases[root] = root

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        for a in node.names:
            if a.name != "*":
                self.aliases[a.asname or a.name] = f"{mod}.{a.name}" if mod else a.name

    def _resolve(self, node: ast.AST) -> str | None:
        root = node
        while isinstance(root, ast.Attribute):
            root = root.value
        if _is_prepare_expr(root):
            tail = _dotted_tail(node)
            return "prepare" + tail
        d = _dotted(node)
        if d is None:
            return None
        head, _, rest = d.partition(".")
        full = self.aliases.get(head, head)
        return f"{full}.{rest}" if rest else full

    def _check_target(self, target: ast.AST) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                self._check_target(t)
            return
        if isinstance(target, ast.Starred):
            self._check_target(target.value)
            return
        if isinstance(target, ast.Subscript):
            # prepare.SOMETHING["k"] = ... or vars(prepare)[...] = ...
            self._check_container(target.value)
            return
        if not isinstance(target, ast.Attribute):
            return
        self._check_container(target.value)
        path = self._resolve(target)
        if path is None:
            return
        if path.startswith("prepare.") or path.startswith(".prepare."):
            self._flag(f"assigns {path} (attributes of the prepare module are read-only)")
        elif path.startswith(_TORCH_PROTECTED_PREFIXES):
            self._flag(f"rebinds {path}, which the evaluation uses")
        elif path.count(".") == 1 and path.split(".")[0] in _MODULE_LEVEL_PROTECTED:
            self._flag(f"rebinds {path}, which the evaluation uses")

    def _check_container(self, node: ast.AST) -> None:
        path = self._resolve(node)
        if path and (path == "prepare" or path.startswith("prepare.")):
            self._flag(f"writes into {path} (the prepare module is read-only)")
        if isinstance(node, ast.Call) and _dotted(node.func) == "vars" and node.args:
            p = self._resolve(node.args[0])
            if p and (p == "prepare" or p.startswith("prepare.")):
                self._flag("writes into vars(prepare)")

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self._check_target(t)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._check_target(node.target)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for t in node.targets:
            self._check_target(t)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        fn = _dotted(node.func)
        if fn in ("setattr", "delattr", "builtins.setattr", "object.__setattr__") and node.args:
            p = self._resolve(node.args[0])
            if p and (p == "prepare" or p.startswith("prepare.") or p.startswith(_TORCH_PROTECTED_PREFIXES)
                      or p in ("torch", "math", "torch.nn.functional", "torch.Tensor")):
                self._flag(f"calls {fn} on {p}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and "results.tsv" in node.value:
            self._flag("refers to results.tsv (the ledger is the engine's)")


def _dotted_tail(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return "".join("." + p for p in reversed(parts))


def check_integrity(source: str) -> str | None:
    """Static checks that reject the obvious attempts before any training time is spent. Best effort: a guard
    rail, not the protection. That is the run itself (docs/integrity.md): the score comes from a separate
    evaluator that runs none of train.py's code, and the trainer runs in a sandbox where the OS offers one.
    """
    if "AUTORESEARCH_METRICS" in source:
        return "rejected: train.py mentions AUTORESEARCH_METRICS (the metrics channel is the evaluation's)"
    if "/proc/self/environ" in source:
        return "rejected: train.py reads a process environment through /proc"
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None  # check_compiles reports it
    strings = " ".join(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    if "/proc" in strings and "environ" in strings:  # e.g. f"/proc/{pid}/environ" built from pieces
        return "rejected: train.py reads a process environment through /proc"
    v = _Integrity()
    # aliases first (imports can come after use in functions), then the checks
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            v.visit_Import(node)
        elif isinstance(node, ast.ImportFrom):
            v.visit_ImportFrom(node)
        elif isinstance(node, ast.Assign) and _is_prepare_expr(node.value):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    v.aliases[t.id] = "prepare"
    v.visit(tree)
    if v.problem:
        return f"rejected: train.py {v.problem}"
    return None


def check_source(source: str) -> str | None:
    """Compile and integrity checks of the proposed train.py: the rejection reason, or None."""
    return check_compiles(source) or check_integrity(source)
