"""The run panel above the training log: what the run is doing (stage, times) and its loss against the best run's."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from ..runs import STAGES
from .chart import BITS
from .header import STAGE_WORDS, run_clock
from .slots import vs_best

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


class RunPanel(Widget):
    """Attributes down: set_run(run view, best curve, best id). Hidden while the followed slot runs nothing."""

    DEFAULT_CSS = """
    RunPanel { height: auto; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; background: $surface; }
    RunPanel > .run-panel--stage { color: $text-accent; text-style: bold; }
    RunPanel > .run-panel--dim { color: $text-muted; }
    RunPanel > .run-panel--this { color: $accent; text-style: bold; }
    RunPanel > .run-panel--best { color: $success; }
    RunPanel > .run-panel--ahead { color: $success; text-style: bold; }
    RunPanel > .run-panel--behind { color: $error; text-style: bold; }
    """

    COMPONENT_CLASSES = {"run-panel--stage", "run-panel--dim", "run-panel--this", "run-panel--best",
                         "run-panel--ahead", "run-panel--behind"}

    MAX_CURVE_ROWS = 12

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.run = None
        self.best_curve = ()
        self.best_id: str | None = None
        self.display = False
        self._rows = 0
        self._plot_key = None
        self._plot: Text | None = None

    def set_run(self, run, best_curve=(), best_id: str | None = None) -> None:
        self.run, self.best_curve, self.best_id = run, tuple(best_curve), best_id
        show = run is not None
        if show != self.display:
            self.display = show
        rows = self._wanted_rows()
        self.refresh(layout=rows != self._rows)
        self._rows = rows

    def _curve_rows(self, pane_height: int) -> int:
        """Rows of curve that fit: up to 40 % of the pane, none below 4 rows or without a curve to draw."""
        if self.run is None or not (self.run.curve or self.best_curve):
            return 0
        rows = min(self.MAX_CURVE_ROWS, int(pane_height * 0.4))
        return rows if rows >= 5 else 0

    def _wanted_rows(self) -> int:
        parent = self.parent
        pane_h = parent.size.height if parent is not None else 0
        return 0 if self.run is None else 1 + bool(self._explanation()) + self._curve_rows(pane_h)

    def get_content_height(self, container, viewport, width: int) -> int:
        return 0 if self.run is None else 1 + bool(self._explanation()) + self._curve_rows(container.height)

    def _st(self, name: str):
        return self.get_component_rich_style(f"run-panel--{name}", partial=True)

    def render(self) -> Text:
        run = self.run
        out = Text(no_wrap=True, overflow="ellipsis")
        if run is None:
            return out
        width = self.content_region.width or self.size.width
        height = self.content_region.height or self.size.height
        out.append(f"exp {run.exp_id}", style=self._st("stage"))
        if run.label:
            out.append(f" on {run.label}", style=self._st("dim"))
        out.append(" · ")
        out.append(STAGE_WORDS.get(run.stage, run.stage), style=self._st("stage"))
        clock = run_clock(run)
        if clock:
            out.append(f" · {clock}")
        rows = height - 1
        what = self._explanation()
        curves = rows - bool(what) >= 5 and bool(run.curve or self.best_curve)
        if not curves:  # no room for the curves: the loss goes on this line
            self._loss(out, " · ")
        if what:
            out.append("\n" + what, style=self._st("dim"))
            rows -= 1
        if curves:
            self._draw_curves(out, width, rows)
        return out

    def _loss(self, out: Text, lead: str) -> None:
        """'loss 4.281 (−0.785 vs the best run)': ahead (green) or behind (red) at the same progress."""
        run = self.run
        loss, delta = vs_best(run, self.best_curve)
        if run.loss is None:
            return
        out.append(f"{lead}loss ", style=self._st("dim"))
        out.append(loss, style=self._st("this"))
        if delta is not None:
            out.append(f" ({delta:+.3f} vs the best run)".replace("-", "−"),
                       style=self._st("ahead" if delta < 0 else "behind"))

    def _explanation(self) -> str:
        run = self.run
        if run.stage == "starting" and run.output:
            return "the trainer is taking its first step (on CUDA this compiles the model)"
        return STAGES.get(run.stage, "")

    def _draw_curves(self, out: Text, width: int, rows: int) -> None:
        plot_h, plot_w = rows - 2, max(4, width - LABEL_W)  # the x axis and the legend take a row each
        run, best = self.run.curve, self.best_curve
        key = (self.run.exp_id, len(run), run[-1] if run else None, len(best), best[-1] if best else None, plot_w,
               plot_h, self.app.theme)
        if key != self._plot_key:
            # the plot changes only with a new progress update: once a second the run's line alone is redrawn
            self._plot_key, self._plot = key, self._plot_text(plot_w, plot_h)
        if self._plot is None:
            return
        out.append_text(self._plot)
        out.append("\n")
        start = len(out.plain)
        out.append(" " * LABEL_W)
        if self.run.curve:
            out.append("━ this run", style=self._st("this"))
        if self.best_curve:
            out.append(f"  ━ best run{' ' + self.best_id if self.best_id else ''}", style=self._st("best"))
        self._loss(out, "  ")
        hint = "  (loss by progress through the budget)"
        if len(out.plain) - start + len(hint) <= width:
            out.append(hint, style=self._st("dim"))

    def _plot_text(self, plot_w: int, plot_h: int) -> Text | None:
        curves = [self.best_curve, self.run.curve]
        rng = y_range([c for c in curves if c])
        if rng is None:
            return None
        lo, hi = rng
        best_g, this_g = render_curves(curves, plot_w, plot_h, lo, hi)
        out = Text()
        styles = {"this": self._st("this"), "best": self._st("best"), None: None}
        for r in range(plot_h):
            out.append("\n")
            label = f"{hi:.3f}" if r == 0 else f"{lo:.3f}" if r == plot_h - 1 else ""
            out.append(label.rjust(LABEL_W - 1)[: LABEL_W - 1] + ("┤" if label else "│"), style=self._st("dim"))
            run_chars, run_layer = [], None  # consecutive cells of one layer become one span
            for c in range(plot_w):
                b, t = best_g[r][c], this_g[r][c]
                layer, ch = ("this", chr(0x2800 + (t | b))) if t else ("best", chr(0x2800 + b)) if b else (None, " ")
                if layer != run_layer and run_chars:
                    out.append("".join(run_chars), style=styles[run_layer])
                    run_chars = []
                run_layer = layer
                run_chars.append(ch)
            if run_chars:
                out.append("".join(run_chars), style=styles[run_layer])
        axis = ("0%".ljust(plot_w // 2 - 1) + "50%").ljust(plot_w - 4) + "100%"
        out.append("\n" + " " * LABEL_W + axis[:plot_w], style=self._st("dim"))
        return out
