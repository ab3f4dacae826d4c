"""core.runner: progress-line parsing, process-group kills, timeouts, and trusting only the metrics file."""

from __future__ import annotations

import json
import sys
import threading
import time

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


def test_a_trainer_has_no_metrics_channel_and_files_it_writes_are_not_believed(tmp_path):
    d = tmp_path / "ws"
    d.mkdir()
    # the old channel: a path in the environment; and a guess at where the engine keeps the metrics
    (d / "train.py").write_text("import os, json\nprint([k for k in os.environ if 'METRIC' in k])\n"
                                "for p in ('metrics.json', os.path.join(os.path.dirname(os.getcwd()), 'metrics.json')):\n"
                                "    try:\n        json.dump({'val_bpb': 0.0001}, open(p, 'w'))\n"
                                "    except OSError as e:\n        print('denied', e.errno)\n")
    out = tmp_path / "exp" / "metrics.json"
    res = LocalRunner(d).train([tmp_path / "train.log"], out)
    assert not res.ok and res.val_bpb is None and "no metrics" in res.reason
    assert res.tail[0] == "[]"  # no variable names a metrics file
    assert not out.exists()


def test_trainer_environment_is_allow_listed_with_a_per_run_home(tmp_path, monkeypatch):
    monkeypatch.setenv("CANARY_API_KEY", "sk-canary-0123")
    monkeypatch.setenv("SOME_SHELL_SETTING", "x")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    d = _trainer_dir(tmp_path, "import os\nfor k in sorted(os.environ): print('ENV', k, os.environ[k])\n"
                               + FAKE_TRAIN.split('"""', 2)[2])
    res = LocalRunner(d).train([tmp_path / "train.log"], None)
    assert res.ok, res.reason
    env = dict(line.split(" ", 2)[1:] for line in (tmp_path / "train.log").read_text().splitlines()
               if line.startswith("ENV ") and line.count(" ") >= 2)
    assert "CANARY_API_KEY" not in env and "SOME_SHELL_SETTING" not in env
    assert "sk-canary-0123" not in (tmp_path / "train.log").read_text()
    assert env["OMP_NUM_THREADS"] == "2" and env["AUTORESEARCH_RUN"].endswith("/manual")
    run_dir = d / ".autoresearch" / "runs" / "manual"
    assert env["HOME"] == str(run_dir / ".home") and env["TMPDIR"] == str(run_dir / ".tmp")
    assert not run_dir.exists()  # removed after the run


def test_over_budget_is_measured_outside_the_trainer(tmp_path):
    slow = FAKE_TRAIN.replace("evaluate(QUALITY, 2048.0)", "time.sleep(30)\nevaluate(QUALITY, 2048.0)")
    d = _trainer_dir(tmp_path, slow)
    (d / "constants.py").write_text("TIME_BUDGET = 1\nSTARTUP_ALLOWANCE = 2\n")
    t0 = time.monotonic()
    res = LocalRunner(d).train([], None)
    assert not res.ok and res.reason == ("over budget: train.py had not handed over a model 3 s after it started; "
                                         "the limit is TIME_BUDGET 1 s + STARTUP_ALLOWANCE 2 s = 3 s")
    assert time.monotonic() - t0 < 20


def test_reported_training_seconds_must_fit_the_measured_wall_time(tmp_path):
    liar = FAKE_PREPARE.replace('"training_seconds": 0.1', '"training_seconds": 1000.0')
    d = _trainer_dir(tmp_path)
    (d / "prepare.py").write_text(liar)
    res = LocalRunner(d).train([], None)
    assert not res.ok and res.reason.startswith("rejected: train.py reported training_seconds 1000.0 but handed "
                                                "over its model ")


def test_a_trainer_that_keeps_running_after_the_hand_over_is_stopped(tmp_path, monkeypatch):
    from core import training
    monkeypatch.setattr(training, "HANDOVER_EXIT_S", 1.0)
    d = _trainer_dir(tmp_path, FAKE_TRAIN + "\ntime.sleep(600)\n")
    t0 = time.monotonic()
    res = LocalRunner(d).train([tmp_path / "train.log"], None)
    assert res.ok and res.val_bpb == 1.0, res.reason
    assert time.monotonic() - t0 < 20
    assert res.timings["training_wall_s"] < res.timings["trainer_s"]


def test_ok_run_prints_the_upstream_summary_and_records_the_integrity_level(tmp_path):
    from core.sandbox import landlock_abi
    d = _trainer_dir(tmp_path)
    out = tmp_path / "exp" / "metrics.json"
    res = LocalRunner(d).train([tmp_path / "train.log"], out)
    assert res.ok
    log = (tmp_path / "train.log").read_text()
    block = log[log.rindex("---\n"):].splitlines()
    assert block[1] == "val_bpb:          1.000000" and "peak_vram_mb:     2048.0" in block
    abi = landlock_abi()[0]
    expected = f"L2 (landlock ABI {abi})" if abi else "L1 (no sandbox: "
    assert res.integrity.startswith(expected)
    saved = json.loads(out.read_text())
    assert saved["integrity"] == res.integrity and saved["integrity_level"] == res.integrity[:2]
    assert saved["trainer_reported"] == ["num_steps", "peak_vram_mb", "training_seconds"]


def test_without_a_sandbox_the_level_says_what_is_off(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_SANDBOX", "off")
    res = LocalRunner(_trainer_dir(tmp_path)).train([], None)
    assert res.ok and res.integrity.startswith("L1 (no sandbox: turned off by AUTORESEARCH_SANDBOX=off; the "
                                               "trainer can read the validation data")


def test_local_runner_does_not_believe_stdout(tmp_path):
    d = _trainer_dir(tmp_path, FAKE_TRAIN.replace('MODE = "ok"', 'MODE = "fakeprint"'))
    res = LocalRunner(d).train([tmp_path / "train.log"], None)
    assert not res.ok and res.val_bpb is None
    assert "no metrics" in res.reason
    assert "val_bpb:          0.100000" in res.tail


def test_local_runner_crash_and_timeout_reasons(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_TRAINER_RW", str(tmp_path))  # the fake writes grandchild.pid here
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
