"""Executors: where one training run executes (local subprocess, Ray task); see base.py for the interface."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def make_executor(ws_root: Path, cfg, trainer_argv: list[str] | None = None):
    """The executor `autoresearch loop` asked for (LoopConfig: executor, gpus, slots, ray_address)."""
    if cfg.executor == "ray":
        try:
            from .ray import RayExecutor
        except ImportError as e:
            if "ray" in str(e).lower():
                raise UserError("--executor ray needs the ray extra; install it with `uv sync --extra ray`, then "
                                "start the loop again.") from None
            raise
        return RayExecutor.from_config(ws_root, cfg)
    from ..hardware import nvml_gpus
    from .local import LocalExecutor, plan_slots

    visible = [g["index"] for g in nvml_gpus()]
    mps = False
    if not visible:
        from ..hardware import _mps_possible
        mps = _mps_possible()
    return LocalExecutor(ws_root, plan_slots(cfg.gpus, cfg.slots, visible, mps=mps), argv=trainer_argv)
