"""The engine's CLI commands as real subprocesses: bad input is one sentence on stderr with exit 1, nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from engine_fixtures import ROOT, cli, cli_env, git, make_workspace, meta, read_events, tsv_rows, write_agent_files

from core import control
from core.config import LoopConfig, default_tag, resolve
from core.errors import UserError
from core.lock import EngineLock
from core.workspace import Workspace


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr and len(err.splitlines()) == 1, r.stderr
    assert err.startswith("autoresearch: ")
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def ws(tmp_path):
    return make_workspace(tmp_path / "ws")


def loop(ws, *args, env=None):
    return subprocess.run([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--tag", "t", *args],
                          cwd=ROOT, env=env or cli_env(), capture_output=True, text=True, timeout=60)


def test_not_a_git_repo(tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    one_line_error(cli("-C", str(tmp_path), "loop", "--agent", "mutate"), "not a git repository")
    assert not (tmp_path / ".autoresearch").exists()  # nothing written


def test_an_empty_git_repo_says_there_is_no_train_py(tmp_path):
    git(tmp_path, "init", "-q")
    one_line_error(cli("-C", str(tmp_path), "loop", "--agent", "mutate"), "there is no train.py", "--demo")


def test_missing_workspace_folder(tmp_path):
    for cmd in ("loop", "status", "pause", "results"):
        one_line_error(cli("-C", str(tmp_path / "nope"), cmd), f"workspace folder {tmp_path / 'nope'} does not exist")


def test_status_outside_a_workspace_is_an_error(tmp_path):
    one_line_error(cli("-C", str(tmp_path), "status"), "is not an autoresearch workspace")


def test_dirty_tree(ws):
    (ws.root / "prepare.py").write_text("# mine\n")
    one_line_error(loop(ws, "--agent", "command", "--agent-cmd", "true"), "uncommitted changes (prepare.py)")
    assert (ws.root / "prepare.py").read_text() == "# mine\n"


def test_detached_head(ws):
    git(ws.root, "checkout", "-q", "--detach")
    one_line_error(loop(ws, "--agent", "mutate"), "HEAD is detached")


def test_repo_without_commits(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("print('hi')\n")
    one_line_error(cli("-C", str(tmp_path), "loop", "--agent", "mutate"), "no commits")


def test_missing_data(ws, tmp_path):
    env = dict(cli_env(), AUTORESEARCH_CACHE=str(tmp_path / "empty-cache"))
    one_line_error(loop(ws, "--agent", "mutate", env=env), "autoresearch setup")


def test_missing_agent_cli_and_api_key(ws, tmp_path):
    env = dict(cli_env(), PATH=os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin")
    env.pop("ANTHROPIC_API_KEY", None)
    for agent in ("claude", "codex"):
        fake_bin = tmp_path / "empty-bin"
        fake_bin.mkdir(exist_ok=True)
        one_line_error(loop(ws, "--agent", agent, env=env))
    one_line_error(loop(ws, "--agent", "anthropic", env=env), "ANTHROPIC_API_KEY")
    one_line_error(loop(ws, "--agent", "command", env=env), "--agent-cmd")
    one_line_error(loop(ws, "--agent", "gpt9", env=env), "unknown agent")


def test_unknown_flags_and_bad_values(ws):
    one_line_error(loop(ws, "--bogus"), "unrecognized arguments")
    one_line_error(loop(ws, "--max", "many"), "invalid int value")
    one_line_error(loop(ws, "--max", "0"), "--max")
    one_line_error(loop(ws, "--min-delta", "-1"), "--min-delta")
    one_line_error(cli("-C", str(ws.root), "loop", "--tag", "a b"), "tag")
    one_line_error(cli("-C", str(ws.root), "frobnicate"), "invalid choice")


def test_bad_config_json_is_reported_not_replaced(ws):
    ws.state_dir.mkdir(exist_ok=True)
    ws.config_json.write_text("{broken")
    one_line_error(loop(ws, "--agent", "mutate"), "config.json is not valid JSON")
    assert ws.config_json.read_text() == "{broken"


def test_second_engine_names_the_first(ws):
    lock = EngineLock(ws).acquire()
    try:
        one_line_error(loop(ws, "--agent", "mutate"), f"already running in this workspace (pid {os.getpid()})")
    finally:
        lock.release()


def test_control_without_engine(ws):
    for cmd in ("pause", "resume", "abort", "stop"):
        one_line_error(cli("-C", str(ws.root), cmd), "no engine is running")
    assert not list(ws.control_dir.glob("*")) if ws.control_dir.exists() else True


def test_idea(ws):
    one_line_error(cli("-C", str(ws.root), "idea", "  "), "idea is empty")
    r = cli("-C", str(ws.root), "idea", "try", "SwiGLU")
    assert r.returncode == 0 and "1 pending" in r.stdout
    assert control.pending_ideas(ws) == ["try SwiGLU"]
    assert [e["text"] for e in read_events(ws) if e["type"] == "idea_queued"] == ["try SwiGLU"]


def test_malformed_results_tsv_is_a_warning_and_never_rewritten(ws, tmp_path):
    bad = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\nnot a row\n0123abc\tx\t1.0\tkeep\tbad number\n"
    ws.results_tsv.write_text(bad)
    agent_cmd = write_agent_files(tmp_path, [{"quality": 0.9, "desc": "good"}])
    r = loop(ws, "--agent", "command", "--agent-cmd", agent_cmd, "--max", "2")
    assert r.returncode == 0, r.stderr
    assert "warning: results.tsv has 2 malformed lines" in r.stderr and "Traceback" not in r.stderr
    text = ws.results_tsv.read_text()
    assert text.startswith(bad)  # the bad lines are untouched, new rows appended after them
    assert [row[3] for row in tsv_rows(ws)[2:]] == ["keep", "keep"]
    r = cli("-C", str(ws.root), "status")
    assert r.returncode == 0 and "malformed" in r.stdout


def test_run_prints_metrics_and_changes_nothing(ws):
    head = git(ws.root, "rev-parse", "HEAD")
    r = cli("-C", str(ws.root), "run")
    assert r.returncode == 0, r.stderr
    assert "val_bpb:      1.000000" in r.stdout and "peak_vram_mb: 2048.0" in r.stdout
    assert "step 04" in r.stdout  # the trainer's output is streamed
    assert git(ws.root, "rev-parse", "HEAD") == head and git(ws.root, "status", "--porcelain") == ""
    assert not ws.experiments_dir.exists() and not ws.results_tsv.exists()
    assert "val_bpb" in ws.run_log.read_text()


def test_run_crash_returns_1(ws):
    ws.train_py.write_text(ws.train_py.read_text().replace('MODE = "ok"', 'MODE = "crash"'))
    r = cli("-C", str(ws.root), "run")
    assert r.returncode == 1 and "Traceback" in r.stdout  # the trainer's own traceback, streamed as output
    assert r.stderr.strip().splitlines()[-1].startswith("autoresearch: the run crashed (train.py exited with code 1)")


def test_status_on_a_fresh_workspace(ws):
    r = cli("-C", str(ws.root), "status")
    assert r.returncode == 0 and r.stdout.startswith("engine: stopped")
    st = json.loads(cli("-C", str(ws.root), "status", "--json").stdout)
    assert st["status"] == "stopped" and st["alive"] is False


def test_loop_saves_options_and_a_plain_loop_reuses_them(ws, tmp_path):
    agent_cmd = write_agent_files(tmp_path, [{"quality": 0.9, "desc": "a"}, {"quality": 0.8, "desc": "b"}])
    r = loop(ws, "--agent", "command", "--agent-cmd", agent_cmd, "--max", "1", "--min-delta", "0.001",
             "--timeout", "30")
    assert r.returncode == 0, r.stderr
    saved = json.loads(ws.config_json.read_text())
    assert saved == {"tag": "t", "agent": "command", "agent_cmd": agent_cmd, "model": None, "min_delta": 0.001,
                     "simplify_tolerance": 0.0005, "timeout": 30.0, "agent_timeout": 900.0, "gpus": None,
                     "slots": None, "lookahead": 1, "agents": None, "executor": "local", "ray_address": None,
                     "decide": "plain", "z": 2.0, "noise_runs": None, "confirm": "wins", "early_stop": True,
                     "max_cost": None}
    r = cli("-C", str(ws.root), "loop", "--max", "1")
    assert r.returncode == 0, r.stderr
    assert meta(ws, "0002")["description"] == "a" and meta(ws, "0002")["tag"] == "t"


def test_config_resolution(tmp_path):
    ws = Workspace.at(tmp_path)
    cfg = resolve(ws, None)
    assert cfg.tag == default_tag() and cfg.agent == "auto" and cfg.min_delta == 0.0
    assert default_tag(1764158400) in ("nov26", "nov27")  # 2025-11-26 12:00 UTC in any timezone nearby
    with pytest.raises(UserError):
        LoopConfig(tag="../x").validate()


def test_create_workspace_from_the_project_files(tmp_path):
    from core.scaffold import create_workspace

    if not all((ROOT / f).exists() for f in ("program.md", "constants.py", "prepare.py", "train.py")):
        pytest.skip("trainer files not in the repository yet")
    try:
        import core.setup  # noqa: F401
    except ImportError:
        pytest.skip("core.setup not in the repository yet")
    ws = create_workspace(tmp_path / "demo", profile="cpu", dataset="pystdlib", time_budget=10)
    assert git(ws.root, "status", "--porcelain") == ""
    assert git(ws.root, "log", "--format=%s").count("\n") == 0
    ignored = (ws.root / ".gitignore").read_text()
    for name in ("results.tsv", "run.log", ".autoresearch/", "__pycache__"):
        assert name in ignored
    constants = (ws.root / "constants.py").read_text()
    assert "pystdlib" in constants and "TIME_BUDGET = 10" in constants.replace("10.0", "10")
    with pytest.raises(UserError, match="already holds"):
        create_workspace(ws.root)


def test_manual_run_is_refused_while_a_pausing_engine_still_trains(tmp_path, capsys):
    # `pause` is reported at once, but the current experiment trains on: a second trainer must not start
    from core.cli import main
    ws = make_workspace(tmp_path / "ws")
    lock = EngineLock(ws).acquire()
    try:
        ws.engine_json.write_text(json.dumps({
            "pid": os.getpid(), "status": "paused", "phase": "training",
            "experiment": {"id": "0002", "commit": "abc", "description": "x"}}))
        assert main(["-C", str(ws.root), "run"]) == 1
        err = capsys.readouterr().err
        assert "an engine is running" in err and "Traceback" not in err
    finally:
        lock.release()


def test_the_engine_and_prepare_py_agree_on_where_a_dataset_lives(tmp_path, monkeypatch):
    """commands.dataset_dir repeats prepare.dataset_dir's rule without importing torch: they must stay equal."""
    import importlib.util

    from core.commands import dataset_dir

    spec = importlib.util.spec_from_file_location("prepare_under_test", ROOT / "prepare.py")
    prepare = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "prepare_under_test", prepare)  # dataclasses look their module up
    spec.loader.exec_module(prepare)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my data, v2"
    folder.mkdir()
    for dataset in ("pystdlib", "climbmix", str(folder)):
        (tmp_path / "constants.py").write_text(f"DATASET = {dataset!r}\n")
        name, path = dataset_dir(Workspace(tmp_path))
        assert name == dataset and path == prepare.dataset_dir(dataset), dataset
