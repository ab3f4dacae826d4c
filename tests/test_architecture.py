"""core/ never imports the UI: importing every core module (in a fresh interpreter) loads no textual or tui."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import core

ROOT = Path(__file__).resolve().parent.parent

CHECK = r"""
import importlib, pkgutil, sys
import core
names = [m.name for m in pkgutil.walk_packages(core.__path__, "core.")]
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except ImportError as e:  # a module whose optional dependency is missing still must not pull in the UI
        failed.append(f"{name}: {e}")
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("textual", "tui"))
print(len(names))
print("BAD:" + ",".join(bad))
print("FAILED:" + ";".join(failed))
"""


def test_core_never_imports_textual_or_tui():
    r = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    count, bad, failed = r.stdout.strip().splitlines()[-3:]
    assert int(count) >= 15
    assert bad == "BAD:", bad
    assert failed == "FAILED:", failed


def test_no_core_source_mentions_textual_imports():
    for path in Path(core.__file__).parent.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            s = line.strip()
            assert not (s.startswith(("import textual", "from textual", "import tui", "from tui"))), (path, s)


def test_status_commands_do_not_import_torch():
    # `autoresearch status` must stay fast on a box that is busy training
    code = "import sys; from core import commands, engine, cli; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
