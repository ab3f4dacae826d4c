"""Dashboard performance: first frame, a log firehose (lag, memory), idle CPU, a 10,000-row results.tsv.

Usage:
  uv run python bench/tui_bench.py                 # everything (about 3 minutes; needs tmux)
  uv run python bench/tui_bench.py --lines 200000  # a shorter firehose
  uv run python bench/tui_bench.py --only first-frame idle results firehose
  uv run python bench/tui_bench.py --dashboard /other/checkout/.venv/bin/autoresearch-tui   # another version,
                                                 # on the same workspaces (run both in turn for before/after)

Everything runs the real `autoresearch-tui` process in a private tmux server (120x40) on hand-written
workspaces in the documented formats (tests/tui_fixtures.py), and measures it from outside:
- first frame: process start -> the dashboard's panes on the terminal (tmux capture every 10 ms), with and
  without Python's bytecode cache;
- firehose: a writer subprocess appends 10,000 lines/s plus `\\r` progress updates to run.log; each second
  the newest writer timestamp visible on the screen gives the lag, /proc/PID/status the resident memory;
- idle: a run printing one `\\r` status update per second; the TUI's CPU time from /proc/PID/stat over 20 s;
- results: a 10,000-row results.tsv: process start -> rows on screen, then key `2` -> filtered rows on
  screen; plus the same two steps inside one process (Textual's run_test), without the process start.
- idle-slots: idle CPU as above with a scheduler's engine.json: 4 slots, each trainer printing one status update
  a second to its train.log, and a proposal in flight (the Slots pane, four live curves, the log of one).
- wake: how long a results.tsv row appended by the engine takes to reach the screen (watchfiles wakes the
  dashboard; before it, a 0.5 s poll).
- chart-libs: the val_bpb chart drawn by hand (tui/widgets/chart.py) against the charting widgets for Textual,
  textual-plot and textual-plotext, each alone in a real terminal with 500 runs: process start -> the chart on
  screen, and CPU while a new run arrives every second. Needs a Python where those are installed:
  --chart-python /path/to/python (with textual, psutil and numpy; the project does not depend on them).
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

from tests.tui_fixtures import (  # noqa: E402
    TmuxTerminal,
    big_results,
    make_workspace,
    parallel_engine,
    tui_command,
    write_engine,
)

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
DASHBOARD: list[str] = []  # argv of the dashboard measured (--dashboard), else the installed autoresearch-tui


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
        self.term.start("exec " + shlex.join([*(DASHBOARD or tui_command()), str(root)]), size=size)
        self.pid = self.term.pane_pid()

    def wait(self, what: str, cond, timeout: float = 30.0, interval: float = 0.01) -> tuple[float, str]:
        """(seconds since the process was started, screen) once cond(screen) holds."""
        text = self.term.wait_for(what, cond, timeout, interval=interval)
        return time.perf_counter() - self.t0, text

    def close(self) -> None:
        self.term.kill()


def workspace(tmp: Path, name: str, **kw) -> Path:
    """A workspace whose engine is alive: this process writes engine.json and holds the engine lock, so the
    dashboard follows a running experiment (its process tree, its train.log) as it would a real engine's."""
    root = make_workspace(tmp / name, **kw)
    write_engine(root, status="running", phase="training", training_started_at=time.time() - 10, time_budget=300.0,
                 updated_at=time.time())
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


def idle_cpu(d: Dashboard, seconds: float) -> dict:
    """The dashboard's CPU share over `seconds`, after its start-up work (imports, first layout) is done."""
    time.sleep(3.0)
    c0, t0 = cpu_s(d.pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_s(d.pid), time.monotonic()
    screen = d.term.screen()
    return {"cpu_share": (c1 - c0) / (t1 - t0), "seconds": t1 - t0,
            "still_updating": bool(re.findall(r"step (\d{5})", screen))}


def bench_idle(tmp: Path, seconds: float = 20.0) -> dict:
    root = workspace(tmp, "idle", run_log=b"compiling...\n")
    ticker = subprocess.Popen([sys.executable, "-c", TICKER, str(root / "run.log")])
    d = Dashboard(root)
    try:
        d.wait("a status update on screen", lambda s: "step 0" in s, interval=0.05)
        return idle_cpu(d, seconds)
    finally:
        d.close()
        ticker.terminate()
        ticker.wait()


def bench_idle_slots(tmp: Path, slots: int = 4, seconds: float = 20.0) -> dict:
    root = make_workspace(tmp / "idle-slots")
    running = parallel_engine(root, n_slots=slots, proposals=1, gpu=False, now=time.time(), free=0)
    exp = root / ".autoresearch" / "experiments"
    tickers = [subprocess.Popen([sys.executable, "-c", TICKER, str(exp / exp_id / "train.log")]) for exp_id in running]
    d = Dashboard(root)
    try:
        d.wait("the Slots pane", lambda s: f"{slots} runs" in s and "step 0" in s, interval=0.05)
        return {**idle_cpu(d, seconds), "slots": slots}
    finally:
        d.close()
        for t in tickers:
            t.terminate()
            t.wait()


def bench_wake(tmp: Path, rounds: int = 10) -> dict:
    root = workspace(tmp, "wake")
    d = Dashboard(root)
    delays = []
    try:
        d.wait("first frame", lambda s: "0007  0000007" in s, interval=0.05)
        time.sleep(2.0)
        for k in range(rounds):
            n = 100 + k
            t0 = time.perf_counter()
            with open(root / "results.tsv", "a") as f:
                f.write(f"{n:07x}\t0.990000\t44.0\tdiscard\twake {n}\n")
            d.term.wait_for("the new row", lambda s, n=n: f"wake {n}" in s, 10, interval=0.005)
            delays.append(time.perf_counter() - t0)
            time.sleep(1.3 + 0.1 * k)  # off the 1 Hz tick, so the delay is the wake-up's
    finally:
        d.close()
    return {"median_s": statistics.median(delays), "max_s": max(delays), "delays": delays}


CHART_APP = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from textual.app import App
kind, n = sys.argv[1], int(sys.argv[2])

def run(i):  # (x, val_bpb, status) of experiment i: a slowly falling best with discards above it
    status = "keep" if i % 5 == 0 else ("crash" if i % 17 == 0 else "discard")
    best = 1.0 - 0.0002 * (i // 5 * 5)
    return i + 1, (0.0 if status == "crash" else best + (0.0 if status == "keep" else 0.001 + 0.0004 * (i % 7))), status

class Chart(App):
    def compose(self):
        if kind == "braille":
            from tui.widgets.chart import BpbChart
            yield BpbChart(id="c")
        elif kind == "textual-plot":
            from textual_plot import PlotWidget
            yield PlotWidget(id="c")
        else:
            from textual_plotext import PlotextPlot
            yield PlotextPlot(id="c")

    def on_mount(self):
        self.n = n
        self.draw()
        self.set_interval(1.0, self.tick)

    def tick(self):
        self.n += 1
        self.draw()

    def draw(self):
        runs = [run(i) for i in range(self.n)]
        ok = [(x, v, s) for x, v, s in runs if s != "crash"]
        kept = [(x, v) for x, v, s in ok if s == "keep"]
        disc = [(x, v) for x, v, s in ok if s == "discard"]
        c = self.query_one("#c")
        if kind == "braille":
            from core.ledger import Row, annotate
            from tui.state import Experiment
            rows = tuple(Experiment(e, None) for e in annotate([Row(f"{x:07x}", v, 1.0, s, "r") for x, v, s in runs]))
            c.set_rows(rows, kept[-1][1], runs[0][1])
        elif kind == "textual-plot":
            from textual_plot import HiResMode
            c.clear()
            c.scatter([x for x, _ in disc], [v for _, v in disc], marker_style="grey50", hires_mode=HiResMode.BRAILLE)
            c.scatter([x for x, _ in kept], [v for _, v in kept], marker_style="green", hires_mode=HiResMode.BRAILLE)
            c.plot([x for x, _ in kept], [v for _, v in kept], line_style="green", hires_mode=HiResMode.BRAILLE)
        else:
            plt = c.plt
            plt.clear_data()
            plt.scatter([x for x, _ in disc], [v for _, v in disc], marker="braille", color="gray")
            plt.scatter([x for x, _ in kept], [v for _, v in kept], marker="braille", color="green")
            plt.plot([x for x, _ in kept], [v for _, v in kept], marker="braille", color="green")
            c.refresh()

Chart().run()
"""


def bench_chart_libs(python: str, n: int = 500, seconds: float = 15.0) -> dict:
    out = {}
    for kind in ("braille", "textual-plot", "textual-plotext"):
        frames = []
        for _ in range(4):  # the first run fills the bytecode cache and is not counted
            term = TmuxTerminal()
            term.env.update({k: v for k, v in WARM.items() if v is not None})
            term.env.pop("PYTHONDONTWRITEBYTECODE", None)
            t0 = time.perf_counter()
            term.start(shlex.join([python, "-c", CHART_APP, kind, str(n), str(ROOT)]), size=SIZE)
            pid = term.pane_pid()
            try:
                term.wait_for(f"the {kind} chart", lambda s: sum(0x2800 < ord(ch) <= 0x28FF for ch in s) > 50, 60,
                              interval=0.01)
                frames.append(time.perf_counter() - t0)
                if len(frames) == 4:  # the last start: measure the CPU of a new run every second
                    time.sleep(3.0)
                    c0, m0 = cpu_s(pid), time.monotonic()
                    time.sleep(seconds)
                    out[f"{kind}_cpu_share"] = (cpu_s(pid) - c0) / (time.monotonic() - m0)
                    out[f"{kind}_rss_mb"] = rss_mb(pid)
            finally:
                term.kill()
        out[f"{kind}_frame_s"] = frames[1:]
    return out


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
    p.add_argument("--only", nargs="+", choices=["first-frame", "firehose", "idle", "idle-slots", "results", "wake",
                                                 "chart-libs"])
    p.add_argument("--chart-python", default=None, help="a Python with textual-plot and textual-plotext (chart-libs)")
    p.add_argument("--lines", type=int, default=1_000_000, help="firehose length (default 1,000,000)")
    p.add_argument("--rate", type=int, default=10_000, help="firehose lines per second (default 10,000)")
    p.add_argument("--dashboard", default=None, help="the dashboard command to measure (default: this checkout's)")
    args = p.parse_args(argv)
    if args.dashboard:
        DASHBOARD[:] = shlex.split(args.dashboard)
    if not TmuxTerminal.available():
        print("tui_bench: tmux is not installed; install it (apt-get install tmux) and run again.", file=sys.stderr)
        return 1
    only = set(args.only or ["first-frame", "firehose", "idle", "idle-slots", "results", "wake"]
               + (["chart-libs"] if args.chart_python else []))
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
        if "idle-slots" in only:
            r = bench_idle_slots(tmp)
            rows.append(row(f"idle CPU, {r['slots']} slots each printing one update per second",
                            f"{100 * r['cpu_share']:.2f} % of a core", "<= 2 %",
                            r["cpu_share"] <= 0.02 and r["still_updating"]))
            print(f"idle-slots: {r}", flush=True)
        if "wake" in only:
            r = bench_wake(tmp)
            rows.append(row("results.tsv row appended -> on screen", f"median {r['median_s'] * 1000:.0f} ms, "
                            f"max {r['max_s'] * 1000:.0f} ms", "", None))
            print(f"wake: {r}", flush=True)
        if "chart-libs" in only:
            if not args.chart_python:
                print("chart-libs needs --chart-python", file=sys.stderr)
                return 1
            r = bench_chart_libs(args.chart_python)
            for kind in ("braille", "textual-plot", "textual-plotext"):
                fr = r[f"{kind}_frame_s"]
                rows.append(row(f"chart alone, {kind}: first frame (500 runs)",
                                f"median {statistics.median(fr):.2f} s, max {max(fr):.2f} s", "", None))
                rows.append(row("  ... CPU with a new run every second, resident memory",
                                f"{100 * r[f'{kind}_cpu_share']:.2f} % of a core, {r[f'{kind}_rss_mb']:.0f} MB", "",
                                None))
            print(f"chart-libs: {r}", flush=True)
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
