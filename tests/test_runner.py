"""core.runner: progress-line parsing, process-group kills, timeouts, and trusting only the metrics file."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from engine_fixtures import FAKE_PREPARE, FAKE_TRAIN, wait_for

from core.procs import pid_alive
from core.pyconst import read_one as read_constant
from core.runner import LineTail, run, split_progress
from core.training import LocalRunner, default_timeout, parse_metrics, read_time_budget

# spawns a grandchild in the same process group, writes its pid, then hangs
SPAWNER = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(child.pid))
print("spawned", flush=True)
time.sleep(600)
"""


def test_split_progress_collapses_carriage_returns():
    lines, pending = split_progress("a\rb\rc\nd\r\ne\rf")
    assert lines == ["c", "d"]
    assert pending == "e\rf"
    assert split_progress("") == ([], "")
    assert split_progress("x\n") == (["x"], "")


def test_line_tail_keeps_last_lines_and_live_line():
    t = LineTail(n=3)
    for i in range(10):
        t.feed(f"line {i}\n".encode())
    t.feed(b"step 1\rstep 2\rst")
    t.feed(b"ep 3")
    assert t.live == "step 3"
    assert t.lines() == ["line 8", "line 9", "step 3"]
    # multi-byte characters split across chunks decode cleanly
    t2 = LineTail()
    data = "é\n".encode()
    t2.feed(data[:1])
    t2.feed(data[1:])
    assert t2.lines() == ["é"]


def test_line_tail_memory_is_bounded_without_newlines():
    t = LineTail()
    for i in range(2000):
        t.feed((f"\rstep {i} " + "x" * 100).encode())
    assert len(t._pending) < 70_000
    assert t.live.startswith("step 1999")


def test_run_streams_bytes_to_every_log(tmp_path):
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    seen = []
    code = "import sys, time\nfor i in range(3):\n    sys.stdout.write(f'\\rstep {i}'); sys.stdout.flush(); time.sleep(0.05)\n" \
           "print(); print('err', file=sys.stderr); sys.exit(3)"
    res = run([sys.executable, "-c", code], cwd=tmp_path, env=None, logs=logs, timeout=30, cancel=None,
              on_output=seen.append)
    assert res.returncode == 3 and not res.timed_out and not res.cancelled
    for log in logs:
        assert log.read_bytes() == b"\rstep 0\rstep 1\rstep 2\nerr\n"
    assert b"".join(seen) == logs[0].read_bytes()
    assert res.tail == ["step 2", "err"]


def test_timeout_kills_the_whole_group_including_grandchildren(tmp_path):
    pidfile = tmp_path / "gc.pid"
    t0 = time.monotonic()
    res = run([sys.executable, "-c", SPAWNER, str(pidfile)], cwd=tmp_path, env=None, logs=[tmp_path / "l"],
              timeout=1.0, cancel=None)
    assert res.timed_out and time.monotonic() - t0 < 8
    grandchild = int(pidfile.read_text())
    assert not pid_alive(grandchild)
    assert not pid_alive(res.pid)
    assert "spawned" in res.tail


def test_cancel_kills_the_group_at_once(tmp_path):
    pidfile = tmp_path / "gc.pid"
    cancel = threading.Event()
    threading.Thread(target=lambda: (wait_for(lambda: pidfile.exists() and pidfile.read_text()), cancel.set()),
                     daemon=True).start()
    t0 = time.monotonic()
    res = run([sys.executable, "-c", SPAWNER, str(pidfile)], cwd=tmp_path, env=None, logs=[], timeout=60,
              cancel=cancel)
    assert res.cancelled and not res.timed_out
    assert time.monotonic() - t0 < 10
    assert not pid_alive(int(pidfile.read_text()))


def test_term_ignoring_process_gets_killed(tmp_path):
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(600)"
    t0 = time.monotonic()
    res = run([sys.executable, "-c", code], cwd=tmp_path, env=None, logs=[], timeout=0.5, cancel=None)
    assert res.timed_out and 5 <= time.monotonic() - t0 < 15  # TERM, 5 s, then KILL
    assert not pid_alive(res.pid)


def test_helpers_left_behind_are_killed_when_the_command_exits(tmp_path):
    pidfile = tmp_path / "gc.pid"
    code = "import subprocess, sys\nc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n" \
           f"open({str(pidfile)!r}, 'w').write(str(c.pid))"
    res = run([sys.executable, "-c", code], cwd=tmp_path, env=None, logs=[], timeout=30, cancel=None)
    assert res.returncode == 0
    assert not pid_alive(int(pidfile.read_text()))


def test_missing_executable_is_an_error_not_an_exception(tmp_path):
    res = run(["/nonexistent/agent-cli"], cwd=tmp_path, env=None, logs=[tmp_path / "l"], timeout=5, cancel=None)
    assert res.error and "could not start" in res.error and res.returncode is None
    assert "could not start" in (tmp_path / "l").read_text()


def test_constants_are_parsed_not_imported(tmp_path):
    (tmp_path / "constants.py").write_text("import sys; sys.exit('imported!')\nTIME_BUDGET = 5 * 60  # s\n"
                                           "DATASET = 'pystdlib'\n")
    assert read_time_budget(tmp_path) == 300
    assert read_constant(tmp_path / "constants.py", "DATASET") == "pystdlib"
    assert read_constant(tmp_path / "missing.py", "X", 7) == 7
    (tmp_path / "constants.py").write_text("TIME_BUDGET = int('x')\n")
    assert read_time_budget(tmp_path) == 300  # not a constant: the default
    assert default_timeout(300) == 720


def test_parse_metrics_rejects_bad_values():
    assert parse_metrics(None)[1].startswith("no metrics")
    assert "not valid JSON" in parse_metrics("{")[1]
    assert "JSON object" in parse_metrics("[1]")[1]
    assert "val_bpb" in parse_metrics('{"val_bpb": NaN}')[1]
    assert "val_bpb" in parse_metrics('{"val_bpb": "0.9"}')[1]
    assert "val_bpb" in parse_metrics('{"val_bpb": -1}')[1]
    assert "peak_vram_mb" in parse_metrics('{"val_bpb": 0.9, "peak_vram_mb": "lots"}')[1]
    m, err = parse_metrics('{"val_bpb": 0.9}')
    assert err is None and m["val_bpb"] == 0.9


def _trainer_dir(tmp_path, train=FAKE_TRAIN):
    (tmp_path / "prepare.py").write_text(FAKE_PREPARE)
    (tmp_path / "train.py").write_text(train)
    (tmp_path / "constants.py").write_text("TIME_BUDGET = 1\n")
    return tmp_path


def test_local_runner_reads_the_trusted_metrics_file(tmp_path):
    d = _trainer_dir(tmp_path)
    out = tmp_path / "exp" / "metrics.json"
    res = LocalRunner(d).train([tmp_path / "train.log"], out)
    assert res.ok and res.val_bpb == 1.0 and res.peak_vram_mb == 2048.0 and res.memory_gb == 2.0
    assert json.loads(out.read_text())["val_bpb"] == 1.0


def test_metrics_path_is_outside_the_workspace_and_fresh(tmp_path):
    d = tmp_path / "ws"
    d.mkdir()
    (d / "train.py").write_text("import os, json\np = os.environ['AUTORESEARCH_METRICS_FILE']\n"
                                "print(p)\nprint(os.path.exists(p))\njson.dump({'val_bpb': 1.5}, open(p, 'w'))\n")
    res = LocalRunner(d).train([], None)
    path, existed = res.tail[0], res.tail[1]
    assert res.ok and res.val_bpb == 1.5 and res.peak_vram_mb == 0.0
    assert not path.startswith(str(d)) and existed == "False"
    assert not Path(path).exists() and not Path(path).parent.exists()  # cleaned up


def test_local_runner_does_not_believe_stdout(tmp_path):
    d = _trainer_dir(tmp_path, FAKE_TRAIN.replace('MODE = "ok"', 'MODE = "fakeprint"'))
    res = LocalRunner(d).train([tmp_path / "train.log"], None)
    assert not res.ok and res.val_bpb is None
    assert "no metrics" in res.reason
    assert "val_bpb:          0.100000" in res.tail


def test_local_runner_crash_and_timeout_reasons(tmp_path):
    d = _trainer_dir(tmp_path, FAKE_TRAIN.replace('MODE = "ok"', 'MODE = "crash"'))
    res = LocalRunner(d).train([], None)
    assert not res.ok and res.reason == "train.py exited with code 1"
    assert any("fake crash" in line for line in res.tail)
    d.joinpath("train.py").write_text(FAKE_TRAIN.replace('MODE = "ok"', 'MODE = "spawn"'))
    d.joinpath("fake_control.json").write_text("{}")  # the fake trainer writes grandchild.pid beside it
    res = LocalRunner(d, timeout=1.5).train([], None)
    assert not res.ok and res.timed_out and "timed out after 2 s" in res.reason
    assert not pid_alive(int((d / "grandchild.pid").read_text()))


def test_a_failing_output_callback_neither_aborts_the_run_nor_leaves_the_group_running(tmp_path):
    # `autoresearch run | head -1`: the echo callback breaks, the run goes on and its group is reaped
    from core.runner import run
    calls = []

    def broken(data: bytes) -> None:
        calls.append(data)
        raise BrokenPipeError

    res = run([sys.executable, "-c", "import time\nfor i in range(3): print(i, flush=True); time.sleep(0.1)"],
              cwd=tmp_path, env=None, logs=[tmp_path / "a.log"], timeout=30, cancel=None, on_output=broken)
    assert res.returncode == 0 and len(calls) == 1
    assert (tmp_path / "a.log").read_text().split() == ["0", "1", "2"]


def test_the_trainer_gets_no_api_keys():
    from core.training import trainer_env
    env = trainer_env({"PATH": "/bin", "ANTHROPIC_API_KEY": "sk-x", "OPENAI_API_KEY": "k", "GH_TOKEN": "t",
                       "CUDA_VISIBLE_DEVICES": "0"})
    assert env == {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0"}


def test_logs_are_cut_at_the_cap_but_the_tail_keeps_coming(tmp_path, monkeypatch):
    from core import runner
    monkeypatch.setattr(runner, "LOG_CAP_BYTES", 1000)
    res = runner.run([sys.executable, "-c", "for i in range(2000): print(f'line {i}')"], cwd=tmp_path, env=None,
                     logs=[tmp_path / "a.log"], timeout=30, cancel=None)
    text = (tmp_path / "a.log").read_text()
    assert res.returncode == 0
    assert len(text) < 1100 and text.rstrip().endswith("[autoresearch: log cut at 0 MiB]")
    assert res.tail[-1] == "line 1999"
