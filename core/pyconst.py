"""Top-level constants of a Python file (constants.py, train.py's knobs): read, locate and rewrite, never import.

One parser for everyone: the engine reads constants.py, setup rewrites the profile's knobs, mutate perturbs
hyperparameters. A value is found by parsing (ast), so a comment or a string that looks like an assignment is
never taken for one; a rewrite replaces exactly the value's characters, keeping the trailing comment.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

_MAX_EXPONENT = 64  # a typo like 2**1900 must not hang a reader


@dataclass(frozen=True)
class Constant:
    name: str
    value: object  # the evaluated literal
    text: str  # source text of the value
    line_no: int  # 1-based line of the value
    col: int  # byte offsets of the value inside its line
    end_col: int


def literal(node: ast.AST):
    """ast.literal_eval plus the arithmetic people write in constants (2**19, 5 * 60, 40 * 524288, 1 / 3)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.Mult, ast.Add, ast.Sub, ast.Div,
                                                            ast.FloorDiv)):
        a, b = literal(node.left), literal(node.right)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b)):
            raise ValueError("not numeric")
        op = node.op
        if isinstance(op, ast.Pow):
            if abs(b) > _MAX_EXPONENT:
                raise ValueError("exponent too large")
            return a ** b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if b == 0:
            raise ValueError("division by zero")
        return a / b if isinstance(op, ast.Div) else a // b
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = literal(node.operand)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError("not numeric")
        return -v if isinstance(node.op, ast.USub) else v
    return ast.literal_eval(node)


def parse(source: str, names=None) -> dict[str, Constant]:
    """Top-level single-line `NAME = literal` (or `NAME: T = literal`) assignments; SyntaxError if it does not parse.

    names: only these (None: every name). A name assigned twice at the top level is left out: which value
    counts would depend on code between the assignments."""
    tree = ast.parse(source)
    # split on "\n" only: str.splitlines() also breaks at form feeds and other separators that Python's
    # parser does not count as line ends, which would shift the line numbers
    lines = source.split("\n")
    found: dict[str, Constant] = {}
    twice: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        else:
            continue
        if len(targets) != 1 or not isinstance(targets[0], ast.Name):
            continue
        name = targets[0].id
        if names is not None and name not in names:
            continue
        if name in found or name in twice:
            twice.add(name)
            found.pop(name, None)
            continue
        if value.lineno != value.end_lineno:
            continue
        try:
            val = literal(value)
        except (ValueError, TypeError, SyntaxError, OverflowError, MemoryError, RecursionError):
            continue
        line_b = lines[value.lineno - 1].encode("utf-8")
        text = line_b[value.col_offset:value.end_col_offset].decode("utf-8")
        found[name] = Constant(name, val, text, value.lineno, value.col_offset, value.end_col_offset)
    return found


def read(path: Path, names=None) -> dict:
    """{name: value} of a file's top-level constants; a missing or broken file gives {}."""
    try:
        source = Path(path).read_text(encoding="utf-8")
        return {k: c.value for k, c in parse(source, names).items()}
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return {}


def read_one(path: Path, name: str, default=None):
    return read(path, (name,)).get(name, default)


def replace(source: str, const: Constant, new_text: str) -> str:
    """Replace the value of one constant in place; everything else (comment, spacing) stays byte-identical."""
    lines = source.split("\n")  # as in parse
    line_b = lines[const.line_no - 1].encode("utf-8")
    lines[const.line_no - 1] = (line_b[:const.col] + new_text.encode("utf-8") + line_b[const.end_col:]).decode("utf-8")
    return "\n".join(lines)


def rewrite(source: str, values: dict[str, str]) -> tuple[str, list[str]]:
    """Set several constants to new source texts; returns (new source, names that were not found)."""
    missing = []
    for name, text in values.items():
        const = parse(source, (name,)).get(name)
        if const is None:
            missing.append(name)
            continue
        source = replace(source, const, text)
    return source, missing


def source_text(value, name: str = "") -> str:
    """Python source for a value as upstream writes constants: EVAL_TOKENS as N * 524288, token counts that are
    powers of two as 2**n, strings double-quoted."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if name == "EVAL_TOKENS" and isinstance(value, int) and value >= 524288 and value % 524288 == 0:
        return f"{value // 524288} * 524288"
    if name in ("TOTAL_BATCH_SIZE", "EVAL_TOKENS") and isinstance(value, int) and value >= 1024 \
            and value & (value - 1) == 0:
        return f"2**{value.bit_length() - 1}"
    return repr(value)
