"""`autoresearch loop --detach`: start the engine in its own session, output to .autoresearch/engine.log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import core

from .config import LoopConfig
from .errors import UserError
from .workspace import Workspace, read_json

START_WAIT_S = 60.0  # recovery may have to stop an orphaned trainer (up to 5 s) and run git


def engine_argv(ws: Workspace, cfg: LoopConfig) -> list[str]:
    """The command line of a detached engine: every option explicit, so it does not depend on config.json."""
    argv = [sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--tag", cfg.tag, "--agent", cfg.agent,
            "--min-delta", repr(cfg.min_delta), "--simplify-tolerance", repr(cfg.simplify_tolerance),
            "--agent-timeout", repr(cfg.agent_timeout)]
    if cfg.agent_cmd:
        argv += ["--agent-cmd", cfg.agent_cmd]
    if cfg.model:
        argv += ["--model", cfg.model]
    if cfg.max_experiments:
        argv += ["--max", str(cfg.max_experiments)]
    if cfg.timeout:
        argv += ["--timeout", repr(cfg.timeout)]
    argv += ["--lookahead", str(cfg.lookahead), "--executor", cfg.executor, "--decide", cfg.decide,
             "--z", repr(cfg.z), "--confirm", cfg.confirm, "--early-stop", "on" if cfg.early_stop else "off"]
    for flag, value in (("--gpus", cfg.gpus), ("--slots", cfg.slots), ("--agents", cfg.agents),
                        ("--ray-address", cfg.ray_address), ("--noise-runs", cfg.noise_runs),
                        ("--max-cost", cfg.max_cost)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def spawn(ws: Workspace, argv: list[str]) -> subprocess.Popen:
    """Start argv in a new session (no controlling terminal: an SSH drop sends it no SIGHUP)."""
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    root = str(Path(core.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    with open(ws.engine_log, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} detached engine: {' '.join(argv[3:])}\n".encode())
        log.flush()
        return subprocess.Popen(argv, cwd=str(ws.root), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def _last_error(ws: Workspace, offset: int) -> str | None:
    try:
        with open(ws.engine_log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    for line in reversed(text.splitlines()):
        if line.startswith("autoresearch: "):
            return line[len("autoresearch: "):].strip()
    return None


def start_detached(ws: Workspace, cfg: LoopConfig, out=None) -> int:
    """Start the engine in the background and wait until it runs (or report why it did not start)."""
    out = out or sys.stdout
    try:
        offset = ws.engine_log.stat().st_size
    except OSError:
        offset = 0
    proc = spawn(ws, engine_argv(ws, cfg))
    deadline = time.monotonic() + START_WAIT_S
    started = False
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        st = read_json(ws.engine_json, None)
        if isinstance(st, dict) and st.get("pid") == proc.pid and st.get("status") in ("running", "paused",
                                                                                         "stopping"):
            started = True
            break
        time.sleep(0.05)
    if not started and proc.poll() is not None:
        err = _last_error(ws, offset)
        if proc.returncode == 0:
            print(f"autoresearch: the detached engine finished at once ({err or 'nothing to do'}).", file=out)
            return 0
        raise UserError(err or f"the detached engine exited at once (code {proc.returncode}); see {ws.engine_log}.")
    c = f"autoresearch -C {ws.root}"
    print(f"engine started in the background (pid {proc.pid}); its log is {ws.engine_log}.", file=out)
    print(f"  watch: autoresearch-tui {ws.root}   or   {c} status", file=out)
    print(f"  stop:  {c} stop   (after the current experiment; `{c} abort` kills it now)", file=out)
    return 0
