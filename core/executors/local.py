"""The local executor: each run is a subprocess on this machine, in a slot of its GPUs or of its CPU cores."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..containment import workspace_key
from ..errors import UserError
from ..procs import ProcessId, cpu_count
from ..training import run_training
from ..workspace import STATE_DIR
from .base import RunCallbacks, RunSpec, Slot, ThreadRunHandle

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def parse_gpus(text: str, visible: list[int]) -> list[int]:
    """`--gpus 0,1,3` or `--gpus all` -> device indices; UserError naming what is wrong."""
    text = (text or "").strip().lower()
    if text == "all":
        if not visible:
            raise UserError("--gpus all: no NVIDIA GPU is visible on this machine; use --slots N for CPU slots.")
        return list(visible)
    try:
        gpus = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--gpus {text!r} is not a list of GPU indices; write e.g. --gpus 0,1,3 or --gpus all.") from None
    if not gpus:
        raise UserError("--gpus is empty; write e.g. --gpus 0,1,3 or --gpus all.")
    if len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus {text} names a GPU twice; each GPU is one slot.")
    missing = [g for g in gpus if g not in visible]
    if missing:
        shown = ", ".join(map(str, visible)) if visible else "none"
        raise UserError(f"--gpus {text}: GPU {missing[0]} is not visible on this machine (visible: {shown}).")
    return gpus


def gpu_slots(gpus: list[int]) -> list[Slot]:
    """One slot per GPU; the trainer sees only its own device (CUDA_VISIBLE_DEVICES)."""
    # PCI order: CUDA's default numbering (fastest first) can differ from NVML's, which the dashboard shows
    return [Slot(str(i), f"GPU {g}", gpu=g, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(g)})
            for i, g in enumerate(gpus)]


def cpu_slots(n: int, cores: int | None = None) -> list[Slot]:
    """n slots sharing the CPU cores: each gets cores // n of them (its affinity) and as many torch threads."""
    cores = cores or cpu_count()
    if n == 1:
        return [Slot("0", "CPU")]
    per = max(1, cores // n)
    slots = []
    for i in range(n):
        cpus = tuple(range(i * per, (i + 1) * per)) if cores >= n else None
        env = {v: str(per) for v in _THREAD_VARS}
        where = f"cores {cpus[0]}-{cpus[-1]}" if cpus and len(cpus) > 1 else (f"core {cpus[0]}" if cpus else "shared")
        slots.append(Slot(str(i), f"CPU {i + 1}/{n} ({where})", cpus=cpus, env=env))
    return slots


def plan_slots(gpus: str | None, slots: int | None, visible_gpus: list[int], mps: bool = False) -> list[Slot]:
    """The slots of `autoresearch loop`: --gpus on a CUDA box, --slots N on CPU, one slot by default."""
    if slots is not None and slots < 1:
        raise UserError(f"--slots must be at least 1, not {slots}.")
    if gpus:
        chosen = parse_gpus(gpus, visible_gpus)
        if slots is not None and slots != len(chosen):
            raise UserError(f"--gpus {gpus} gives {len(chosen)} slot(s) but --slots says {slots}; give one of them.")
        return gpu_slots(chosen)
    if slots is None or slots == 1:
        return [Slot("0", "GPU 0" if visible_gpus else ("MPS" if mps else "CPU"))]
    if visible_gpus:
        raise UserError(f"--slots {slots} on a machine with NVIDIA GPUs: choose the GPUs with --gpus (e.g. "
                        f"--gpus {','.join(map(str, visible_gpus[:slots]))} or --gpus all).")
    if mps:
        raise UserError("Apple MPS runs one trainer at a time: use one slot (drop --slots).")
    return cpu_slots(slots)


class LocalExecutor:
    """Runs each experiment's training as a subprocess in WORKSPACE/.autoresearch/runs/<id> on this machine."""

    name = "local"

    def __init__(self, ws_root: Path, slots: list[Slot], argv: list[str] | None = None):
        self.ws_root = Path(ws_root)
        self._slots = list(slots)
        self.argv = argv
        self.owner = workspace_key(self.ws_root)  # the run marker names this workspace

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def start(self, slot: Slot, spec: RunSpec, callbacks: RunCallbacks) -> ThreadRunHandle:
        env = {**slot.env, **spec.env}
        if spec.seed is not None:
            env["AUTORESEARCH_SEED"] = str(spec.seed)
        run_dir = self.ws_root / STATE_DIR / "runs" / spec.exp_id

        def target(cancel):
            return run_training(spec.files, run_dir, logs=list(spec.logs), metrics_out=spec.metrics_out,
                                timeout=spec.timeout, env=env, cancel=cancel,
                                on_start=lambda pid: callbacks.on_start(ProcessId.of(pid), None),
                                on_phase=callbacks.on_phase, on_output=callbacks.on_output, cpus=slot.cpus,
                                argv=self.argv, owner=self.owner)

        return ThreadRunHandle(slot, spec, target)

    def cleanup_orphans(self, log: Callable[[str], None]) -> None:
        """Nothing beyond recovery: it kills what carries this workspace's run marker on this machine."""

    def close(self) -> None:
        pass
