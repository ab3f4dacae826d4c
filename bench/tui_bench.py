"""Dashboard performance: first frame, a log firehose (lag, memory), idle CPU, a 10,000-row results.tsv.

Usage:
  uv run python bench/tui_bench.py                 # everything (about 3 minutes; needs tmux)
  uv run python bench/tui_bench.py --lines 200000  # a shorter firehose
  uv run python bench/tui_bench.py --only first-frame idle results firehose

Everything runs the real `autoresearch-tui` process in a private tmux server (120x40) on hand-written
workspaces in the documented formats (tests/tui_fixtures.py), and measures it from outside:
- first frame: process start -> the dashboard's panes on the terminal (tmux capture every 10 ms), with and
  without Python's bytecode cache;
- firehose: a writer subprocess appends 10,000 lines/s plus `\\r` progress updates to run.log; each second
  the newest writer timestamp visible on the screen gives the lag, /proc/PID/status the resident memory;
- idle: a run printing one `\\r` status update per second; the TUI's CPU time from /proc/PID/stat over 20 s;
- results: a 10,000-row results.tsv: process start -> rows on screen, then key `2` -> filtered rows on
  screen; plus the same two steps inside one process (Textual's run_test), without the process start.
Prints a table of results against the targets. Not part of pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tui_fixtures import TmuxTerminal, big_results, make_workspace, tui_command, write_engine  # noqa: E402

SIZE = (120, 40)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Appends `rate` lines per second to run.log in 10 ms batches; every batch ends with three `\r` progress
# updates (the live line) that the next batch's first line overwrites, as a trainer's status line would.
# Each line carries the writer's wall-clock time, so the screen tells how far behind the dashboard is.
FIREHOSE = r"""
import sys, time
path, rate, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pad = "x" * 40
n = 0
t0 = time.time()
with open(path, "ab", buffering=0) as f:
    while n < total:
        due = min(total, int((time.time() - t0) * rate) + rate // 100)
        now = time.time()
        parts = [f"L{i:07d} {now:.3f} loss 3.1416 | {pad}\n" for i in range(n, due)]
        parts += [f"\rstep {due:07d} {now:.3f} | progress {k}" for k in range(3)]
        f.write("".join(parts).encode())
        n = due
        time.sleep(0.01)
print(f"{total / (time.time() - t0):.0f}", flush=True)
"""

# One status update a second, as a slow trainer's `\r` progress line.
TICKER = r"""
import sys, time
path = sys.argv[1]
with open(path, "ab", buffering=0) as f:
    i = 0
    while True:
        f.write(f"\rstep {i:05d} | loss 3.14 | remaining {1000 - i}s   ".encode())
        i += 1
        time.sleep(1.0)
"""

# Python's bytecode cache. A normal install writes __pycache__ on the first start and every later start
# reads it; a sandbox with PYTHONDONTWRITEBYTECODE=1 compiles Textual from source on every start (about
# 0.5 s). "warm" runs use a private cache folder (PYTHONPYCACHEPREFIX, so the venv is not touched), "cold"
# runs disable the cache.
PYCACHE = Path(tempfile.mkdtemp(prefix="tui-bench-pycache-"))
WARM = {"PYTHONDONTWRITEBYTECODE": None, "PYTHONPYCACHEPREFIX": str(PYCACHE)}
COLD = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": None}

STAMP = re.compile(r"(?:L|step )(\d{7}) (\d{10}\.\d{3})")


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the whole process (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Dashboard:
    """The real autoresearch-tui on a workspace, in a tmux pane; its pid for /proc."""

    def __init__(self, root: Path, size=SIZE, env: dict | None = None):
        self.term = TmuxTerminal()
        self.term.env.update(env if env is not None else WARM)
        for k in [k for k, v in self.term.env.items() if v is None]:
            del self.term.env[k]
        self.t0 = time.perf_counter()
        self.term.start("exec " + shlex.join([*tui_command(), str(root)]), size=size)
        self.pid = self.term.pane_pid()

    def wait(self, what: str, cond, timeout: float = 30.0, interval: float = 0.01) -> tuple[float, str]:
        """(seconds since the process was started, screen) once cond(screen) holds."""
        text = self.term.wait_for(what, cond, timeout, interval=interval)
        return time.perf_counter() - self.t0, text

    def close(self) -> None:
        self.term.kill()


def workspace(tmp: Path, name: str, **kw) -> Path:
    root = make_workspace(tmp / name, **kw)
    write_engine(root, status="running", phase="training", pid=os.getpid(), training_started_at=time.time() - 10,
                 time_budget=300.0)
    return root


# --- the measurements ---

def bench_first_frame(tmp: Path, runs: int = 5) -> dict:
    root = workspace(tmp, "first")
    out = {}
    # the first warm run fills the bytecode cache and is not counted
    for name, env, n in (("cold", COLD, runs), ("warm", WARM, 1), ("warm", WARM, runs)):
        frames, data = [], []
        for _ in range(n):
            d = Dashboard(root, env=env)
            try:
                t_frame, _ = d.wait("first frame", lambda s: "Training log" in s)
                t_data, _ = d.wait("results on screen", lambda s: "0007  0000007" in s)
            finally:
                d.close()
            frames.append(t_frame)
            data.append(t_data)
        out[f"{name}_frame_s"], out[f"{name}_data_s"] = frames, data
    return out


def bench_firehose(tmp: Path, lines: int, rate: int = 10_000) -> dict:
    root = workspace(tmp, "firehose", run_log=b"")
    d = Dashboard(root)
    samples = []  # (t since writer start, lag s, rss MB, newest line number on screen)
    try:
        d.wait("first frame", lambda s: "Training log" in s, interval=0.05)
        time.sleep(1.0)
        rss0 = rss_mb(d.pid)
        cpu0 = cpu_s(d.pid)
        writer = subprocess.Popen([sys.executable, "-c", FIREHOSE, str(root / "run.log"), str(rate), str(lines)],
                                  stdout=subprocess.PIPE, text=True)
        w0 = time.time()
        while writer.poll() is None:
            time.sleep(1.0)
            screen = d.term.screen()
            now = time.time()
            stamps = [(int(n), float(t)) for n, t in STAMP.findall(screen)]
            newest = max(stamps) if stamps else (0, w0)
            samples.append((now - w0, now - newest[1], rss_mb(d.pid), newest[0]))
        achieved = float(writer.stdout.read().strip() or 0)
        elapsed = time.time() - w0
        cpu = (cpu_s(d.pid) - cpu0) / elapsed
        # after the writer stops the last lines must reach the screen
        t_end, screen = d.wait("the last line", lambda s: f"L{lines - 1:07d}" in s, timeout=10, interval=0.05)
        rss_end = rss_mb(d.pid)
    finally:
        d.close()
    lags = [s[1] for s in samples]
    k = max(1, len(samples) // 10)
    return {"lines": lines, "rate_achieved": achieved, "seconds": elapsed, "lag_first_s": statistics.median(lags[:k]),
            "lag_last_s": statistics.median(lags[-k:]), "lag_max_s": max(lags), "rss_start_mb": rss0,
            "rss_max_mb": max(s[2] or 0 for s in samples), "rss_end_mb": rss_end, "cpu_share": cpu,
            "rss_first_mb": statistics.median([s[2] or 0 for s in samples[:k]]),
            "rss_last_mb": statistics.median([s[2] or 0 for s in samples[-k:]])}


def bench_idle(tmp: Path, seconds: float = 20.0) -> dict:
    root = workspace(tmp, "idle", run_log=b"compiling...\n")
    ticker = subprocess.Popen([sys.executable, "-c", TICKER, str(root / "run.log")])
    d = Dashboard(root)
    try:
        d.wait("a status update on screen", lambda s: "step 0" in s, interval=0.05)
        time.sleep(3.0)  # the start-up work (imports, first layout) is not idle time
        c0, t0 = cpu_s(d.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_s(d.pid), time.monotonic()
        screen = d.term.screen()
    finally:
        d.close()
        ticker.terminate()
        ticker.wait()
    shown = re.findall(r"step (\d{5})", screen)
    return {"cpu_share": (c1 - c0) / (t1 - t0), "seconds": t1 - t0, "still_updating": bool(shown)}


def bench_results(tmp: Path, n: int = 10_000) -> dict:
    # an upstream-style folder (results.tsv + run.log): rows are labelled #1..#n
    root = tmp / "results"
    root.mkdir()
    (root / "results.tsv").write_text(big_results(n))
    (root / "run.log").write_text("done\n")
    d = Dashboard(root)
    try:
        t_open, _ = d.wait("the newest row", lambda s: f"#{n} " in s)
        t_key = time.perf_counter()
        d.term.keys("2")
        t_filtered, _ = d.wait("the kept rows", lambda s: f"kept · {n // 4} of {n}" in s)
        t_filter = time.perf_counter() - t_key
        d.term.keys("/")
        d.wait("the search box", lambda s: "search id, commit" in s)
        t_key = time.perf_counter()
        d.term.keys(*"number 999")
        t_found, _ = d.wait("the search", lambda s: "“number 999”" in s and f"of {n}" in s)
        t_search = time.perf_counter() - t_key
    finally:
        d.close()
    inproc = asyncio.run(_results_in_process(root, n))
    return {"open_process_s": t_open, "filter_process_s": t_filter, "search_process_s": t_search, **inproc}


async def _results_in_process(root: Path, n: int) -> dict:
    from tests.tui_fixtures import StaticGpu, screen_text
    from tui.app import DashboardApp
    from tui.widgets.results import ResultsTable

    app = DashboardApp(root, live=False, gpu_monitor=StaticGpu())
    t0 = time.perf_counter()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert f"#{n} " in screen_text(app)
        t_open = time.perf_counter() - t0
        table = app.screen.query_one(ResultsTable)
        t0 = time.perf_counter()
        await pilot.press("2")
        text = screen_text(app)  # the frame after the key: filtered and drawn
        t_filter = time.perf_counter() - t0
        assert len(table.view) == n // 4 and f"{n // 4} of {n}" in text
        await pilot.press("1", "slash")
        t0 = time.perf_counter()
        await pilot.press("9")
        screen_text(app)
        t_key = time.perf_counter() - t0
    return {"open_inproc_s": t_open, "filter_inproc_s": t_filter, "search_key_inproc_s": t_key}


# --- report ---

def row(name: str, value: str, target: str, ok: bool | None) -> tuple[str, str, str, str]:
    return name, value, target, "" if ok is None else ("ok" if ok else "MISSED")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", nargs="+", choices=["first-frame", "firehose", "idle", "results"])
    p.add_argument("--lines", type=int, default=1_000_000, help="firehose length (default 1,000,000)")
    p.add_argument("--rate", type=int, default=10_000, help="firehose lines per second (default 10,000)")
    args = p.parse_args(argv)
    if not TmuxTerminal.available():
        print("tui_bench: tmux is not installed; install it (apt-get install tmux) and run again.", file=sys.stderr)
        return 1
    only = set(args.only or ["first-frame", "firehose", "idle", "results"])
    print(f"machine: {platform.node()} · {os.cpu_count()} CPUs · load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} · Python {platform.python_version()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tui-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if "first-frame" in only:
            r = bench_first_frame(tmp)
            for name, what in (("warm", "bytecode cached, every start after the first"),
                               ("cold", "no bytecode cache: first start / PYTHONDONTWRITEBYTECODE=1")):
                frames = r[f"{name}_frame_s"]
                med, worst = statistics.median(frames), max(frames)
                rows.append(row(f"first frame, {what}", f"median {med:.2f} s, max {worst:.2f} s", "<= 1.5 s",
                                worst <= 1.5))
                rows.append(row("  ... workspace data on screen",
                                f"median {statistics.median(r[f'{name}_data_s']):.2f} s", "", None))
                print(f"first frame ({name}): {', '.join(f'{x:.2f}' for x in frames)} s", flush=True)
        if "results" in only:
            r = bench_results(tmp)
            rows.append(row("10,000-row results.tsv: open (in process)", f"{r['open_inproc_s']:.2f} s", "<= 1 s",
                            r["open_inproc_s"] <= 1.0))
            rows.append(row("  ... open (process start -> rows on screen)", f"{r['open_process_s']:.2f} s",
                            "", None))
            rows.append(row("10,000-row results.tsv: filter kept (in process)", f"{r['filter_inproc_s'] * 1000:.0f} ms",
                            "<= 200 ms", r["filter_inproc_s"] <= 0.2))
            rows.append(row("  ... one search keystroke (in process)", f"{r['search_key_inproc_s'] * 1000:.0f} ms",
                            "<= 200 ms", r["search_key_inproc_s"] <= 0.2))
            rows.append(row("  ... filter key -> screen (real process, tmux)", f"{r['filter_process_s'] * 1000:.0f} ms",
                            "<= 200 ms", r["filter_process_s"] <= 0.2))
            print(f"results: {r}", flush=True)
        if "idle" in only:
            r = bench_idle(tmp)
            rows.append(row("idle CPU, one status update per second", f"{100 * r['cpu_share']:.2f} % of a core",
                            "<= 2 %", r["cpu_share"] <= 0.02 and r["still_updating"]))
            print(f"idle: {r}", flush=True)
        if "firehose" in only:
            r = bench_firehose(tmp, args.lines, args.rate)
            growing = r["lag_last_s"] > r["lag_first_s"] + 0.5
            rows.append(row(f"firehose {r['lines']:,} lines at {r['rate_achieved']:,.0f}/s: lag first/last 10 %",
                            f"{r['lag_first_s']:.2f} s / {r['lag_last_s']:.2f} s (max {r['lag_max_s']:.2f})",
                            "not growing", not growing))
            rows.append(row("  ... resident memory (start, first/last 10 %, max)",
                            f"{r['rss_start_mb']:.0f}, {r['rss_first_mb']:.0f}/{r['rss_last_mb']:.0f}, "
                            f"{r['rss_max_mb']:.0f} MB", "< 200 MB", r["rss_max_mb"] < 200))
            rows.append(row("  ... dashboard CPU while following", f"{100 * r['cpu_share']:.0f} % of a core", "",
                            None))
            print(f"firehose: {r}", flush=True)
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    print()
    print(f"{'measure'.ljust(w[0])}  {'result'.ljust(w[1])}  {'target'.ljust(w[2])}")
    for name, value, target, verdict in rows:
        print(f"{name.ljust(w[0])}  {value.ljust(w[1])}  {target.ljust(w[2])}  {verdict}")
    print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work on this machine "
          "inflates every time above)")
    shutil.rmtree(PYCACHE, ignore_errors=True)
    return 0 if all(r[3] != "MISSED" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
