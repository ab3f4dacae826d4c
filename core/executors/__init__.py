"""Executors: where one training run executes (local subprocess, Ray task); see base.py for the interface."""

from __future__ import annotations

from pathlib import Path


def make_executor(ws_root: Path, cfg, trainer_argv: list[str] | None = None, log=print):
    """The executor `autoresearch loop` asked for (LoopConfig: executor, gpus, slots, ray_*)."""
    if cfg.executor == "ray":
        from .ray import RayExecutor  # imports ray only when used: without the extra, one sentence says how to add it

        return RayExecutor.from_config(ws_root, cfg, log=log)
    from ..hardware import nvml_gpus
    from .local import LocalExecutor, plan_slots

    visible = [g["index"] for g in nvml_gpus()]
    mps = False
    if not visible:
        from ..hardware import _mps_possible
        mps = _mps_possible()
    return LocalExecutor(ws_root, plan_slots(cfg.gpus, cfg.slots, visible, mps=mps), argv=trainer_argv)
