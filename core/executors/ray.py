"""The Ray executor: each experiment's training is one Ray task on a cluster node (`--executor ray`).

The engine, the ledger and the ratchet stay on the workspace's machine. A run crosses the network as data:
train.py, the workspace's prepare.py and constants.py and the run's id go to the node; the node runs
core.training.run_training in a scratch folder there and streams the output back as the items of a Ray
streaming generator; the last item is the TrainResult with the trusted metrics of prepare.py's evaluation.

Ray is an optional extra: `import ray` happens only inside the functions of this module.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from .. import pyconst
from ..containment import RUN_ENV, workspace_key
from ..errors import UserError
from ..procs import KILL_GRACE_S, kill_group
from ..runner import LogSink
from ..runner import run as run_command
from ..training import TrainResult, eval_dir_of, run_training, trainer_env
from ..workspace import atomic_write_text
from .base import RunCallbacks, RunSpec, Slot, ThreadRunHandle

INSTALL_HINT = ("--executor ray needs Ray, an optional extra: install it with `uv sync --extra ray` "
                "(or `pip install 'autoresearch[ray]'`).")
SCRATCH = "autoresearch-ray"  # the nodes' scratch folders: <tmp>/autoresearch-ray/<workspace key>/<exp id>
PREPARED = ".autoresearch-prepared"  # in the node's data cache: one marker per prepared (dataset, prepare.py)
POLL_S = 0.2  # how often a waiting engine thread looks at cancel and the timeout
CANCEL_WAIT_S = KILL_GRACE_S + 25.0  # a cancelled task that has not ended by then is killed with force
NODE_SILENCE_S = 60.0  # beyond the run's own timeout: the node enforces it; this is the engine's backstop
CLEANUP_WAIT_S = 60.0
PLACE_NOTE_S = 10.0  # a run not placed by then says so in its log (no node has what it reserves)
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_MAX_CHUNK = 1 << 20  # output bytes per streamed item


def import_ray():
    """The ray module, or UserError saying how to install the extra."""
    # Ray's `uv run` integration would upload the engine's folder and start every worker through `uv run`
    # (a fresh environment per node); the nodes get this engine's core package instead (see _connect)
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


# --- on the node ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NodeJob:
    """What one run sends to its node: data only (no path of the engine's machine is used there)."""

    exp_id: str
    ws_key: str
    files: dict[str, str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    cache: str | None = None  # a data cache path valid on every node; None: the node's own


def _cache_dir(cache: str | None) -> Path:
    """The node's data cache: the given path, else prepare.py's rule ($AUTORESEARCH_CACHE, ~/.cache/autoresearch)."""
    if cache:
        return Path(cache).expanduser()
    env = os.environ.get("AUTORESEARCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoresearch"


def _prepare_key(files: dict[str, str]) -> tuple[str | None, str]:
    """(dataset, marker name): a node prepares once per dataset, vocabulary and version of prepare.py."""
    try:
        consts = {k: c.value for k, c in pyconst.parse(files.get("constants.py", "")).items()}
    except (SyntaxError, ValueError):
        consts = {}
    dataset = consts.get("DATASET")
    dataset = str(dataset) if dataset is not None else None
    what = json.dumps([dataset, consts.get("VOCAB_SIZE"), hashlib.sha1(files["prepare.py"].encode()).hexdigest()])
    return dataset, hashlib.sha1(what.encode()).hexdigest()[:16]


def ensure_data(job: NodeJob, node: str, emit: Callable[[bytes], None], cancel: threading.Event) -> str | None:
    """Prepare the run's dataset on this node unless it was prepared before: returns None, or why it failed.

    prepare.py (the workspace's) runs once per node and dataset, under a file lock: two runs that start
    together on one node (or on nodes sharing one cache folder) do not prepare at once.
    """
    if "prepare.py" not in job.files:
        return None
    dataset, key = _prepare_key(job.files)
    cache = _cache_dir(job.cache)
    marks = cache / PREPARED
    marker = marks / f"{key}.json"
    if marker.exists():
        return None
    try:
        marks.mkdir(parents=True, exist_ok=True)
        lock = open(marks / "prepare.lock", "a")
    except OSError as e:
        return f"data preparation failed on node {node}: cannot write the cache {cache}: {e.strerror or e}"
    what = f"dataset {dataset!r}" if dataset else "the dataset"
    with lock:
        waited = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    emit(f"autoresearch: waiting for another run that prepares {what} on node {node}\n".encode())
                    waited = True
                if cancel.wait(0.2):
                    return "cancelled"
        if marker.exists():
            return None  # prepared by the run we waited for
        emit(f"autoresearch: first run on node {node}: preparing {what} in {cache} (once per node; later runs "
             "reuse it)\n".encode())
        t0 = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="autoresearch-prepare-"))
        try:
            for name in ("prepare.py", "constants.py"):
                if name in job.files:
                    (work / name).write_text(job.files[name], encoding="utf-8")
            env = trainer_env(os.environ)
            env.update({"AUTORESEARCH_CACHE": str(cache), RUN_ENV: f"{job.ws_key}/{job.exp_id}",
                        "PYTHONUNBUFFERED": "1"})
            res = run_command([sys.executable, "prepare.py"], cwd=work, env=env, logs=[], timeout=None,
                              cancel=cancel, on_output=emit)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if res.cancelled:
            return "cancelled"
        if res.error or res.returncode != 0:
            last = next((x.strip() for x in reversed(res.tail) if x.strip()), res.error or f"exit code {res.returncode}")
            return f"data preparation failed on node {node}: {last.removeprefix('prepare.py: ')}"
        atomic_write_text(marker, json.dumps({"dataset": dataset, "prepared_at": time.time(), "node": node}) + "\n")
        emit(f"autoresearch: {what} ready on node {node} after {time.monotonic() - t0:.1f} s\n".encode())
    return None


def _scratch(ws_key: str) -> Path:
    return Path(tempfile.gettempdir()) / SCRATCH / ws_key


def _crash(reason: str, tail: list[str], duration: float, **flags) -> TrainResult:
    return TrainResult(ok=False, val_bpb=None, peak_vram_mb=None, metrics={}, reason=reason, tail=tail,
                       duration_s=duration, **flags)


def node_run(job: NodeJob) -> Iterator[tuple]:
    """The Ray task of one run (a streaming generator), executed on the node Ray chose.

    Items: ("placed", node id, host name, GPU ids), ("pid", trainer pid), ("phase", p), ("out", bytes),
    last ("result", TrainResult, metrics text or None). A cancel (ray.cancel) raises KeyboardInterrupt
    here; the finally block then kills the trainer's process group before the task ends.
    """
    import ray

    ctx = ray.get_runtime_context()
    gpus = [str(g) for g in (ctx.get_accelerator_ids() or {}).get("GPU", [])]
    host = socket.gethostname()
    yield ("placed", ctx.get_node_id(), host, gpus)
    node = f"{host} (Ray node {ctx.get_node_id()[:6]})"
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    run_dir = _scratch(job.ws_key) / job.exp_id
    # run_training copies the trusted metrics here after the trainer ended; a private folder, so that the
    # trainer cannot plant a file at a path it could guess
    private = Path(tempfile.mkdtemp(prefix="autoresearch-metrics-copy-"))
    metrics = private / "metrics.json"
    env = dict(job.env)
    env[RUN_ENV] = f"{job.ws_key}/{job.exp_id}"
    if job.cache:
        env["AUTORESEARCH_CACHE"] = str(_cache_dir(job.cache))

    def out(data: bytes) -> None:
        events.put(("out", data))

    def work() -> None:
        t0 = time.monotonic()
        try:
            failed = ensure_data(job, node, out, cancel)
            if failed:
                events.put(("result", _crash(failed, [], time.monotonic() - t0, cancelled=failed == "cancelled"),
                            None))
                return
            res = run_training(job.files, run_dir, logs=[], metrics_out=metrics, timeout=job.timeout, env=env,
                               cancel=cancel, on_start=lambda pid: events.put(("pid", pid)),
                               on_phase=lambda p: events.put(("phase", p)), on_output=out, owner=job.ws_key)
            try:
                text = metrics.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                text = None
            events.put(("result", res, text))
        except BaseException as e:  # a bug or a broken node: the engine records it as a crash, never hangs
            events.put(("result", _crash(f"executor error on node {node}: {type(e).__name__}: {e}", [],
                                         time.monotonic() - t0), None))
        finally:
            shutil.rmtree(private, ignore_errors=True)

    worker = threading.Thread(target=work, name=f"run-{job.exp_id}", daemon=True)
    worker.start()
    held = None  # an item taken while gathering output, sent next
    try:
        while True:
            if held is not None:
                item, held = held, None
            else:
                try:
                    item = events.get(timeout=0.5)
                except queue.Empty:
                    continue
            if item[0] == "out":  # whatever output is already there goes in the same item
                chunks, size = [item[1]], len(item[1])
                while size < _MAX_CHUNK:
                    try:
                        nxt = events.get_nowait()
                    except queue.Empty:
                        break
                    if nxt[0] != "out":
                        held = nxt
                        break
                    chunks.append(nxt[1])
                    size += len(nxt[1])
                item = ("out", b"".join(chunks))
            yield item
            if item[0] == "result":
                return
    finally:
        cancel.set()  # a no-op once the run ended; on a cancel, run_training kills the process group
        worker.join(timeout=CANCEL_WAIT_S)


def sweep(ws_key: str, exp_id: str | None = None) -> list[dict]:
    """Kill every process that runs of this workspace (or its run exp_id) left on this node (a cleanup task).

    Processes are found by RUN_ENV in their environment, which the trainer's children inherit; each one's
    whole process group is killed. Returns what was found: [{"pid", "run"}].
    """
    import psutil

    found, groups = [], set()
    for p in psutil.process_iter():
        try:
            mark = p.environ().get(RUN_ENV, "")
        except (psutil.Error, OSError):
            continue
        if not mark.startswith(f"{ws_key}/") or p.pid == os.getpid():
            continue
        if exp_id is not None and mark != f"{ws_key}/{exp_id}":
            continue
        found.append({"pid": p.pid, "run": mark.split("/", 1)[1]})
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(p.pid))
    for pgid in groups:
        if pgid not in (os.getpgid(0), 0, 1):
            kill_group(pgid)
    for item in found:
        with contextlib.suppress(psutil.Error, OSError):
            psutil.Process(item["pid"]).kill()
    if exp_id is None:
        shutil.rmtree(_scratch(ws_key), ignore_errors=True)
    else:
        shutil.rmtree(_scratch(ws_key) / exp_id, ignore_errors=True)
        shutil.rmtree(eval_dir_of(_scratch(ws_key) / exp_id), ignore_errors=True)
    return found


# --- on the engine's machine -----------------------------------------------------------------------------

def _lost(e: BaseException, node: str | None, label: str) -> str:
    """The crash reason of a run that Ray lost (its node died, its worker crashed, its objects are gone)."""
    from ray.exceptions import NodeDiedError

    if node is None:
        return f"node lost: Ray lost the run before placing it ({type(e).__name__})"
    if isinstance(e, NodeDiedError):
        return f"node lost: node {node} died while the run was on it ({label})"
    first = (str(e).strip().splitlines() or [""])[0][:200]
    return f"node lost: Ray lost the run on {label} ({type(e).__name__}" + (f": {first})" if first else ")")


class RayRunHandle(ThreadRunHandle):
    """One run as a Ray task; a thread of the engine follows its stream. slot gets the node once placed."""

    def __init__(self, executor: "RayExecutor", slot: Slot, spec: RunSpec, callbacks: RunCallbacks):
        self._executor = executor
        self._callbacks = callbacks
        self.node: str | None = None
        self.node_id: str | None = None
        self.placed_at: float | None = None  # seconds from start() to the task running on its node
        self.first_output_at: float | None = None
        super().__init__(slot, spec, self._follow)

    def _follow(self, cancel: threading.Event) -> TrainResult:
        ray = import_ray()
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError

        ex, spec, cb = self._executor, self.spec, self._callbacks
        t0 = time.monotonic()
        sink = LogSink(spec.logs, cb.on_output)
        env = dict(spec.env)
        if spec.seed is not None:
            env["AUTORESEARCH_SEED"] = str(spec.seed)
        env.update(ex.trainer_env)
        job = NodeJob(spec.exp_id, ex.ws_key, dict(spec.files), spec.timeout, env, ex.cache)
        phase = "starting"
        cb.on_phase(phase)
        gen = ex.remote_run.options(name=f"autoresearch {ex.ws_key} {spec.exp_id}").remote(job)
        cancelled_at = forced_at = deadline = None
        timed_out = waiting_said = False
        try:
            while True:
                now = time.monotonic()
                if cancelled_at is None and (cancel.is_set() or (deadline is not None and now > deadline)):
                    timed_out = not cancel.is_set()
                    ray.cancel(gen)
                    cancelled_at = now
                elif cancelled_at is not None and forced_at is None and now - cancelled_at > CANCEL_WAIT_S:
                    ray.cancel(gen, force=True)
                    forced_at = now
                elif forced_at is not None and now - forced_at > CANCEL_WAIT_S:  # Ray never confirmed the end
                    self._sweep()
                    return self._stopped(timed_out, sink, now - t0)
                ready, _ = ray.wait([gen], timeout=POLL_S)
                if not ready:
                    if self.node is None and not waiting_said and time.monotonic() - t0 > PLACE_NOTE_S:
                        waiting_said = True
                        sink.write(f"autoresearch: waiting for Ray to place the run ({ex.reserves}); no node has "
                                   "that free now: `ray status` shows the cluster\n".encode())
                    continue
                try:
                    item = ray.get(next(gen))
                except StopIteration:
                    return _crash(f"node lost: the task on {self.slot.label} ended without a result",
                                  sink.tail.lines(), time.monotonic() - t0)
                except TaskCancelledError:
                    if cancelled_at is None:
                        return _crash("cancelled on the Ray cluster (ray.cancel or a stopped job)", sink.tail.lines(),
                                      time.monotonic() - t0, cancelled=True)
                    if forced_at is not None:  # the worker was killed: nothing in it cleaned up
                        self._sweep()
                    return self._stopped(timed_out, sink, time.monotonic() - t0)
                except RayTaskError as e:  # raised by our code on the node, not a lost node
                    return _crash(f"executor error on {self.node or 'the node'}: {getattr(e, 'cause', e)!r}"[:500],
                                  sink.tail.lines(), time.monotonic() - t0)
                except RayError as e:  # NodeDiedError, WorkerCrashedError, ObjectLostError, OwnerDiedError, ...
                    self._sweep()  # a crashed worker leaves the trainer's children behind on a live node
                    return _crash(_lost(e, self.node, self.slot.label), sink.tail.lines(), time.monotonic() - t0)
                kind = item[0]
                if kind == "out":
                    if self.first_output_at is None:
                        self.first_output_at = time.monotonic() - t0
                    sink.write(item[1])
                elif kind == "placed":
                    self.placed_at = time.monotonic() - t0
                    self.node_id = item[1]
                    self.node = ex.node_name(item[1], item[2])
                    self.slot = replace(self.slot, node=self.node, label=ex.slot_label(self.node, item[3]))
                    sink.write(f"autoresearch: placed by Ray on {self.slot.label} after {self.placed_at:.1f} s\n"
                               .encode())
                    placed = getattr(cb, "on_placed", None)  # the slot's label with its node and GPU, if heard
                    if placed is not None:
                        placed(self.slot)
                    cb.on_start(None, self.node)
                elif kind == "pid":
                    deadline = time.monotonic() + spec.timeout + NODE_SILENCE_S
                elif kind == "phase":
                    if item[1] != phase:
                        phase = item[1]
                        cb.on_phase(phase)
                elif kind == "result":
                    res, text = item[1], item[2]
                    if text is not None:
                        atomic_write_text(spec.metrics_out, text)
                    return res
        finally:
            sink.close()

    def _stopped(self, timed_out: bool, sink: LogSink, duration: float) -> TrainResult:
        if timed_out:  # the node enforces the timeout itself; this is the engine's backstop when it did not
            return _crash(f"timed out after {self.spec.timeout:.0f} s (hard limit; the node did not end it)",
                          sink.tail.lines(), duration, timed_out=True)
        return _crash("cancelled", sink.tail.lines(), duration, cancelled=True)

    def _sweep(self) -> None:
        if self.node_id is not None:
            self._executor.sweep_node(self.node_id, self.spec.exp_id, self._executor.log)


class RayExecutor:
    """Runs each experiment's training as one Ray task (one GPU, or CPUs / a custom resource) on a cluster."""

    name = "ray"

    def __init__(self, ws_root: Path, *, address: str | None = None, slots: int | None = None,
                 resource: str | None = None, cpus_per_run: int | None = None, cache: str | None = None,
                 log: Callable[[str], None] = print):
        """Connect to the cluster and count its slots.

        address: `--ray-address`; None: RAY_ADDRESS, else the cluster started with `ray start` on this
          machine, else a new local Ray instance on this machine (said in the log).
        slots: `--slots N`, a cap on the slots the cluster offers.
        resource: what one run reserves: "GPU" (num_gpus=1), "CPU" (cpus_per_run CPUs) or the name of a
          custom resource (1 unit); None: GPU when the cluster has GPUs, else CPU.
        cpus_per_run: CPUs each run reserves besides its GPU/resource (default 1), and the trainer's CPU
          threads; on a CPU-only cluster the default is all CPUs of the smallest node (one run per node).
        cache: a data cache folder valid on every node (shared storage); None: each node prepares its own.
        resource, cpus_per_run and cache not given come from AUTORESEARCH_RAY_RESOURCE, AUTORESEARCH_RAY_CPUS
        and AUTORESEARCH_RAY_CACHE when those are set.
        """
        ray = import_ray()
        resource = resource or os.environ.get("AUTORESEARCH_RAY_RESOURCE") or None
        cache = cache or os.environ.get("AUTORESEARCH_RAY_CACHE") or None
        if cpus_per_run is None and os.environ.get("AUTORESEARCH_RAY_CPUS"):
            try:
                cpus_per_run = int(os.environ["AUTORESEARCH_RAY_CPUS"])
            except ValueError:
                raise UserError(f"AUTORESEARCH_RAY_CPUS={os.environ['AUTORESEARCH_RAY_CPUS']!r} is not a whole "
                                "number of CPUs per run; set e.g. AUTORESEARCH_RAY_CPUS=4.") from None
        if slots is not None and slots < 1:
            raise UserError(f"--slots must be at least 1, not {slots}.")
        if cpus_per_run is not None and cpus_per_run < 1:
            raise UserError(f"the CPUs per Ray run must be at least 1, not {cpus_per_run}.")
        self.ws_root = Path(ws_root)
        self.ws_key = workspace_key(self.ws_root)
        self.cache = cache
        self.log = log
        self._closed = False
        if ray.is_initialized():  # this process is connected already (another executor, a test): share it
            _CONNECTION["users"] += 1
        else:
            address, origin = _resolve_address(address)
            _connect(ray, address, origin, log)
        self.address = ray.get_runtime_context().gcs_address
        totals = ray.cluster_resources()
        self._names: dict[str, str] = {}
        self._refresh_names()
        self.resource = resource or ("GPU" if totals.get("GPU", 0) >= 1 else "CPU")
        if self.resource == "CPU" and cpus_per_run is None:
            cpus = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive") and
                    n["Resources"].get("CPU", 0) >= 1]
            cpus_per_run = int(min(cpus)) if cpus else 1
        self.cpus_per_run = cpus_per_run or 1
        per = self.cpus_per_run if self.resource == "CPU" else 1
        offered = int(totals.get(self.resource, 0) // per)
        have = ", ".join(f"{k} {v:g}" for k, v in sorted(totals.items()) if not k.startswith(("node:", "memory",
                                                                                            "object_store")))
        if offered < 1:
            self.close()
            raise UserError(f"the Ray cluster at {self.address} has no {self.resource} for a run (it has: {have}); "
                            "add nodes with GPUs, or choose another resource.")
        count = offered if slots is None else min(slots, offered)
        if slots is not None and slots > offered:
            log(f"ray: --slots {slots} but the cluster offers {offered}: using {offered}")
        options = {"num_cpus": self.cpus_per_run, "max_retries": 0, "num_returns": "streaming"}
        if self.resource == "GPU":
            options["num_gpus"] = 1
        elif self.resource != "CPU":
            options["resources"] = {self.resource: 1}
        self.remote_run = ray.remote(**options)(node_run)
        # the trainer's CPU threads match what the run reserved (Ray would set OMP_NUM_THREADS alone)
        self.trainer_env = {v: str(self.cpus_per_run) for v in _THREAD_VARS}
        if self.resource == "GPU":
            what = "1 GPU"
        else:
            what = f"{self.cpus_per_run} CPU" if self.resource == "CPU" else f"1 {self.resource}"
        self.reserves = what
        self._slots = [Slot(str(i), f"Ray {self.resource} slot {i + 1}/{count}") for i in range(count)]
        alive = sum(1 for n in ray.nodes() if n.get("Alive"))
        self.summary = (f"Ray cluster at {self.address}: {alive} node(s), {have}; {count} slot(s) of {what} each")
        log(f"ray: {self.summary}")

    @classmethod
    def from_config(cls, ws_root: Path, cfg, log: Callable[[str], None] = print) -> "RayExecutor":
        """The executor of `autoresearch loop --executor ray` (LoopConfig: ray_address, slots, and the optional
        ray_resource, ray_cpus, ray_cache)."""
        return cls(ws_root, address=cfg.ray_address, slots=cfg.slots, resource=getattr(cfg, "ray_resource", None),
                   cpus_per_run=getattr(cfg, "ray_cpus", None), cache=getattr(cfg, "ray_cache", None), log=log)

    def _refresh_names(self) -> None:
        ray = import_ray()
        nodes = ray.nodes()
        hosts = [n.get("NodeManagerHostname") or n.get("NodeManagerAddress") or "node" for n in nodes]
        for n, host in zip(nodes, hosts):
            # several nodes on one host (containers, tests) are told apart by their Ray node id
            self._names[n["NodeID"]] = host if hosts.count(host) == 1 else f"{host}-{n['NodeID'][:6]}"

    def node_name(self, node_id: str, host: str) -> str:
        if node_id not in self._names:
            self._refresh_names()
        return self._names.get(node_id, f"{host}-{node_id[:6]}")

    def slot_label(self, node: str, gpus: list[str]) -> str:
        if self.resource == "GPU":
            return f"{node} GPU {','.join(gpus) or '?'}"
        if self.resource == "CPU":
            return f"{node} {self.cpus_per_run} CPU"
        return f"{node} {self.resource}"

    def slots(self) -> list[Slot]:
        return list(self._slots)

    def start(self, slot: Slot, spec: RunSpec, callbacks: RunCallbacks) -> RayRunHandle:
        return RayRunHandle(self, slot, spec, callbacks)

    def cleanup_orphans(self, log: Callable[[str], None]) -> None:
        """End what runs of this workspace left on the cluster (an engine killed with -9 cannot adopt them).

        Ray ends the tasks of a dead engine itself (their owner is gone); what can outlive a task is the
        trainer's process group on its node, so one cleanup task per live node kills every process marked
        with this workspace's key, and removes the workspace's scratch folders there.
        """
        ray = import_ray()
        nodes = {n["NodeID"]: self.node_name(n["NodeID"], n.get("NodeManagerHostname", "node"))
                 for n in ray.nodes() if n.get("Alive")}
        refs = {self._sweep_task(node_id, None): node_id for node_id in nodes}
        ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=CLEANUP_WAIT_S)
        for ref in ready:
            self._report_sweep(ref, nodes[refs[ref]], log)
        for ref in late:
            ray.cancel(ref, force=True)
            log(f"ray: node {nodes[refs[ref]]} did not answer the cleanup within {CLEANUP_WAIT_S:.0f} s")

    def sweep_node(self, node_id: str, exp_id: str, log: Callable[[str], None]) -> None:
        """Kill what run exp_id left on its node (after its Ray worker was lost or killed), if the node lives."""
        ray = import_ray()
        if not any(n["NodeID"] == node_id and n.get("Alive") for n in ray.nodes()):
            return
        ref = self._sweep_task(node_id, exp_id)
        ready, _ = ray.wait([ref], timeout=CLEANUP_WAIT_S)
        if ready:
            self._report_sweep(ref, self.node_name(node_id, "node"), log)
        else:
            ray.cancel(ref, force=True)

    def _sweep_task(self, node_id: str, exp_id: str | None):
        ray = import_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        return ray.remote(sweep).options(num_cpus=0, max_retries=0, scheduling_strategy=strategy,
                                         name=f"autoresearch {self.ws_key} cleanup").remote(self.ws_key, exp_id)

    @staticmethod
    def _report_sweep(ref, node: str, log: Callable[[str], None]) -> None:
        try:
            found = import_ray().get(ref)
        except Exception as e:  # a node that died meanwhile has nothing left to clean
            log(f"ray: cleanup on node {node} failed: {type(e).__name__}")
            return
        if found:
            runs = ", ".join(sorted({f["run"] for f in found}))
            log(f"ray: ended {len(found)} leftover process(es) of run(s) {runs} on node {node}")

    def close(self) -> None:
        """Disconnect; the last executor of this process stops the connection (and a local instance) it made."""
        if self._closed:
            return
        self._closed = True
        _CONNECTION["users"] -= 1
        if _CONNECTION["users"] <= 0 and _CONNECTION["owned"]:
            import_ray().shutdown()
            _CONNECTION["owned"] = False


_CONNECTION = {"users": 0, "owned": False}  # ray.init is once per process; executors share it


def _connect(ray, address: str, origin: str | None, log: Callable[[str], None]) -> None:
    import logging

    core_dir = Path(__file__).resolve().parent.parent
    # the nodes run this engine's own core package: shipped once per version of its files, cached by Ray
    runtime_env = {"py_modules": [str(core_dir)], "excludes": ["__pycache__", "*.pyc"]}
    kwargs = {"include_dashboard": False} if address == "local" else {}
    if os.environ.get("RAY_ENABLE_UV_RUN_RUNTIME_ENV") == "0":  # ray imported before import_ray() read it
        with contextlib.suppress(ImportError, AttributeError):
            from ray._private import ray_constants

            ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, runtime_env=runtime_env,
                 **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"could not connect to the Ray cluster at {address} ({first}); check that it runs "
                        "(`ray status` there) with the same Ray and Python versions as this machine, or fix "
                        "--ray-address / RAY_ADDRESS.") from None
    _CONNECTION["users"] += 1
    _CONNECTION["owned"] = True
    if address == "local":
        log("ray: no Ray cluster given (no --ray-address, RAY_ADDRESS unset, none started on this machine with "
            "`ray start`): started a local Ray instance on this machine; it stops with the engine "
            "(docs/cluster.md says how to start a cluster)")
    else:
        log(f"ray: connected to {address} ({origin})")


def _resolve_address(explicit: str | None) -> tuple[str, str | None]:
    """(address for ray.init, where it came from). Probing first turns a dead address into one clear sentence
    instead of Ray's minutes of retries (a stale /tmp/ray/ray_current_cluster is common)."""
    if explicit:
        address, origin = explicit, "--ray-address"
    elif os.environ.get("RAY_ADDRESS"):
        address, origin = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    else:
        current = _current_cluster()
        if current is None:
            return "local", None
        address, origin = current, "the cluster started on this machine with `ray start`"
    if address.startswith("ray://"):
        raise UserError(f"{address}: Ray Client addresses (ray://) are not supported; run the engine on a machine "
                        "that can join the cluster and pass the head's address (e.g. --ray-address head:6379).")
    if address == "local":
        return address, origin
    if address == "auto":
        current = _current_cluster()
        if current is None:
            raise UserError(f"Ray address 'auto' ({origin}): no Ray cluster runs on this machine; start one with "
                            "`ray start --head` or give the head's address.")
        return current, origin
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"Ray address {address!r} ({origin}) is not host:port; write e.g. --ray-address head:6379.")
    if not _reachable(host, int(port)):
        raise UserError(f"nothing answers at the Ray address {address} ({origin}); start the head there with "
                        "`ray start --head --port PORT` or fix the address.")
    return address, origin


def _current_cluster() -> str | None:
    """The address `ray start --head` on this machine left in /tmp/ray, if something still answers there."""
    path = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        address = path.read_text().strip()
    except OSError:
        return None
    host, _, port = address.rpartition(":")
    if host and port.isdigit() and _reachable(host, int(port)):
        return address
    return None


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False
