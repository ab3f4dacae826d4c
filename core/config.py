"""Loop options: defaults, the saved .autoresearch/config.json, and flags given on the command line."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, fields

from .errors import UserError
from .workspace import Workspace, atomic_write_json

# saved to config.json, so a later `autoresearch loop` (or `s` in the TUI) restarts with the same options
SAVED = ("tag", "agent", "agent_cmd", "model", "min_delta", "simplify_tolerance", "timeout", "agent_timeout",
         "gpus", "slots", "lookahead", "agents", "executor", "ray_address", "decide", "z", "noise_runs", "confirm",
         "early_stop", "max_cost", "ray_resource", "ray_cpus", "ray_cache")
EXECUTORS = ("local", "ray")
DEFAULT_AGENT_TIMEOUT = 900.0
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def default_tag(now: float | None = None) -> str:
    """Month and day, e.g. nov26 (upstream's habit)."""
    t = time.localtime(now)
    return f"{_MONTHS[t.tm_mon - 1]}{t.tm_mday}"


@dataclass
class LoopConfig:
    tag: str | None = None
    agent: str = "auto"
    agent_cmd: str | None = None
    model: str | None = None
    max_experiments: int | None = None  # not saved: a limit belongs to one session
    min_delta: float = 0.0
    simplify_tolerance: float = 0.0005
    timeout: float | None = None  # trainer hard timeout; None: TIME_BUDGET + STARTUP_ALLOWANCE + max(TIME_BUDGET, 60)
    agent_timeout: float = DEFAULT_AGENT_TIMEOUT
    gpus: str | None = None  # "0,1,3" or "all": one slot per GPU
    slots: int | None = None  # CPU slots (or the cap on a Ray cluster's slots); None: one slot
    lookahead: int = 1  # proposals made ahead beyond the number of slots (0: strictly sequential)
    agents: int | None = None  # cap on agent processes at once; None: slots + lookahead
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    ray_resource: str | None = None  # what a Ray run reserves: GPU (default where there are GPUs), CPU, or a custom one
    ray_cpus: int | None = None  # CPUs a Ray run reserves (also its trainer's threads)
    ray_cache: str | None = None  # a data cache path valid on every node (else each node prepares its own)
    decide: str = "auto"  # auto (noise once sigma is known, else plain) | noise | plain (upstream's rule)
    z: float = 2.0  # keep only a gain beyond z * sigma (and never less than min_delta)
    noise_runs: int | None = None  # extra runs of the baseline for sigma; None: the profile's default; 0: off
    confirm: str = "wins"  # wins: every win is re-run once before it is kept; borderline: only wins inside the band
    early_stop: bool = True  # stop a run that is clearly losing against the best run's curve
    max_cost: float | None = None  # pause when the agent's spending reaches this many USD
    noise_only: bool = False  # `autoresearch noise`: measure sigma, then exit (not saved)

    def agent_config(self) -> dict:
        """What core.agents.make_agent gets."""
        return {"agent_cmd": self.agent_cmd, "model": self.model, "timeout": self.agent_timeout}

    def saved(self) -> dict:
        return {k: getattr(self, k) for k in SAVED}

    def validate(self) -> "LoopConfig":
        if self.tag is not None and (not _TAG_RE.match(self.tag) or ".." in self.tag or self.tag.endswith(".lock")):
            raise UserError(f"tag {self.tag!r} cannot be part of a branch name; use letters, digits, '.', '_' "
                            "or '-' (e.g. --tag nov26).")
        for name in ("min_delta", "simplify_tolerance"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise UserError(f"--{name.replace('_', '-')} must be a number >= 0, not {v!r}.")
        for name in ("timeout", "agent_timeout"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                  or not math.isfinite(v) or v <= 0):
                raise UserError(f"--{name.replace('_', '-')} must be a number of seconds > 0, not {v!r}.")
        if not isinstance(self.lookahead, int) or isinstance(self.lookahead, bool) or self.lookahead < 0:
            raise UserError(f"--lookahead must be a whole number >= 0, not {self.lookahead!r}.")
        for name in ("slots", "agents"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise UserError(f"--{name} must be a whole number >= 1, not {v!r}.")
        if self.decide not in ("auto", "noise", "plain"):
            raise UserError(f"--decide must be auto, noise or plain, not {self.decide!r}.")
        if self.confirm not in ("wins", "borderline"):
            raise UserError(f"--confirm must be wins or borderline, not {self.confirm!r}.")
        if not isinstance(self.z, (int, float)) or isinstance(self.z, bool) or not math.isfinite(self.z) or self.z < 0:
            raise UserError(f"--z must be a number >= 0, not {self.z!r}.")
        if self.noise_runs is not None and (not isinstance(self.noise_runs, int) or isinstance(self.noise_runs, bool)
                                            or self.noise_runs < 0):
            raise UserError(f"--noise-runs must be a whole number >= 0, not {self.noise_runs!r}.")
        if self.max_cost is not None and (not isinstance(self.max_cost, (int, float)) or isinstance(self.max_cost, bool)
                                          or not math.isfinite(self.max_cost) or self.max_cost <= 0):
            raise UserError(f"--max-cost must be a number of US dollars > 0, not {self.max_cost!r}.")
        if self.executor not in EXECUTORS:
            raise UserError(f"unknown executor {self.executor!r}; choose one of {', '.join(EXECUTORS)}.")
        if self.max_experiments is not None and self.max_experiments < 1:
            raise UserError(f"--max must be at least 1, not {self.max_experiments}.")
        if not isinstance(self.agent, str) or not self.agent:
            raise UserError("the agent name is empty; pass --agent auto|claude|codex|anthropic|command|mutate.")
        return self


def load_saved(ws: Workspace) -> dict:
    """The options of the last loop; a broken config.json is reported, never silently replaced."""
    path = ws.config_json
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}; fix its permissions or delete it.") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); fix it or delete it to use "
                        "the defaults.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object; fix it or delete it to use the defaults.")
    return {k: data[k] for k in SAVED if k in data}


def resolve(ws: Workspace, args=None) -> LoopConfig:
    """Flags given now win; then the saved options; then the defaults (tag: today's date)."""
    cfg = LoopConfig()
    known = {f.name for f in fields(LoopConfig)}
    saved = load_saved(ws)
    for k, v in saved.items():
        if k in known and v is not None:
            setattr(cfg, k, v)
    if args is not None:
        flag_map = {"tag": "tag", "agent": "agent", "agent_cmd": "agent_cmd", "model": "model",
                    "max": "max_experiments", "min_delta": "min_delta",
                    "simplify_tolerance": "simplify_tolerance", "timeout": "timeout",
                    "agent_timeout": "agent_timeout", "gpus": "gpus", "slots": "slots", "lookahead": "lookahead",
                    "agents": "agents", "executor": "executor", "ray_address": "ray_address", "decide": "decide",
                    "z": "z", "noise_runs": "noise_runs", "confirm": "confirm", "early_stop": "early_stop",
                    "max_cost": "max_cost", "ray_resource": "ray_resource", "ray_cpus": "ray_cpus",
                    "ray_cache": "ray_cache"}
        for flag, attr in flag_map.items():
            v = getattr(args, flag, None)
            if v is not None:
                setattr(cfg, attr, v)
        # --gpus and --slots say the same thing two ways: the one given now replaces a saved other
        if getattr(args, "slots", None) is not None and getattr(args, "gpus", None) is None \
                and cfg.executor == "local":
            cfg.gpus = None
        if getattr(args, "gpus", None) is not None and getattr(args, "slots", None) is None:
            cfg.slots = None
    if isinstance(cfg.early_stop, str):
        cfg.early_stop = cfg.early_stop.lower() in ("on", "true", "yes", "1")
    for name in ("min_delta", "simplify_tolerance", "timeout", "agent_timeout", "z", "max_cost"):
        v = getattr(cfg, name)
        if isinstance(v, int) and not isinstance(v, bool):
            setattr(cfg, name, float(v))
    if cfg.tag is None:
        cfg.tag = default_tag()
    return cfg.validate()


def save(ws: Workspace, cfg: LoopConfig) -> None:
    atomic_write_json(ws.config_json, cfg.saved())
