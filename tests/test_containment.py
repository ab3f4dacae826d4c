"""core.containment: run markers, the sweep at the end of a run, orphans of a dead engine, secrets out of the
engine's exec-time environment."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_fixtures import FAKE_TRAIN, cli_env, make_workspace, wait_for, write_agent_files

from core import containment
from core.procs import pid_alive

ROOT = Path(__file__).resolve().parents[1]


def _detached_sleeper(marker: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    if marker:
        env[containment.RUN_ENV] = marker
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env,
                            start_new_session=True)


def test_sweep_run_kills_marked_processes_only(tmp_path):
    key = containment.workspace_key(tmp_path)
    mine = _detached_sleeper(containment.run_marker(key, "0007"))
    other_run = _detached_sleeper(containment.run_marker(key, "0008"))
    unmarked = _detached_sleeper(None)
    try:
        wait_for(lambda: containment.marked(lambda m: m.endswith("/0007")), what="marked process")
        assert containment.sweep_run(containment.run_marker(key, "0007"), grace=1.0) == 1
        mine.wait(timeout=10)
        assert not pid_alive(mine.pid) and pid_alive(other_run.pid) and pid_alive(unmarked.pid)
    finally:
        for p in (mine, other_run, unmarked):
            p.kill()
            p.wait()


def test_kill_orphans_ends_every_run_of_this_workspace_and_no_other(tmp_path, tmp_path_factory):
    here, elsewhere = containment.workspace_key(tmp_path), containment.workspace_key(tmp_path_factory.mktemp("o"))
    ours = [_detached_sleeper(containment.run_marker(here, r)) for r in ("0001", "0002")]
    theirs = _detached_sleeper(containment.run_marker(elsewhere, "0001"))
    said = []
    try:
        wait_for(lambda: len(containment.marked(lambda m: m.startswith(here))) == 2, what="marked processes")
        assert containment.kill_orphans(tmp_path, said.append, grace=1.0) == 2
        for p in ours:
            p.wait(timeout=10)
        assert pid_alive(theirs.pid)
        assert said == ["autoresearch: stopped 2 processes left running by an interrupted run."]
    finally:
        for p in (*ours, theirs):
            p.kill()
            p.wait()


def test_become_subreaper_adopts_double_forked_descendants(tmp_path):
    code = ("import os, time, sys\nsys.path.insert(0, sys.argv[1])\nfrom core.containment import become_subreaper\n"
            "print(become_subreaper())\nr, w = os.pipe()\n"
            "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(0.5)\n"
            "        os.write(w, str(os.getppid()).encode())\n        os._exit(0)\n    os._exit(0)\n"
            "os.wait()\nprint(os.read(r, 32).decode(), os.getpid())\ntime.sleep(0.3)\nos.wait()\n")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60)
    lines = out.stdout.split()
    assert out.returncode == 0, out.stderr
    if sys.platform.startswith("linux"):
        assert lines[0] == "True" and lines[1] == lines[2]  # the grandchild's parent is now the subreaper
    else:
        assert lines[0] == "False"


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="checks /proc (Linux)")
def test_reexec_moves_secrets_out_of_the_exec_time_environment():
    code = ("import os, sys\nsys.path.insert(0, sys.argv[1])\nfrom core.containment import reexec_without_secrets\n"
            "print('restored' if reexec_without_secrets() else 'nothing')\n"
            "print('in /proc:', open('/proc/self/environ', 'rb').read().count(b'sk-canary'))\n"
            "print('in os.environ:', os.environ.get('CANARY_API_KEY'))\n"
            "import subprocess\n"
            "print('child gets it:', subprocess.run([sys.executable, '-c', 'import os; "
            "print(os.environ.get(\"CANARY_API_KEY\"))'], capture_output=True, text=True).stdout.strip())\n")
    env = dict(os.environ, CANARY_API_KEY="sk-canary-0042")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["restored", "in /proc: 0", "in os.environ: sk-canary-0042",
                                       "child gets it: sk-canary-0042"]
    plain = subprocess.run([sys.executable, "-c", code, str(ROOT)], env={k: v for k, v in env.items()
                           if "API_KEY" not in k}, capture_output=True, text=True, timeout=60)
    assert plain.stdout.splitlines()[0] == "nothing"


# the baseline itself escapes: a double fork into a new session with a cleared environment, then it hangs
ESCAPING_TRAIN = FAKE_TRAIN.replace('print(f"training pid {os.getpid()}", flush=True)', '''
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve("/bin/sleep", ["sleep", "600"], {})
    os._exit(0)
os.wait()
print(f"training pid {os.getpid()}", flush=True)
time.sleep(600)''')


def _sleepers() -> list[int]:
    import psutil
    return [p.pid for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [])[:2] == ["sleep", "600"]]


def test_after_kill_9_of_the_engine_kill_orphans_ends_the_run_and_its_escaped_children(tmp_path):
    before = set(_sleepers())
    ws = make_workspace(tmp_path / "ws", train=ESCAPING_TRAIN)
    agent = write_agent_files(tmp_path, [])
    engine = subprocess.Popen([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--tag", "k",
                               "--agent", "command", "--agent-cmd", agent, "--max", "1"], cwd=ROOT, env=cli_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: ws.run_log.exists() and re.search(r"training pid (\d+)", ws.run_log.read_text()),
                 timeout=120, what="the trainer")
        trainer = int(re.search(r"training pid (\d+)", ws.run_log.read_text()).group(1))
        escaped = wait_for(lambda: set(_sleepers()) - before, what="the escaped sleeper")
        os.kill(engine.pid, signal.SIGKILL)
        engine.wait()
        time.sleep(0.5)
        assert pid_alive(trainer) and all(pid_alive(p) for p in escaped)  # a dead engine stops nothing by itself
        assert containment.kill_orphans(ws.root, grace=2.0) >= 1  # the launcher (it stops its whole tree)
        wait_for(lambda: not pid_alive(trainer) and not any(pid_alive(p) for p in escaped), timeout=15,
                 what="the run and its escaped child to end")
    finally:
        for pid in set(_sleepers()) - before:
            os.kill(pid, signal.SIGKILL)
        if engine.poll() is None:
            os.killpg(engine.pid, signal.SIGKILL)
