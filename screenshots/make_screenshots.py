"""Screenshots of autoresearch-tui (SVG, and PNG where a converter is installed) from a real demo run.

Usage:
  uv run python screenshots/make_screenshots.py                  # build a CPU demo workspace, run the real
                                                                 # engine + mutate agent for a few experiments
  uv run python screenshots/make_screenshots.py WORKSPACE        # render an existing workspace as it is now
  uv run python screenshots/make_screenshots.py --experiments 8 --keep-workspace /tmp/demo-ws

Without WORKSPACE the script creates a workspace (cpu profile, offline pystdlib data, 10 s budget, a smaller
evaluation), starts `autoresearch loop --detach --agent mutate`, waits until the given number of experiments
have finished and the next one is training, renders the screens while it trains, then stops the engine.
Writes into screenshots/: dashboard-160x50, experiment-detail, help, dashboard-80x24 and results-80x24
(.svg; .png through rsvg-convert, cairosvg or ImageMagick's convert when one is available).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = Path(__file__).resolve().parent
DISPLAY_ROOT = "~/autoresearch-demo"  # the temp folder's name says nothing to a reader


def cli(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, check=check, capture_output=True,
                          text=True, **kw)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def finished(root: Path) -> int:
    try:
        return max(0, len((root / "results.tsv").read_text().splitlines()) - 1)
    except OSError:
        return 0


def build_and_run(root: Path, experiments: int, budget: float) -> int:
    """A real demo workspace with `experiments` finished and the next one training; returns the engine pid."""
    from core.scaffold import create_workspace

    create_workspace(root, profile="cpu", dataset="pystdlib", time_budget=budget)
    consts = root / "constants.py"
    # a quarter of the CPU profile's evaluation: the screenshots need experiments, not precise numbers
    consts.write_text(re.sub(r"^EVAL_TOKENS = .*$", "EVAL_TOKENS = 16384  # smaller for the screenshots",
                             consts.read_text(), flags=re.M))
    subprocess.run(["git", "-C", str(root), "-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost",
                    "commit", "-qam", "smaller evaluation"], check=True)
    print("preparing data (offline pystdlib corpus, tokenizer)…", flush=True)
    subprocess.run([sys.executable, "prepare.py"], cwd=root, check=True, capture_output=True)
    cli("-C", str(root), "loop", "--detach", "--agent", "mutate", "--tag", "demo")
    state = root / ".autoresearch" / "engine.json"
    t0 = time.monotonic()
    last = -1
    while True:
        n = finished(root)
        if n != last:
            print(f"  {n}/{experiments} experiments finished ({time.monotonic() - t0:.0f} s)", flush=True)
            last = n
        eng = read_json(state)
        if eng.get("status") == "stopped":
            raise SystemExit(f"the engine stopped: {eng.get('message')}; see {root / '.autoresearch' / 'engine.log'}")
        if n >= experiments and eng.get("phase") == "training" and trainer_remaining(root / "run.log") >= 3:
            return int(eng["pid"])
        time.sleep(0.2)


def trainer_remaining(run_log: Path) -> float:
    """The 'remaining: Ns' of the trainer's current progress line (-1 before it prints one): the screenshots
    are taken while it counts down, so the header shows the trainer's own countdown."""
    try:
        tail = run_log.read_bytes()[-4096:].decode("utf-8", "replace")
    except OSError:
        return -1
    for state in reversed(tail.split("\n")[-1].split("\r")):  # the live line's newest complete state
        m = re.search(r"remaining: (\d+)s", state)
        if m:
            return float(m.group(1))
    return -1


def stop_engine(root: Path, pid: int) -> None:
    cli("-C", str(root), "stop", check=False)
    try:
        os.kill(pid, signal.SIGTERM)  # graceful and prompt: the running experiment is recorded as stopped
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


async def render(root: Path, name: str, size: tuple[int, int], keys=(), before=None) -> Path:
    from core.gpu import GpuMonitor
    from tui.app import DashboardApp

    app = DashboardApp(root, live=False, gpu_monitor=GpuMonitor(), display_root=DISPLAY_ROOT)
    app.animation_level = "none"
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        if before is not None:
            await before(app, pilot)
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await app.workers.wait_for_complete()
        await pilot.wait_for_scheduled_animations()
        await pilot.pause()
        app.title = f"autoresearch-tui · {name}"
        path = Path(app.save_screenshot(f"{name}.svg", str(OUT)))
    return path


async def select_interesting_row(app, pilot) -> None:
    """Put the cursor on the newest kept experiment that is not the baseline (a diff worth reading)."""
    from tui.widgets.results import ResultsTable

    table = app.screen.query_one(ResultsTable)
    for i, r in enumerate(table.view):
        if r.status == "keep" and r.description != "baseline":
            table.cursor = i
            return
    for i, r in enumerate(table.view):
        if r.description != "baseline":
            table.cursor = i
            return


def for_raster(svg_text: str) -> str:
    """The SVG as an offline converter needs it: Textual's SVG asks for the Fira Code web font (which a
    converter cannot fetch) and leaves runs of spaces to the default whitespace handling, which librsvg
    collapses (columns then drift). Use an installed monospace font and keep every space."""
    font = "DejaVu Sans Mono"
    if shutil.which("fc-list"):
        fonts = subprocess.run(["fc-list", ":spacing=mono", "family"], capture_output=True, text=True).stdout
        if font not in fonts and fonts.strip():
            font = fonts.splitlines()[0].split(",")[0].strip()
    svg_text = svg_text.replace('font-family: "Fira Code"', f'font-family: "{font}"')
    svg_text = svg_text.replace("font-family: Fira Code, monospace", f"font-family: {font}, monospace")
    return svg_text.replace("<svg ", '<svg xml:space="preserve" ', 1)


def to_png(svg: Path) -> Path | None:
    png = svg.with_suffix(".png")
    with tempfile.NamedTemporaryFile("w", suffix=".svg", encoding="utf-8", delete=False) as f:
        f.write(for_raster(svg.read_text(encoding="utf-8")))
        src = f.name
    try:
        if shutil.which("rsvg-convert"):
            cmd = ["rsvg-convert", "-o", str(png), src]
        elif shutil.which("cairosvg"):
            cmd = ["cairosvg", src, "-o", str(png)]
        elif shutil.which("convert"):
            cmd = ["convert", src, str(png)]
        else:
            return None
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            print(f"  no PNG for {svg.name}: {e}", file=sys.stderr)
            return None
    finally:
        os.unlink(src)
    shrink_png(png)
    return png


def shrink_png(png: Path, colors: int = 128) -> None:
    """A terminal has few colours: a palette PNG is a third of the size and looks the same (Pillow comes
    with matplotlib; without it the PNG stays as the converter wrote it)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as im:
        small = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(png, optimize=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workspace", nargs="?", help="render this workspace as it is (default: build and run a demo)")
    p.add_argument("--experiments", type=int, default=5, help="finished experiments before the screenshots (5)")
    p.add_argument("--budget", type=float, default=10.0, help="TIME_BUDGET of the demo workspace in seconds (10)")
    p.add_argument("--keep-workspace", default=None, help="build the demo here and keep it (default: a temp dir)")
    p.add_argument("--no-png", action="store_true")
    args = p.parse_args(argv)

    tmp = None
    pid = None
    if args.workspace:
        root = Path(args.workspace).expanduser().resolve()
    elif args.keep_workspace:
        root = Path(args.keep_workspace).expanduser().resolve()
    else:
        tmp = tempfile.TemporaryDirectory(prefix="ar-screens-")
        root = Path(tmp.name) / "ws"
    try:
        if not args.workspace:
            if not os.environ.get("AUTORESEARCH_CACHE") and tmp is not None:
                os.environ["AUTORESEARCH_CACHE"] = str(Path(tmp.name) / "cache")  # leave the user's cache alone
            pid = build_and_run(root, args.experiments, args.budget)
        shots = [
            ("dashboard-160x50", (160, 50), (), None),
            ("experiment-detail", (160, 50), ("enter",), select_interesting_row),
            ("help", (160, 50), ("question_mark",), None),
            ("dashboard-80x24", (80, 24), (), None),
            ("results-80x24", (80, 24), ("right_square_bracket",), None),
        ]
        for name, size, keys, before in shots:
            svg = asyncio.run(render(root, name, size, keys, before))
            png = None if args.no_png else to_png(svg)
            print(f"wrote {svg.relative_to(ROOT)}" + (f" and {png.name}" if png else ""), flush=True)
    finally:
        if pid is not None:
            stop_engine(root, pid)
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
