"""The run panel above the training log: what the run is doing (stage, times) and its loss against the best run's."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Vertical
from textual.widget import Widget

from ..runs import STAGES
from .chart import BITS
from .header import STAGE_WORDS, run_clock
from .slots import vs_best
from .styles import ComponentStyles

LABEL_W = 7  # "3.4120┤"


def y_range(curves) -> tuple[float, float] | None:
    """Losses of both curves past their first 5 % (the first steps' losses are several times the rest and would
    flatten everything that matters); all of them while a run has no later point yet."""
    late = [p.loss for c in curves for p in c if p.fraction >= 0.05]
    vals = late or [p.loss for c in curves for p in c]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-6:
        pad = max(1e-3, abs(lo) * 1e-3)
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.06
    return lo - pad, hi + pad


def render_curves(curves, width: int, height: int, lo: float, hi: float) -> list[list[int]]:
    """Each curve as connected braille dots (2 x 4 per cell, x = fraction 0..1, y = loss clipped to lo..hi);
    returns one mask grid per curve (height rows of width cells of dot bits). Pure, for tests."""
    X, Y = 2 * width, 4 * height
    grids = []
    for curve in curves:
        grid = [[0] * width for _ in range(height)]

        def put(x: int, y: int, grid=grid) -> None:
            if 0 <= x < X and 0 <= y < Y:
                grid[y // 4][x // 2] |= BITS[y % 4][x % 2]

        prev = None
        for p in curve:
            x = round(min(1.0, max(0.0, p.fraction)) * (X - 1))
            y = round((hi - min(hi, max(lo, p.loss))) / (hi - lo) * (Y - 1))
            if prev is None:
                put(x, y)
            else:
                px, py = prev
                n = max(abs(x - px), abs(y - py), 1)
                for k in range(1, n + 1):
                    put(px + round((x - px) * k / n), py + round((y - py) * k / n))
            prev = (x, y)
        grids.append(grid)
    return grids


_CSS_CLASSES = """
    {name} > .run-panel--stage {{ color: $text-accent; text-style: bold; }}
    {name} > .run-panel--dim {{ color: $text-muted; }}
    {name} > .run-panel--this {{ color: $accent; text-style: bold; }}
    {name} > .run-panel--best {{ color: $success; }}
    {name} > .run-panel--ahead {{ color: $success; text-style: bold; }}
    {name} > .run-panel--behind {{ color: $error; text-style: bold; }}
"""
_CLASSES = {"run-panel--stage", "run-panel--dim", "run-panel--this", "run-panel--best", "run-panel--ahead",
            "run-panel--behind"}


def explanation(run) -> str:
    """What the stage means, while the log has little to show."""
    if run.stage == "starting" and run.output:
        return "the trainer is taking its first step (on CUDA this compiles the model)"
    return STAGES.get(run.stage, "")


def append_loss(out: Text, run, best_curve, st, lead: str) -> None:
    """'loss 4.281 (−0.785 vs the best run)': ahead (green) or behind (red) at the same progress."""
    loss, delta = vs_best(run, best_curve)
    if run.loss is None:
        return
    out.append(f"{lead}loss ", style=st("dim"))
    out.append(loss, style=st("this"))
    if delta is not None:
        out.append(f" ({delta:+.3f} vs the best run)".replace("-", "−"), style=st("ahead" if delta < 0 else "behind"))


class RunStatus(Widget):
    """The run's line (stage, elapsed and training time) and what the stage means: repainted once a second."""

    DEFAULT_CSS = "RunStatus { width: 1fr; height: auto; text-wrap: nowrap; text-overflow: ellipsis; }" + \
        _CSS_CLASSES.format(name="RunStatus")
    COMPONENT_CLASSES = _CLASSES

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.run = None
        self.best_curve = ()
        self.with_loss = True  # the plot below shows the loss when it is there
        self._styles = ComponentStyles(self, "run-panel--")

    def get_content_height(self, container, viewport, width: int) -> int:
        return 0 if self.run is None else 1 + bool(explanation(self.run))

    def render(self) -> Text:
        run, st = self.run, self._styles
        out = Text(no_wrap=True, overflow="ellipsis")
        if run is None:
            return out
        out.append(f"exp {run.exp_id}", style=st("stage"))
        if run.label:
            out.append(f" on {run.label}", style=st("dim"))
        out.append(" · ")
        out.append(STAGE_WORDS.get(run.stage, run.stage), style=st("stage"))
        clock = run_clock(run)
        if clock:
            out.append(f" · {clock}")
        if self.with_loss:
            append_loss(out, run, self.best_curve, st, " · ")
        what = explanation(run)
        if what:
            out.append("\n" + what, style=st("dim"))
        return out


class LossPlot(Widget):
    """The run's loss against the best run's, by progress through the budget: repainted only when a new progress
    update arrives (its Text is the costly part of the panel)."""

    DEFAULT_CSS = "LossPlot { width: 1fr; height: 0; text-wrap: nowrap; text-overflow: ellipsis; }" + \
        _CSS_CLASSES.format(name="LossPlot")
    COMPONENT_CLASSES = _CLASSES

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.run = None
        self.best_curve = ()
        self.best_id: str | None = None
        self._key = None
        self._styles = ComponentStyles(self, "run-panel--")

    def set_data(self, run, best_curve, best_id) -> None:
        self.run, self.best_curve, self.best_id = run, best_curve, best_id
        c = run.curve if run is not None else ()
        loss = None if run is None or run.loss is None else f"{run.loss:.3f}"  # as the legend shows it
        key = (run.exp_id if run else None, len(c), c[-1] if c else None, loss, len(best_curve),
               best_curve[-1] if best_curve else None, best_id)
        if key != self._key:
            self._key = key
            self.refresh()

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        run, st = self.run, self._styles
        width, rows = self.content_region.width or self.size.width, self.content_region.height or self.size.height
        if run is None or rows < 3:
            return out
        curves = [self.best_curve, run.curve]
        rng = y_range([c for c in curves if c])
        if rng is None:
            return out
        lo, hi = rng
        plot_h, plot_w = rows - 2, max(4, width - LABEL_W)  # the x axis and the legend take a row each
        best_g, this_g = render_curves(curves, plot_w, plot_h, lo, hi)
        styles = {"this": st("this"), "best": st("best"), None: None}
        for r in range(plot_h):
            if r:
                out.append("\n")
            label = f"{hi:.3f}" if r == 0 else f"{lo:.3f}" if r == plot_h - 1 else ""
            out.append(label.rjust(LABEL_W - 1)[: LABEL_W - 1] + ("┤" if label else "│"), style=st("dim"))
            cells, layer_now = [], None  # consecutive cells of one layer become one span
            for c in range(plot_w):
                b, t = best_g[r][c], this_g[r][c]
                layer, ch = ("this", chr(0x2800 + (t | b))) if t else ("best", chr(0x2800 + b)) if b else (None, " ")
                if layer != layer_now and cells:
                    out.append("".join(cells), style=styles[layer_now])
                    cells = []
                layer_now = layer
                cells.append(ch)
            if cells:
                out.append("".join(cells), style=styles[layer_now])
        axis = ("0%".ljust(plot_w // 2 - 1) + "50%").ljust(plot_w - 4) + "100%"
        out.append("\n" + " " * LABEL_W + axis[:plot_w], style=st("dim"))
        out.append("\n")
        start = len(out.plain)
        out.append(" " * LABEL_W)
        if run.curve:
            out.append("━ this run", style=st("this"))
        if self.best_curve:
            out.append(f"  ━ best run{' ' + self.best_id if self.best_id else ''}", style=st("best"))
        append_loss(out, run, self.best_curve, st, "  ")
        hint = "  (loss by progress through the budget)"
        if len(out.plain) - start + len(hint) <= width:
            out.append(hint, style=st("dim"))
        return out


class RunPanel(Vertical):
    """Above the training log: the followed run's status and, where there is room, its loss curve. Attributes
    down: set_run(run view, best curve, best id); hidden while the followed slot runs nothing."""

    DEFAULT_CSS = "RunPanel { height: auto; padding: 0 1; background: $surface; }"

    MAX_CURVE_ROWS = 12

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.run = None
        self.best_curve = ()
        self.best_id: str | None = None
        self.display = False
        self._plot_rows = 0
        self._status_rows = 0

    def compose(self):
        yield RunStatus()
        yield LossPlot()

    def _curve_rows(self) -> int:
        """Rows for the plot: up to 40 % of the pane, none below 5 rows or without a curve to draw."""
        if self.run is None or not (self.run.curve or self.best_curve):
            return 0
        parent = self.parent
        rows = min(self.MAX_CURVE_ROWS, int((parent.size.height if parent is not None else 0) * 0.4))
        return rows if rows >= 5 else 0

    def set_run(self, run, best_curve=(), best_id: str | None = None) -> None:
        self.run, self.best_curve, self.best_id = run, tuple(best_curve), best_id
        show = run is not None
        if show != self.display:
            self.display = show
        rows = self._curve_rows()
        status, plot = self.query_one(RunStatus), self.query_one(LossPlot)
        status.run, status.best_curve, status.with_loss = run, self.best_curve, rows == 0
        status_rows = 0 if run is None else 1 + bool(explanation(run))
        status.refresh(layout=status_rows != self._status_rows)
        self._status_rows = status_rows
        if rows != self._plot_rows:
            plot.styles.height = rows
            self._plot_rows = rows
        plot.set_data(run, self.best_curve, best_id)

    def on_resize(self) -> None:
        if self.run is not None:
            self.set_run(self.run, self.best_curve, self.best_id)
