"""One sample a second of what the workspace's runs use and do: GPUs, CPU and memory, each slot's trainer, live runs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from core import procs
from core.gpu import GpuSample
from core.procs import MachineMemory

from .runs import Curve, RunView, RunWatcher

PID_SCAN_S = 5.0  # the engine's process tree is re-read this often (a scan of every process: most of the cost)
SLOT_SCAN_S = 15.0  # a run's own tree (its data-loader workers), for its memory: they appear at its start


@dataclass(frozen=True)
class SlotUse:
    """What one slot's trainer holds: resident memory of its process tree, its GPU memory where NVML says."""

    rss_mb: float | None = None
    vram_mb: float | None = None
    vram_shared: bool = False  # several runs share the slot's GPU: NVML's per-process numbers are not split


@dataclass(frozen=True)
class Sample:
    gpu: GpuSample | None
    trainer_rss_mb: float | None = None  # every process under the engine (trainers, agents)
    engine_rss_mb: float | None = None
    cpu_percent: float | None = None
    cpu_count: int = 1
    memory: MachineMemory | None = None
    runs: dict[str, RunView] = field(default_factory=dict)  # experiment id -> its live view
    slots: dict[str, SlotUse] = field(default_factory=dict)  # slot id -> what its run uses
    best_id: str | None = None
    best_curve: Curve = ()
    ts: float = 0.0


class Monitor:
    """Takes Samples (from a worker thread: nothing here touches widgets). gpu: a core.gpu.GpuMonitor."""

    def __init__(self, gpu, experiments_dir, clock=time.time):
        self.gpu = gpu
        self.runs = RunWatcher(experiments_dir)
        self.clock = clock
        self._trees: dict[int, tuple[float, list[int]]] = {}  # root pid -> (scanned at, descendants)
        procs.cpu_percent()  # the first call only starts psutil's measurement window

    def _tree(self, pid: int, now: float, every: float = PID_SCAN_S) -> list[int]:
        hit = self._trees.get(pid)
        if hit is None or now - hit[0] >= every:
            # a scan of every process is most of an idle dashboard's CPU: reuse a tree for a few seconds
            hit = self._trees[pid] = (now, procs.descendants(pid))
        return [p for p in hit[1] if procs.pid_alive(p)]

    def sample(self, snap) -> Sample:
        mono = time.monotonic()
        engine = snap.engine if snap is not None and snap.engine_alive else None
        slots = snap.slots if snap is not None else ()
        trainer = engine_rss = None
        pids: list[int] = []
        slot_pids: dict[str, list[int]] = {}
        if engine is not None and engine.pid:
            pids = self._tree(engine.pid, mono)
            engine_rss = procs.rss_mb(engine.pid)
            if pids:
                trainer = procs.tree_rss_mb(pids)
            for s in slots:
                if s.experiment and s.child is not None and procs.pid_alive(s.child.pid):
                    slot_pids[s.id] = [s.child.pid, *self._tree(s.child.pid, mono, SLOT_SCAN_S)]
        keep = {engine.pid} if engine is not None and engine.pid else set()
        keep.update(s.child.pid for s in slots if s.child is not None)
        for pid in [p for p in self._trees if p not in keep]:
            del self._trees[pid]
        gpu = self.gpu.sample(pids=pids) if self.gpu is not None else None
        uses = {}
        for s in slots:
            if not s.experiment:
                continue
            got = slot_pids.get(s.id)
            rss = procs.tree_rss_mb(got) if got else None
            vram, shared = None, False
            if gpu is not None and gpu.available and s.gpu is not None:
                on_gpu = [o for o in slots if o.experiment and o.gpu == s.gpu]
                info = next((g for g in gpu.gpus if g.index == s.gpu), None)
                shared = len(on_gpu) > 1
                if info is not None and not shared:
                    vram = info.process_memory_mb
            uses[s.id] = SlotUse(rss, vram, shared)
        now = self.clock()
        best_id = snap.best_exp_id if snap is not None else None
        return Sample(gpu=gpu, trainer_rss_mb=trainer, engine_rss_mb=engine_rss, cpu_percent=procs.cpu_percent(),
                      cpu_count=procs.cpu_count(), memory=procs.machine_memory(), runs=self.runs.sample(slots, now),
                      slots=uses, best_id=best_id, best_curve=self.runs.best_curve(best_id), ts=now)
