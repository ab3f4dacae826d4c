"""core.validate: which proposals may train (only train.py changed, it compiles, it cannot fake the metric)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.ratchet import StatusEntry, numstat, parse_status
from core.validate import check_changes, check_compiles, check_integrity, check_source

ROOT = Path(__file__).resolve().parent.parent


def entries(*pairs):
    return [StatusEntry(code, path) for code, path in pairs]


def test_only_train_py_may_change():
    assert check_changes(entries((" M", "train.py")), set()).ok
    v = check_changes(entries((" M", "train.py"), (" M", "prepare.py")), set())
    assert v.status == "rejected" and v.reason == "rejected: changed prepare.py"
    v = check_changes(entries(("??", "helper.py")), set())
    assert v.reason == "rejected: created helper.py" and v.new_files == ["helper.py"]
    # untracked files that were there before the proposal are not the agent's
    assert check_changes(entries((" M", "train.py"), ("??", "notes.txt")), {"notes.txt"}).ok
    assert check_changes(entries((" D", "train.py")), set()).reason == "rejected: deleted train.py"
    assert check_changes(entries(("M ", "uv.lock"), ("A ", "x.py"), (" M", "pyproject.toml"), (" M", "t.py")),
                         set()).reason == "rejected: changed pyproject.toml, t.py, uv.lock and 1 more"
    # program.md is the person's: editing it while the loop runs is allowed
    assert check_changes(entries((" M", "train.py"), (" M", "program.md")), set()).ok


def test_empty_proposal():
    assert check_changes([], set()).status == "empty"
    assert check_changes(entries((" M", "program.md")), set()).status == "empty"


def test_parse_status_handles_renames_and_spaces():
    out = " M train.py\0R  new name.py\0old.py\0?? dir/a b.txt\0"
    got = parse_status(out)
    assert [(e.code, e.path) for e in got] == [(" M", "train.py"), ("R ", "new name.py"), ("R ", "old.py"),
                                               ("??", "dir/a b.txt")]


def test_numstat_counts_lines():
    patch = "--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,1 @@\n-a\n-b\n+c\n context\n"
    assert numstat(patch) == (1, 2)


def test_compile_check():
    assert check_compiles("x = 1\n") is None
    msg = check_compiles("def f(:\n    pass\n")
    assert msg.startswith("rejected: train.py does not compile (line 1")
    assert "does not compile" in check_compiles("x = '\0'\0")


@pytest.mark.parametrize("source", [
    "import os\nos.environ['AUTORESEARCH_METRICS_FILE']\n",
    "open('/proc/self/environ').read()\n",
    "import os\nopen(f'/proc/{os.getppid()}/environ').read()\n",
    "import prepare\nprepare.evaluate_bpb = lambda *a: 0.1\n",
    "import prepare as p\np.TIME_BUDGET += 100\n",
    "from prepare import evaluate_bpb\nevaluate_bpb.__code__ = None\n",
    "import prepare\nsetattr(prepare, 'EVAL_TOKENS', 1)\n",
    "import sys\nsys.modules['prepare'].EVAL_TOKENS = 1\n",
    "import importlib\np = importlib.import_module('prepare')\np.X = 1\n",
    "import prepare\nvars(prepare)['X'] = 1\n",
    "import prepare\nprepare.__dict__['X'] = 1\n",
    "import torch.nn.functional as F\nF.cross_entropy = lambda *a, **k: 0\n",
    "import torch\ntorch.Tensor.sum = lambda self: 0\n",
    "import torch\ntorch.log = None\n",
    "with open('results.tsv', 'a') as f:\n    f.write('x')\n",
    "def f():\n    import prepare\n    del prepare.evaluate_bpb\n",
])
def test_integrity_rejects_tampering(source):
    msg = check_integrity(source)
    assert msg and msg.startswith("rejected: train.py"), source


@pytest.mark.parametrize("source", [
    "import os\nseed = int(os.environ.get('SEED', 0))\n",
    "import torch\ntorch.backends.cuda.matmul.allow_tf32 = True\ntorch._dynamo.config.cache_size_limit = 64\n",
    "from prepare import MAX_SEQ_LEN, evaluate_bpb\nval = evaluate_bpb(None, None, 8)\n",
    "import torch.nn as nn\nclass M(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.w = 1\n",
    "# the process environment is read by prepare, not here\nprocesses = 4\n",
])
def test_integrity_accepts_ordinary_code(source):
    assert check_integrity(source) is None


def test_the_real_train_py_passes():
    train = ROOT / "train.py"
    if not train.exists():
        pytest.skip("train.py not in the repository yet")
    assert check_source(train.read_text(encoding="utf-8")) is None
