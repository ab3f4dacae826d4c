"""Test helpers for the Ray executor: the fake trainer's files as data, run specs, a callback recorder."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

from engine_fixtures import FAKE_CONSTANTS, FAKE_PREPARE, FAKE_TRAIN

from core.executors.base import RunCallbacks, RunSpec

# the spawned grandchild's pid goes to the output too: the run folder (where the fake writes it) is on the node
_SPAWN = '    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])\n'
assert _SPAWN in FAKE_TRAIN
_TRAIN = FAKE_TRAIN.replace(_SPAWN, _SPAWN + '    print(f"grandchild pid {child.pid}", flush=True)\n')

# prepare.py run as a script (a node's first run) counts its runs in the cache and takes a while
COUNTING_PREPARE = FAKE_PREPARE + '''

if __name__ == "__main__" and "--evaluate" not in sys.argv:  # the evaluator's runs are not preparations
    import time
    with open(os.path.join(os.environ["AUTORESEARCH_CACHE"], "prepare-runs.txt"), "a") as f:
        f.write(f"{os.getpid()}\\n")
    print("fake prepare: building the dataset", flush=True)
    time.sleep(1.0)
'''


def trainer(quality: float = 1.0, sleep: float = 0.2, mode: str = "ok") -> str:
    """The fake trainer of the engine tests with its knobs set in the text (no control file on a node)."""
    text = re.sub(r"^QUALITY = .*$", f"QUALITY = {quality!r}", _TRAIN, flags=re.M)
    text = re.sub(r"^SLEEP = .*$", f"SLEEP = {sleep!r}", text, flags=re.M)
    return re.sub(r"^MODE = .*$", f"MODE = {mode!r}", text, flags=re.M)


def files(train: str, prepare: str = FAKE_PREPARE) -> dict[str, str]:
    return {"train.py": train, "prepare.py": prepare, "constants.py": FAKE_CONSTANTS}


def spec(root: Path, exp_id: str, train: str, timeout: float = 60.0, prepare: str = FAKE_PREPARE) -> RunSpec:
    exp = root / "experiments" / exp_id
    return RunSpec(exp_id=exp_id, files=files(train, prepare), logs=(exp / "train.log", root / f"run-{exp_id}.log"),
                   metrics_out=exp / "metrics.json", timeout=timeout)


class Recorder:
    """RunCallbacks that remember what they heard, with arrival times."""

    def __init__(self):
        self.starts: list[tuple] = []
        self.phases: list[str] = []
        self.chunks: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()

    def callbacks(self) -> RunCallbacks:
        return RunCallbacks(on_start=lambda child, node: self.starts.append((child, node)),
                            on_phase=self.phases.append, on_output=self._out)

    def _out(self, data: bytes) -> None:
        with self._lock:
            self.chunks.append((time.monotonic(), data))

    @property
    def text(self) -> str:
        with self._lock:
            return b"".join(c for _, c in self.chunks).decode("utf-8", "replace")

    def pid(self, what: str) -> int | None:
        m = re.search(rf"{what} pid (\d+)", self.text)
        return int(m.group(1)) if m else None


# an engine in its own process: starts a run in each slot, prints their pids, waits (the test kills it -9)
CLIENT = r'''
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from core.executors.ray import RayExecutor
from ray_fixtures import Recorder, spec, trainer

root, address, resource = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
ex = RayExecutor(root, address=address, resource=resource, log=lambda m: None)
recs = {f"000{i + 1}": Recorder() for i in range(len(ex.slots()))}
handles = [ex.start(slot, spec(root, exp, trainer(sleep=0.2, mode="spawn")), rec.callbacks())
           for slot, (exp, rec) in zip(ex.slots(), recs.items())]
while any(rec.pid("grandchild") is None or rec.pid("training") is None for rec in recs.values()):
    time.sleep(0.05)
for exp, rec in recs.items():
    print(exp, rec.pid("training"), rec.pid("grandchild"), flush=True)
time.sleep(600)
'''
