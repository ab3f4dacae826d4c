"""The Ray executor on a real local Ray cluster: two nodes on this machine, a custom resource standing in for GPUs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from engine_fixtures import ROOT, wait_for
from ray_fixtures import CLIENT, COUNTING_PREPARE, Recorder, spec, trainer

from core.errors import UserError
from core.executors import ray as rayx
from core.procs import pid_alive


def ray_worker_of(pid: int) -> psutil.Process:
    """The Ray worker process above a trainer (between them: the sandbox launcher)."""
    for p in psutil.Process(pid).parents():
        if p.name().startswith("ray::") or any("default_worker.py" in a for a in p.cmdline()):
            return p
    raise AssertionError(f"no Ray worker among the ancestors of {pid}")


# --- without a cluster ---------------------------------------------------------------------------------------


def test_without_the_extra_one_sentence_says_how_to_add_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"  # what an install without the extra looks like
            "from core.errors import UserError\n"
            "from core.executors.ray import RayExecutor\n"
            "try:\n    RayExecutor(sys.argv[1])\nexcept UserError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == rayx.INSTALL_HINT
    assert "uv sync --extra ray" in r.stdout


def test_bad_addresses_are_one_sentence_before_ray_is_asked(tmp_path):
    with pytest.raises(UserError, match="not supported"):
        rayx._resolve_address("ray://head:10001")
    with pytest.raises(UserError, match="not host:port"):
        rayx._resolve_address("head")
    with pytest.raises(UserError, match="nothing answers at the Ray address 127.0.0.1:9"):
        rayx._resolve_address("127.0.0.1:9")


def test_no_address_and_no_cluster_means_a_local_instance(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # a stale ray_current_cluster must not be trusted
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")
    assert rayx._resolve_address(None) == ("local", None)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    with pytest.raises(UserError, match=r"\(RAY_ADDRESS\)"):
        rayx._resolve_address(None)


def test_a_workspace_key_names_the_machine_and_folder(tmp_path):
    a, b = rayx.workspace_key(tmp_path / "a"), rayx.workspace_key(tmp_path / "b")
    assert a != b and len(a) == 16 and rayx.workspace_key(tmp_path / "a") == a


def test_two_runs_that_start_together_prepare_the_data_once(tmp_path):
    # the lock of ensure_data, without Ray: two runs on one node (threads here) start at the same moment
    import threading

    from ray_fixtures import files

    cache = tmp_path / "cache"
    outs: dict[str, list[bytes]] = {"a": [], "b": []}
    errors: dict[str, str | None] = {}
    go = threading.Barrier(2)

    def run(name):
        job = rayx.NodeJob(f"06{name}", "k" * 12, files(trainer(), COUNTING_PREPARE), 60.0, cache=str(cache))
        go.wait()
        errors[name] = rayx.ensure_data(job, "node-a", outs[name].append, threading.Event())

    threads = [threading.Thread(target=run, args=(n,)) for n in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == {"a": None, "b": None}
    assert len((cache / "prepare-runs.txt").read_text().splitlines()) == 1
    said = sorted(b"".join(o).decode() for o in outs.values())
    assert sum("first run on node node-a: preparing dataset 'fake'" in t for t in said) == 1, said
    assert sum("waiting for another run that prepares dataset 'fake' on node node-a" in t for t in said) == 1, said
    assert rayx.ensure_data(rayx.NodeJob("0699", "k" * 12, files(trainer(), COUNTING_PREPARE), 60.0,
                                         cache=str(cache)), "node-a", outs["a"].append, threading.Event()) is None
    assert len((cache / "prepare-runs.txt").read_text().splitlines()) == 1


def test_a_failed_preparation_is_one_reason(tmp_path):
    import threading

    from ray_fixtures import files

    broken = COUNTING_PREPARE + "\n    raise SystemExit('prepare.py: no network to download the dataset')\n"
    job = rayx.NodeJob("0698", "k" * 12, files(trainer(), broken), 60.0, cache=str(tmp_path / "cache"))
    reason = rayx.ensure_data(job, "node-a", lambda b: None, threading.Event())
    assert reason == "data preparation failed on node node-a: no network to download the dataset"
    assert not list((tmp_path / "cache" / rayx.PREPARED).glob("*.json"))  # not marked: the next run tries again


# --- on a real cluster ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    try:
        rayx.import_ray()  # the executor imports ray first: it sets how Ray starts its workers
    except UserError:
        pytest.skip("the ray extra is not installed (uv sync --extra ray)")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes = [c.add_node(num_cpus=1, resources={"fake_gpu": 1}) for _ in range(2)]
    c.wait_for_nodes()
    yield c, nodes
    import ray

    ray.shutdown()  # whatever executor a failed test left open
    c.shutdown()


@pytest.fixture(scope="module")
def ex(cluster, tmp_path_factory):
    c, _ = cluster
    root = tmp_path_factory.mktemp("ray-ws")
    log: list[str] = []
    executor = rayx.RayExecutor(root, address=c.address, resource="fake_gpu",
                                cache=str(tmp_path_factory.mktemp("ray-cache")), log=log.append)
    executor.messages = log
    yield executor
    executor.close()


def dead(pid: int | None) -> bool:
    return pid is not None and not pid_alive(pid)


@pytest.mark.slow
def test_slots_are_the_clusters_resource_capped_by_slots(ex, cluster):
    c, _ = cluster
    assert [s.id for s in ex.slots()] == ["0", "1"]
    assert ex.slots()[0].node is None  # known once Ray places a run
    assert "2 slot(s) of 1 fake_gpu" in ex.summary
    capped = rayx.RayExecutor(ex.ws_root, address=c.address, resource="fake_gpu", slots=1, log=lambda m: None)
    try:
        assert len(capped.slots()) == 1
    finally:
        capped.close()
    with pytest.raises(UserError, match="has no tpu_v9 for a run"):
        rayx.RayExecutor(ex.ws_root, address=c.address, resource="tpu_v9", log=lambda m: None)


@pytest.mark.slow
def test_two_runs_are_placed_on_both_nodes_and_report_trusted_metrics(ex):
    root = ex.ws_root
    recs = [Recorder(), Recorder()]
    handles = [ex.start(slot, spec(root, f"010{i}", trainer(quality=0.9 + i / 10, sleep=1.0)), rec.callbacks())
               for i, (slot, rec) in enumerate(zip(ex.slots(), recs))]
    results = [h.result(timeout=60) for h in handles]
    for i, (h, r, rec) in enumerate(zip(handles, results, recs)):
        assert r is not None and r.ok, (r, rec.text)
        assert r.val_bpb == pytest.approx(0.9 + i / 10)
        assert r.peak_vram_mb == 2048.0
        assert '"val_bpb"' in (root / "experiments" / f"010{i}" / "metrics.json").read_text()
        assert len(rec.starts) == 1 and rec.starts[0][0] is None  # no local process: the run is on a node
        assert h.slot.node == rec.starts[0][1] == h.node
        assert h.slot.label == f"{h.node} fake_gpu"
        assert rec.phases[:2] == ["starting", "training"]
    assert handles[0].node != handles[1].node  # one fake_gpu per node: Ray had to use both


@pytest.mark.slow
def test_output_streams_to_the_logs_while_the_run_trains(ex):
    root = ex.ws_root
    rec = Recorder()
    h = ex.start(ex.slots()[0], spec(root, "0200", trainer(sleep=3.0)), rec.callbacks())
    log = root / "experiments" / "0200" / "train.log"
    wait_for(lambda: b"step 01" in log.read_bytes() if log.exists() else False, timeout=30, what="step 01 in train.log")
    assert not h.done()  # the line arrived while the run still trained
    assert "step 01" in rec.text
    r = h.result(timeout=60)
    assert r.ok, r
    streamed = log.read_bytes()
    assert streamed == (root / "run-0200.log").read_bytes()
    assert b"training pid" in streamed and b"val_bpb:" in streamed
    assert streamed.startswith(b"autoresearch: placed by Ray on ")


@pytest.mark.slow
def test_a_crash_in_the_trainer_is_its_own_reason(ex):
    rec = Recorder()
    r = ex.start(ex.slots()[0], spec(ex.ws_root, "0300", trainer(mode="crash")), rec.callbacks()).result(timeout=60)
    assert not r.ok and r.reason == "train.py exited with code 1"
    assert any("fake crash in the trainer" in line for line in r.tail)


@pytest.mark.slow
def test_cancel_kills_the_remote_process_group(ex):
    rec = Recorder()
    h = ex.start(ex.slots()[0], spec(ex.ws_root, "0400", trainer(mode="spawn")), rec.callbacks())
    wait_for(lambda: rec.pid("grandchild") and rec.pid("training"), timeout=30, what="the trainer's pids")
    pids = rec.pid("training"), rec.pid("grandchild")
    assert all(pid_alive(p) for p in pids)
    t0 = time.monotonic()
    h.cancel("aborted from the CLI")
    r = h.result(timeout=60)
    assert r.cancelled and not r.ok and r.reason == "cancelled"
    assert all(dead(p) for p in pids), [psutil.Process(p).status() for p in pids if pid_alive(p)]
    assert time.monotonic() - t0 < 15


@pytest.mark.slow
def test_a_crashed_ray_worker_is_a_lost_run_and_leaves_nothing_behind(ex):
    rec = Recorder()
    h = ex.start(ex.slots()[0], spec(ex.ws_root, "0450", trainer(mode="spawn")), rec.callbacks())
    wait_for(lambda: rec.pid("grandchild") and rec.pid("training"), timeout=30, what="the trainer's pids")
    pids = rec.pid("training"), rec.pid("grandchild")
    ray_worker_of(pids[0]).kill()  # the Ray worker running the task: what an OOM kill looks like
    r = h.result(timeout=60)
    assert not r.ok and r.reason.startswith(f"node lost: Ray lost the run on {h.slot.label} ("), r.reason
    # the launcher, the trainer and its child outlive the worker; Ray's raylet or, failing that, the executor's
    # sweep ends them (which one did varies; that nothing is left is the point)
    wait_for(lambda: all(dead(p) for p in pids), timeout=15, what="the run's processes to end")


@pytest.mark.slow
def test_a_fresh_node_prepares_the_data_once(ex, cluster, tmp_path):
    c, _ = cluster
    cache = tmp_path / "shared-cache"  # both nodes see it (one machine): the first run prepares for both
    fresh = rayx.RayExecutor(ex.ws_root, address=c.address, resource="fake_gpu", cache=str(cache),
                             log=lambda m: None)
    try:
        recs = [Recorder(), Recorder()]
        handles = [fresh.start(s, spec(ex.ws_root, f"050{i}", trainer(), prepare=COUNTING_PREPARE), rec.callbacks())
                   for i, (s, rec) in enumerate(zip(fresh.slots(), recs))]
        assert all(h.result(timeout=60).ok for h in handles), [r.text for r in recs]
        assert len((cache / "prepare-runs.txt").read_text().splitlines()) == 1
        first = [r.text for r in recs if "first run on node" in r.text]
        assert len(first) == 1, [r.text for r in recs]
        assert "fake prepare: building the dataset" in first[0] and "ready on node" in first[0]
        later = Recorder()
        assert fresh.start(fresh.slots()[0], spec(ex.ws_root, "0502", trainer(), prepare=COUNTING_PREPARE),
                           later.callbacks()).result(timeout=60).ok
        assert "prepar" not in later.text
        assert len((cache / "prepare-runs.txt").read_text().splitlines()) == 1
    finally:
        fresh.close()


@pytest.mark.slow
def test_a_killed_engine_leaves_nothing_running_after_cleanup(ex, cluster, tmp_path):
    # two runs of an engine in another process; the Ray worker of run 0001 crashes (SIGKILL: nothing in it can
    # clean up; Ray ends its trainer but not the trainer's child), then the engine is killed -9 (Ray ends the
    # task of run 0002, whose cleanup kills its process group)
    import ray

    c, _ = cluster
    root = tmp_path / "ws"
    root.mkdir()
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(root), c.address, "fake_gpu",
                               str(ROOT / "tests")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    try:
        pids = {}
        for _ in range(2):
            exp, trainer_pid, grandchild = client.stdout.readline().split()
            pids[exp] = int(trainer_pid), int(grandchild)
        ray_worker_of(pids["0001"][0]).kill()  # the Ray worker that runs 0001
    finally:
        os.kill(client.pid, signal.SIGKILL)
        client.wait()
    time.sleep(1.0)
    # whether Ray's raylet has already ended the crashed worker's descendants is a race; what is left, the
    # next engine's cleanup must end
    left = [p for run in pids.values() for p in run if pid_alive(p)]
    log: list[str] = []
    after = rayx.RayExecutor(root, address=c.address, resource="fake_gpu", log=log.append)
    try:
        after.cleanup_orphans(log.append)
        wait_for(lambda: all(dead(p) for run in pids.values() for p in run), timeout=15,
                 what="every process of both runs to end")
        if pids["0001"][1] in left:  # it was there just before the cleanup: the sweep ended it
            assert any(re.match(r"ray: ended \d+ leftover process\(es\) of run\(s\) 0001", m) for m in log), \
                (left, log)
        total = ray.cluster_resources()["fake_gpu"]
        wait_for(lambda: ray.available_resources().get("fake_gpu", 0) == total, timeout=30,
                 what="the dead engine's tasks to free their fake_gpu")
        assert not (Path(rayx.tempfile.gettempdir()) / rayx.SCRATCH / after.ws_key).exists()
    finally:
        after.close()


@pytest.mark.slow
def test_a_node_killed_mid_run_gives_exactly_one_crash(ex, cluster, request):
    c, _ = cluster
    victim = c.add_node(num_cpus=1, resources={"victim_gpu": 1})
    c.wait_for_nodes()
    on_victim = rayx.RayExecutor(ex.ws_root, address=c.address, resource="victim_gpu", log=lambda m: None)
    request.addfinalizer(on_victim.close)
    rec = Recorder()
    h = on_victim.start(on_victim.slots()[0], spec(ex.ws_root, "0700", trainer(sleep=60.0)), rec.callbacks())
    wait_for(lambda: "step 00" in rec.text, timeout=30, what="the run to train on the victim node")
    trainer_pid = rec.pid("training")
    c.remove_node(victim, allow_graceful=False)
    r = h.result(timeout=60)
    assert r is not None and not r.ok and r.reason.startswith("node lost: "), r
    assert r.reason == f"node lost: node {h.node} died while the run was on it ({h.slot.label})"
    assert len(rec.starts) == 1 and h.result(timeout=0) is r
    wait_for(lambda: dead(trainer_pid), timeout=30, what="the trainer to end with its node")


# --- the engine's loop on the cluster ------------------------------------------------------------------------

def _loop_has_executor_option() -> bool:
    r = subprocess.run([sys.executable, "-m", "core.cli", "loop", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    return "--executor" in r.stdout


@pytest.mark.slow
def test_the_loop_runs_on_the_cluster(cluster, tmp_path):
    if not _loop_has_executor_option():
        pytest.skip("`autoresearch loop --executor` is not in the CLI yet (it lands with the scheduler)")
    from engine_fixtures import cli_env, git, meta, tsv_rows

    from core.scaffold import create_workspace

    c, _ = cluster
    ws = create_workspace(tmp_path / "demo", profile="cpu", dataset="pystdlib", time_budget=5)
    consts = ws.root / "constants.py"  # a smaller evaluation keeps the test short, committed like a person's change
    consts.write_text(re.sub(r"^EVAL_TOKENS = .*$", "EVAL_TOKENS = 16384  # small for the test", consts.read_text(),
                             flags=re.M))
    git(ws.root, "commit", "-qam", "smaller evaluation")
    # the data is prepared here (the engine checks it) in a cache the nodes share: their first runs find it
    cache = os.environ["AUTORESEARCH_CACHE"]
    subprocess.run([sys.executable, "prepare.py"], cwd=ws.root, check=True, capture_output=True, timeout=600)
    env = dict(cli_env(), AUTORESEARCH_RAY_RESOURCE="fake_gpu", AUTORESEARCH_RAY_CACHE=cache)
    r = subprocess.run([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--executor", "ray",
                        "--ray-address", c.address, "--slots", "2", "--max", "4", "--agent", "mutate",
                        "--decide", "plain"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    rows = tsv_rows(ws)
    assert len(rows) == 4, rows
    assert git(ws.root, "status", "--porcelain") == ""
    kept = [r for r in rows if r[3] == "keep"]
    assert kept and git(ws.root, "rev-parse", "HEAD").startswith(kept[-1][0])  # the branch at the best commit
    ids = sorted(d.name for d in ws.experiments_dir.iterdir())
    nodes = {meta(ws, i)["slot"]["node"] for i in ids}
    assert len(nodes) == 2, nodes  # one fake_gpu per node: two runs at once are on both
    for i in ids:
        log = (ws.experiment_dir(i) / "train.log").read_text()
        assert log.startswith("autoresearch: placed by Ray on "), log[:200]


@pytest.mark.slow
def test_a_node_lost_mid_run_is_one_crash_row_and_the_loop_goes_on(cluster, tmp_path):
    if not _loop_has_executor_option():
        pytest.skip("`autoresearch loop --executor` is not in the CLI yet (it lands with the scheduler)")
    from engine_fixtures import cli_env, make_workspace, tsv_rows, wait_event, write_agent_files

    c, _ = cluster
    victims = [c.add_node(num_cpus=1, resources={"loop_gpu": 1}) for _ in range(2)]
    c.wait_for_nodes()
    ws = make_workspace(tmp_path / "ws")
    # 0002 trains for 40 s (its node is killed meanwhile, before it hands over a model); 0003 runs on the node
    # that is left
    agent_cmd = write_agent_files(tmp_path, [
        {"quality": 0.9, "set": {"SLEEP": 40.0}, "desc": "slow run"},
        {"quality": 0.8, "desc": "after the lost node"}])
    env = dict(cli_env(), AUTORESEARCH_RAY_RESOURCE="loop_gpu")
    engine = subprocess.Popen([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--executor", "ray",
                               "--ray-address", c.address, "--slots", "1", "--max", "3", "--agent", "command",
                               "--agent-cmd", agent_cmd, "--decide", "plain"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        started = wait_event(ws, "training_started", timeout=120, id="0002")
        wait_for(lambda: b"step 00" in (ws.experiment_dir("0002") / "train.log").read_bytes(), timeout=60,
                 what="0002 to be training")
        victim = next(v for v in victims if started["node"].endswith(v.node_id[:6]))
        c.remove_node(victim, allow_graceful=False)
        out, err = engine.communicate(timeout=300)
    finally:
        if engine.poll() is None:
            engine.kill()
    assert engine.returncode == 0, err[-3000:]
    rows = tsv_rows(ws)
    assert [r[3] for r in rows].count("crash") == 1, rows
    assert len(rows) == 3
    crash = next(r for r in rows if r[3] == "crash")
    assert "node lost: node " in crash[4] and started["node"] in crash[4], crash
    assert rows[-1][3] == "keep" and "after the lost node" in rows[-1][4], rows


@pytest.mark.slow
def test_abort_from_the_cli_kills_the_remote_run(ex, cluster, tmp_path):
    if not _loop_has_executor_option():
        pytest.skip("`autoresearch loop --executor` is not in the CLI yet (it lands with the scheduler)")
    from engine_fixtures import cli, cli_env, make_workspace, read_events, tsv_rows, wait_event, write_agent_files

    c, _ = cluster
    ws = make_workspace(tmp_path / "ws")
    spawn = ("\nimport subprocess, sys, time\nc = subprocess.Popen([sys.executable, '-c', 'import time; "
             "time.sleep(600)'])\nprint(f'grandchild pid {c.pid}', flush=True)\ntime.sleep(600)\n")
    agent_cmd = write_agent_files(tmp_path, [{"quality": 0.9, "append": spawn, "desc": "runs forever"}])
    env = dict(cli_env(), AUTORESEARCH_RAY_RESOURCE="fake_gpu")
    engine = subprocess.Popen([sys.executable, "-m", "core.cli", "-C", str(ws.root), "loop", "--executor", "ray",
                               "--ray-address", c.address, "--slots", "1", "--max", "2", "--agent", "command",
                               "--agent-cmd", agent_cmd, "--decide", "plain"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_event(ws, "training_started", timeout=120, id="0002")
        log = ws.experiment_dir("0002") / "train.log"
        wait_for(lambda: re.search(rb"grandchild pid (\d+)", log.read_bytes()), timeout=60, what="the grandchild")
        text = log.read_text()
        pids = [int(re.search(rf"{w} pid (\d+)", text).group(1)) for w in ("training", "grandchild")]
        assert all(pid_alive(p) for p in pids)
        assert cli("-C", str(ws.root), "abort").returncode == 0
        wait_for(lambda: any(e["type"] == "experiment_finished" and e.get("id") == "0002" for e in read_events(ws)),
                 timeout=60, what="0002 to end")
        assert all(dead(p) for p in pids)
        try:  # --max 2 counts the aborted run; an engine that holds after the abort is stopped
            out, err = engine.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            assert cli("-C", str(ws.root), "stop").returncode == 0
            out, err = engine.communicate(timeout=120)
    finally:
        if engine.poll() is None:
            engine.kill()
    assert engine.returncode == 0, err[-3000:]
    rows = tsv_rows(ws)
    assert rows[-1][3] == "crash" and "aborted" in rows[-1][4], rows
