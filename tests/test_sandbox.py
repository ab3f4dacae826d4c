"""core/sandbox.py, the run launcher: what a sandboxed command can and cannot reach, and that nothing it starts
outlives it (setsid and double forks included)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core import sandbox
from core.training import device_paths, system_read_paths

LAUNCHER = str(Path(sandbox.__file__).resolve())
ABI = sandbox.landlock_abi()[0]
needs_landlock = pytest.mark.skipif(ABI < 1, reason="this kernel has no Landlock")


def launch(tmp_path, code: str, *, landlock: bool = True, ro=(), rw=(), env=None, timeout=60):
    script = tmp_path / "cmd.py"
    script.write_text(textwrap.dedent(code))
    argv = [sys.executable, "-I", LAUNCHER]
    if landlock:
        argv.append("--landlock")
        for p in [*ro, *system_read_paths()]:
            argv += ["--ro", str(p)]
        for p in rw:
            argv += ["--rw", str(p)]
        for p in device_paths():
            argv += ["--dev", p]
    argv += ["--", sys.executable, str(script)]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


PROBE = '''
import json, os, sys
def can(fn):
    try:
        fn()
        return "yes"
    except OSError as e:
        return f"no ({e.errno})"
ppid = os.getppid()
print(json.dumps({
    "read_ro": can(lambda: open(os.environ["RO_FILE"]).read()),
    "write_ro": can(lambda: open(os.environ["RO_FILE"], "a").write("x")),
    "read_hidden": can(lambda: open(os.environ["HIDDEN_FILE"]).read()),
    "write_rw": can(lambda: open(os.path.join(os.environ["RW_DIR"], "out.txt"), "w").write("x")),
    "write_tmp": can(lambda: open("/tmp/autoresearch-sandbox-test", "w").write("x")),
    "parent_environ": can(lambda: open(f"/proc/{ppid}/environ", "rb").read()),
    "init_environ": can(lambda: open("/proc/1/environ", "rb").read()),
    "own_status": can(lambda: open("/proc/self/status").read()),
    "cpuinfo": can(lambda: open("/proc/cpuinfo").read()),
    "signal_parent": can(lambda: os.kill(ppid, 0)),
    "connect_tcp": can(lambda: __import__("socket").create_connection(("127.0.0.1", int(os.environ["PORT"])), 2)),
    "devnull": can(lambda: open("/dev/null", "w").write("x")),
    "cap_eff": [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0],
}))
'''


@needs_landlock
def test_a_sandboxed_command_reaches_only_what_it_is_given(tmp_path):
    ro_dir, rw_dir, hidden = tmp_path / "ro", tmp_path / "rw", tmp_path / "hidden"
    for d in (ro_dir, rw_dir, hidden):
        d.mkdir()
    (ro_dir / "data.txt").write_text("training data")
    (hidden / "val.txt").write_text("validation data")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    env = dict(os.environ, RO_FILE=str(ro_dir / "data.txt"), HIDDEN_FILE=str(hidden / "val.txt"), RW_DIR=str(rw_dir),
               PORT=str(server.getsockname()[1]))
    try:
        # the launcher itself gets the canary in its exec-time environment, as an engine would have it
        proc = launch(tmp_path, PROBE, ro=[ro_dir, tmp_path / "cmd.py"], rw=[rw_dir],
                      env=dict(env, CANARY_API_KEY="sk-canary-launcher"))
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    got = __import__("json").loads(proc.stdout)
    assert got["read_ro"] == "yes" and got["write_ro"].startswith("no")
    assert got["read_hidden"].startswith("no") and got["write_rw"] == "yes" and got["write_tmp"].startswith("no")
    assert got["parent_environ"].startswith("no") and got["init_environ"].startswith("no")
    assert got["own_status"] == "yes" and got["cpuinfo"] == "yes" and got["devnull"] == "yes"
    assert got["signal_parent"].startswith("no")  # Landlock signal scoping (ABI 6)
    assert got["connect_tcp"].startswith("no")  # ABI 4: no TCP bind or connect
    assert int(got["cap_eff"], 16) == 0  # even as root: no capability left
    assert "sk-canary" not in proc.stdout + proc.stderr


SPAWNER = '''
import os, sys, time
# a double fork into a new session with a cleared environment: out of the process group and unmarked
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execve("/bin/sleep", ["sleep", "600"], {})
    os._exit(0)
child = os.fork()
if child == 0:
    time.sleep(600)
    os._exit(0)
time.sleep(0.3)
print("spawned", flush=True)
if sys.argv[-1] != "hang":
    sys.exit(3)
time.sleep(600)
'''


def _sleepers_below(tmp_path) -> list[int]:
    import psutil
    out = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if p.info["cmdline"] and p.info["cmdline"][:2] == ["sleep", "600"] and p.info["cwd"] == str(tmp_path):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


@pytest.mark.parametrize("landlock", [pytest.param(True, marks=needs_landlock), False])
def test_nothing_started_by_the_command_outlives_it(tmp_path, landlock):
    proc = launch(tmp_path, SPAWNER, landlock=landlock, ro=[tmp_path / "cmd.py"])
    assert proc.returncode == 3 and "spawned" in proc.stdout  # the command's own exit status
    assert "autoresearch: stopped 2 processes that cmd.py left running" in proc.stderr
    assert _sleepers_below(tmp_path) == []


@needs_landlock
def test_stopping_the_launcher_stops_the_whole_tree(tmp_path):
    script = tmp_path / "cmd.py"
    script.write_text(textwrap.dedent(SPAWNER))
    argv = [sys.executable, "-I", LAUNCHER, "--landlock", *sum((["--ro", p] for p in system_read_paths()), []),
            "--ro", str(script), "--", sys.executable, str(script), "hang"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "spawned"
    assert len(_sleepers_below(tmp_path)) == 1
    t0 = time.monotonic()
    proc.terminate()  # the launcher only: the engine's kill reaches the group, a setsid child is not in it
    assert proc.wait(timeout=30) == 128 + 15
    assert time.monotonic() - t0 < 10
    assert _sleepers_below(tmp_path) == []


def test_a_command_that_cannot_start_is_exit_126(tmp_path):
    proc = subprocess.run([sys.executable, "-I", LAUNCHER, "--", "/nonexistent/trainer"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == sandbox.SANDBOX_EXIT
    assert "autoresearch: cannot start /nonexistent/trainer in its sandbox" in proc.stderr


def test_landlock_abi_is_a_number_or_a_sentence():
    abi, why = sandbox.landlock_abi()
    assert (abi >= 1 and why is None) or (abi == 0 and why and why.endswith(("sandbox", "LSM list)")))
