"""Where one training run executes: the interface every executor (local subprocess, Ray task) implements.

The engine (core.engine) knows only this: it asks an executor for its slots, starts a run of a given
train.py in a slot, hears about it through callbacks, may cancel it, and gets a TrainResult whose metrics
come from the trusted evaluation. How the run is placed, where its files live and how its output reaches
the workspace's logs is the executor's business.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from ..procs import ProcessId
from ..training import TrainResult


@dataclass(frozen=True)
class Slot:
    """One place where a run executes."""

    id: str  # "0", "1", ... (stable for the engine's lifetime)
    label: str  # what a person reads: "GPU 0", "CPU 1/2 (cores 1)", "node-a GPU 0"
    gpu: int | None = None  # the CUDA device of this box the trainer sees as its only GPU
    node: str | None = None  # the machine (Ray), None for this box
    env: dict[str, str] = field(default_factory=dict)  # CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS, ...
    cpus: tuple[int, ...] | None = None  # CPU affinity of the trainer, None: all cores


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, as data: an executor on another machine gets exactly this."""

    exp_id: str
    files: dict[str, str]  # train.py (what its commit holds) + the workspace's trusted prepare.py, constants.py
    logs: tuple[Path, ...]  # where the output streams (experiments/NNNN/train.log, run.log)
    metrics_out: Path  # where the trusted metrics are copied (experiments/NNNN/metrics.json)
    timeout: float  # hard wall-clock limit of the whole run
    seed: int | None = None  # AUTORESEARCH_SEED for the trainer (noise and confirmation runs vary it)
    env: dict[str, str] = field(default_factory=dict)  # extra trainer environment


@dataclass
class RunCallbacks:
    """What an executor reports while a run goes on (any thread; each must return quickly)."""

    on_start: Callable[[ProcessId | None, str | None], None] = lambda child, node: None  # process (local) / node
    on_placed: Callable[[Slot], None] | None = None  # the slot as placed (Ray: its node and GPU), before on_start
    on_phase: Callable[[str], None] = lambda phase: None  # starting | training | evaluating
    on_output: Callable[[bytes], None] | None = None  # the raw output, as it reaches the logs


class RunHandle(Protocol):
    spec: RunSpec
    slot: Slot

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> TrainResult | None:
        """The verdict once the run ended (None if it has not ended within timeout)."""

    def cancel(self, reason: str) -> None:
        """Kill the run now (the whole process tree, wherever it runs); result() then says cancelled."""


class Executor(Protocol):
    name: str

    def slots(self) -> list[Slot]: ...

    def start(self, slot: Slot, spec: RunSpec, callbacks: RunCallbacks) -> RunHandle: ...

    def cleanup_orphans(self, log: Callable[[str], None]) -> None:
        """After a kill -9 of an earlier engine: end whatever its runs left running (processes, tasks)."""

    def close(self) -> None: ...


class ThreadRunHandle:
    """A run executed by a function on a thread of this process (the local executor; Ray's client side)."""

    def __init__(self, slot: Slot, spec: RunSpec, target: Callable[[threading.Event], TrainResult]):
        self.slot = slot
        self.spec = spec
        self._cancel = threading.Event()
        self.cancel_reason: str | None = None
        self._result: TrainResult | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(target,), name=f"run-{spec.exp_id}", daemon=True)
        self._thread.start()

    def _run(self, target) -> None:
        try:
            self._result = target(self._cancel)
        except BaseException as e:  # the engine records it as a crash; it must never hang waiting
            self._error = e
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> TrainResult | None:
        if not self._done.wait(timeout):
            return None
        if self._error is not None:
            return TrainResult(ok=False, val_bpb=None, peak_vram_mb=None, metrics={},
                               reason=f"executor error: {type(self._error).__name__}: {self._error}", tail=[],
                               duration_s=0.0)
        return self._result

    def cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self._cancel.set()
