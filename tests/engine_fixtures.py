"""Test helpers for the engine: a fake workspace (tiny trainer honouring the metrics contract) and a scripted agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from core.agents.base import Agent, AgentContext
from core.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent

FAKE_CONSTANTS = '''"""Fake constants for engine tests."""
TIME_BUDGET = 1  # seconds
STARTUP_ALLOWANCE = 60  # seconds beyond TIME_BUDGET to hand over the model
DATASET = "fake"  # the test cache holds an empty fake dataset
'''

# The fake keeps the real contract without a real model: evaluate() hands over like prepare.hand_over, writing
# report.json, then the "model" (a JSON file saying which val_bpb it is worth) into $AUTORESEARCH_HANDOFF;
# `prepare.py --evaluate MODEL --metrics OUT`, run by the engine from its trusted copy, turns it into the metrics
FAKE_PREPARE = '''"""Fake prepare.py: the hand-over of a fake model and the evaluator that scores it."""
import json
import os
import sys


def evaluate(val_bpb, peak_vram_mb):
    folder = os.environ.get("AUTORESEARCH_HANDOFF")
    if not folder:
        return val_bpb
    with open(os.path.join(folder, "report.json"), "w") as f:
        json.dump({"peak_vram_mb": peak_vram_mb, "training_seconds": 0.1, "num_steps": 5}, f)
    tmp = os.path.join(folder, ".model.tmp")
    with open(tmp, "w") as f:
        json.dump({"quality": val_bpb}, f)
    os.replace(tmp, os.path.join(folder, "model.pt2"))
    return None


if __name__ == "__main__" and "--evaluate" in sys.argv:
    model = json.load(open(sys.argv[sys.argv.index("--evaluate") + 1]))
    with open(sys.argv[sys.argv.index("--metrics") + 1], "w") as f:
        json.dump({"val_bpb": model["quality"], "device": "cpu"}, f)
'''

FAKE_TRAIN = '''"""Fake trainer: prints progress with carriage returns, hands over a model worth QUALITY through prepare."""
import json
import os
import subprocess
import sys
import time

from prepare import evaluate

QUALITY = 1.0  # the val_bpb this run reports
MODE = "ok"  # ok | crash | fakeprint | spawn
SLEEP = 0.2  # seconds of training
# filler 1
# filler 2
# filler 3
# filler 4
# filler 5
# filler 6

# tests steer running engines through this ignored file of the workspace (duration, mode); the trainer runs
# in a run folder inside the workspace's .autoresearch/ and may not read the workspace: the engine's tests
# pass the file's content in FAKE_CONTROL
_ctl_dir = _d = os.path.abspath(".")
for _ in range(4):
    if os.path.exists(os.path.join(_d, "fake_control.json")):
        _ctl_dir = _d
        break
    _d = os.path.dirname(_d)
_ctl = None
try:
    _ctl = json.load(open(os.path.join(_ctl_dir, "fake_control.json")))
except (OSError, ValueError):
    pass
if _ctl is not None:
    SLEEP = _ctl.get("sleep", SLEEP)
    MODE = _ctl.get("mode", MODE)

if MODE == "spawn":
    # a grandchild in the same process group: an abort or timeout must kill it too
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.path.join(_ctl_dir, "grandchild.pid"), "w") as f:
        f.write(str(child.pid))
print(f"training pid {os.getpid()}", flush=True)
steps = 5
for i in range(steps):
    print(f"\\rstep {i:02d} loss {QUALITY + (steps - i) * 0.1:.4f}", end="", flush=True)
    time.sleep(SLEEP / steps)
print()
if MODE == "crash":
    raise RuntimeError("fake crash in the trainer")
if MODE == "fakeprint":
    print("---")
    print("val_bpb:          0.100000")
    sys.exit(0)
if MODE == "spawn":
    time.sleep(600)
evaluate(QUALITY, 2048.0)
print("handed over", flush=True)
'''


GITIGNORE = "results.tsv\nrun.log\n.autoresearch/\n__pycache__/\nfake_control.json\ngrandchild.pid\n"

# the agent subprocess: applies one plan (a JSON object) to the workspace
AGENT_SCRIPT = r'''
import json, os, re, subprocess, sys, time
plan = json.loads(sys.argv[1])
if plan.get("sleep"):
    time.sleep(plan["sleep"])
src = open("train.py").read()
if "quality" in plan:
    src = re.sub(r"^QUALITY = .*$", "QUALITY = %r  # the val_bpb this run reports" % plan["quality"], src, flags=re.M)
if "mode" in plan:
    src = re.sub(r"^MODE = .*$", "MODE = %r  # ok | crash | fakeprint | spawn" % plan["mode"], src, flags=re.M)
for name, value in plan.get("set", {}).items():  # any other top-level constant, e.g. {"SLEEP": 2.0}
    src = re.sub(r"^%s = [^#\n]*" % name, "%s = %r  " % (name, value), src, flags=re.M)
for _ in range(plan.get("remove_lines", 0)):
    src = re.sub(r"^# filler \d+\n", "", src, count=1, flags=re.M)
src += plan.get("append", "")
if not plan.get("noop"):
    open("train.py", "w").write(src)
for path, text in plan.get("files", {}).items():
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    open(path, "a").write(text)
if plan.get("git_commit"):
    subprocess.run(["git", "commit", "-qam", "agent commit"], check=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="a", GIT_AUTHOR_EMAIL="a@b", GIT_COMMITTER_NAME="a",
                            GIT_COMMITTER_EMAIL="a@b"))
if plan.get("desc"):
    open(os.environ["AUTORESEARCH_PROPOSAL_FILE"], "w").write(plan["desc"] + "\n")
if plan.get("say"):
    print(plan["say"])
if plan.get("hang"):
    time.sleep(600)
sys.exit(plan.get("exit", 0))
'''

# the same agent as a file, for engines in other processes (`--agent command`): plans come from a JSON list
AGENT_FILE = r'''
import json, os, subprocess, sys
plans_path = sys.argv[1]
plans = json.load(open(plans_path)) if os.path.exists(plans_path) else []
plan = plans.pop(0) if plans else {"quality": 0.5, "desc": "default plan"}
json.dump(plans, open(plans_path, "w"))
sys.exit(subprocess.run([sys.executable, "-c", open(sys.argv[2]).read(), json.dumps(plan)]).returncode)
'''


class ScriptAgent(Agent):
    """Test-only agent: each proposal runs a python subprocess that applies the next plan."""

    name = "script"

    def __init__(self, plans: list[dict] | None = None, default: dict | None = None):
        self.plans = list(plans or [])
        self.default = default or {"quality": 0.5, "desc": "default plan"}
        self.contexts: list[AgentContext] = []

    def command(self, ctx: AgentContext) -> list[str]:
        self.contexts.append(ctx)
        plan = self.plans.pop(0) if self.plans else self.default
        return [sys.executable, "-c", AGENT_SCRIPT, json.dumps(plan)]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def make_cache(cache: Path, dataset: str = "fake") -> None:
    d = cache / dataset
    (d / "tokenizer").mkdir(parents=True, exist_ok=True)
    (d / "val").mkdir(parents=True, exist_ok=True)
    (d / "train").mkdir(parents=True, exist_ok=True)
    (d / "val" / "shard_00000.parquet").write_bytes(b"PAR1")


def make_workspace(path: Path, train: str = FAKE_TRAIN) -> Workspace:
    """A real git repository holding the fake trainer, its data 'prepared' in $AUTORESEARCH_CACHE."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "constants.py").write_text(FAKE_CONSTANTS)
    (path / "prepare.py").write_text(FAKE_PREPARE)
    (path / "train.py").write_text(train)
    (path / "program.md").write_text("# Directives\nLower val_bpb.\n")
    (path / ".gitignore").write_text(GITIGNORE)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Test")
    git(path, "config", "user.email", "test@example.com")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "init")
    make_cache(Path(os.environ["AUTORESEARCH_CACHE"]))
    # milestone 1's keep rule unless a test asks for the noise rule (--decide noise): no noise runs
    (path / ".autoresearch").mkdir(exist_ok=True)
    (path / ".autoresearch" / "config.json").write_text(json.dumps({"decide": "plain"}))
    return Workspace.at(path)


def set_fake(ws: Workspace, **ctl) -> None:
    (ws.root / "fake_control.json").write_text(json.dumps(ctl))


def read_events(ws: Workspace) -> list[dict]:
    if not ws.events.exists():
        return []
    return [json.loads(line) for line in ws.events.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll until predicate() is truthy (the engine lives in files and other processes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_event(ws: Workspace, type_: str, timeout: float = 30.0, **match) -> dict:
    def find():
        for ev in read_events(ws):
            if ev.get("type") == type_ and all(ev.get(k) == v for k, v in match.items()):
                return ev
        return None
    return wait_for(find, timeout, what=f"event {type_} {match}")


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def cli(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `python -m core.cli ARGS` as a real subprocess."""
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=cwd or ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def write_agent_files(tmp: Path, plans: list[dict]) -> str:
    """Files for `--agent command`; returns the command line."""
    (tmp / "agent_main.py").write_text(AGENT_FILE)
    (tmp / "agent_plan.py").write_text(AGENT_SCRIPT)
    (tmp / "plans.json").write_text(json.dumps(plans))
    return f"{sys.executable} {tmp / 'agent_main.py'} {tmp / 'plans.json'} {tmp / 'agent_plan.py'}"


def tsv_rows(ws: Workspace) -> list[list[str]]:
    if not ws.results_tsv.exists():
        return []
    lines = ws.results_tsv.read_text().splitlines()
    return [line.split("\t") for line in lines[1:] if line.strip()]


def meta(ws: Workspace, exp_id: str) -> dict:
    return json.loads((ws.experiment_dir(exp_id) / "meta.json").read_text())
