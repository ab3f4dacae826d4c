"""val_bpb progress chart in Unicode braille: every run a dot, crashes marked, the best so far as a step line.

Drawn by hand: textual-plot and textual-plotext were measured against it (bench/tui_bench.py --only chart-libs)
and cost about the same on the first frame and per redraw (textual-plot also loads numpy), while neither draws
off-scale marks, a crash strip or a frontier taken from the engine's decisions without the same code around it.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from core.plot import y_limits  # the same zoom as `autoresearch plot`

# braille dot bits by [row 0..3][column 0..1] within one character cell (2 x 4 dots)
BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
AXIS_W = 9  # "0.987500┤"
OFF_SCALE = "▴"
CRASH = "✗"
LAYERS = ("best", "keep", "discard", "band")  # drawing priority when layers share a cell
BAND = "┄"  # the noise band's legend mark


def chart_range(points: list[tuple[int, float, str]], baseline: float | None) -> tuple[float, float]:
    """y limits: the best at the bottom, a little above the baseline or most runs at the top (y_limits)."""
    vals = [v for _, v, _ in points]
    kept = [v for _, v, s in points if s == "keep"]
    return y_limits(vals, min(kept or vals), baseline)


def x_ticks(first: int, last: int, width: int) -> list[tuple[int, str]]:
    """(column, label) of experiment numbers along an axis `width` cells wide: both ends and round steps."""
    if width < 6:
        return []
    if first == last:
        return [(0, f"#{first}")]
    span = last - first
    room = max(1, width // 10)  # a label every ~10 cells at most
    step = 1
    for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000):
        step = s
        if span / s <= room:
            break
    ticks = []
    n = ((first + step - 1) // step) * step
    while n <= last:
        ticks.append(n)
        n += step
    if first not in ticks:
        ticks.insert(0, first)
    if last not in ticks:
        ticks.append(last)
    out = []
    taken = -1
    for n in ticks:
        col = round((n - first) * (width - 1) / span)
        label = f"#{n}" if n in (first, last) else str(n)
        col = min(col, width - len(label))
        if col > taken:
            out.append((col, label))
            taken = col + len(label)
    return out


def render_chart(points: list[tuple[int, float, str]], width: int, height: int, lo: float, hi: float,
                 frontier: list[tuple[int, float]] = (), first: int | None = None,
                 last: int | None = None, band: float | None = None) -> list[list[tuple[str, str]]]:
    """points: (x, val_bpb, status) of measured runs; frontier: (x, best so far); band: the noise band's
    half-width (z·σ), drawn as dotted lines at best so far ± band. Returns `height` rows of
    `width` (char, layer) cells; layer is best, keep, discard, over (a point above hi: an off-scale mark in the
    top row) or ''. Pure, for tests."""
    w, h = max(1, width), max(1, height)
    X, Y = 2 * w, 4 * h
    masks = {name: [[0] * w for _ in range(h)] for name in LAYERS}
    over = [False] * w
    xs = [p[0] for p in points] + [x for x, _ in frontier]
    if xs:
        first = min(xs) if first is None else first
        last = max(xs) if last is None else last
        span = max(1, last - first)

        def dot_x(i: int) -> int:
            return round((i - first) * (X - 1) / span)

        def dot_y(v: float) -> int:
            frac = (hi - v) / (hi - lo)
            return max(0, min(Y - 1, round(frac * (Y - 1))))

        def put(layer: str, x: int, y: int) -> None:
            masks[layer][y // 4][x // 2] |= BITS[y % 4][x % 2]

        for i, v, status in points:
            x = dot_x(i)
            if v > hi:
                over[min(w - 1, x // 2)] = True
                continue
            # a 2x2 cluster of dots: a single braille dot is too small to find on most fonts
            y = dot_y(v)
            x0, y0 = min(x, X - 2) if X > 1 else 0, min(y, Y - 2) if Y > 1 else 0
            for dx in range(min(2, X)):
                for dy in range(min(2, Y)):
                    put("keep" if status == "keep" else "discard", x0 + dx, y0 + dy)
        # the best so far: a step line from each decision to the next, to the right edge
        steps = sorted(frontier)
        for k, (i, v) in enumerate(steps):
            x_from = dot_x(i)
            x_to = dot_x(steps[k + 1][0]) if k + 1 < len(steps) else X - 1
            y = dot_y(v)
            if k:
                y_prev = dot_y(steps[k - 1][1])
                for yy in range(min(y, y_prev), max(y, y_prev) + 1):
                    put("best", x_from, yy)
            for x in range(x_from, x_to + 1):
                put("best", x, y)
            if band:
                for edge in (v - band, v + band):
                    if lo <= edge <= hi:
                        ye = dot_y(edge)
                        for x in range(x_from, x_to + 1, 2):
                            put("band", x, ye)
    rows = []
    for r in range(h):
        row = []
        for c in range(w):
            if r == 0 and over[c]:
                row.append((OFF_SCALE, "over"))
                continue
            bits = 0
            layer = ""
            for name in LAYERS:
                m = masks[name][r][c]
                if m and not layer:
                    layer = name
                bits |= m
            row.append((chr(0x2800 + bits) if bits else " ", layer))
        rows.append(row)
    return rows


def _zs(z: float) -> str:
    return f"{z:g}"


class BpbChart(Widget):
    """Attributes down: set_rows(rows, best, baseline) with state.Experiment rows."""

    DEFAULT_CSS = """
    BpbChart { height: 1fr; min-height: 4; text-wrap: nowrap; text-overflow: ellipsis; }
    BpbChart > .bpb-chart--best { color: $success; text-style: bold; }
    BpbChart > .bpb-chart--band { color: $success 50%; }
    BpbChart > .bpb-chart--keep { color: $success; }
    BpbChart > .bpb-chart--discard { color: $text-muted; }
    BpbChart > .bpb-chart--over { color: $warning; text-style: bold; }
    BpbChart > .bpb-chart--crash { color: $error; text-style: bold; }
    BpbChart > .bpb-chart--axis { color: $text-muted; }
    BpbChart > .bpb-chart--title { color: $text-accent; text-style: bold; }
    """

    COMPONENT_CLASSES = {"bpb-chart--band", "bpb-chart--best", "bpb-chart--keep", "bpb-chart--discard",
                         "bpb-chart--over", "bpb-chart--crash", "bpb-chart--axis", "bpb-chart--title"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows = ()
        self.best = None
        self.baseline = None
        self.noise: tuple[float, float] | None = None  # (σ, z): the band best ± z·σ is drawn when known
        self._cache_key = None
        self._cache: Text | None = None

    def set_rows(self, rows, best, baseline=None, noise: tuple[float, float] | None = None) -> None:
        if rows is self.rows and best == self.best and baseline == self.baseline and noise == self.noise:
            return
        self.rows, self.best, self.baseline, self.noise = rows, best, baseline, noise
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_region.width or self.size.width, self.content_region.height or self.size.height
        key = (id(self.rows), len(self.rows), self.best, self.baseline, self.noise, width, height, self.app.theme)
        if key == self._cache_key and self._cache is not None:
            return self._cache
        text = self._draw(width, height)
        self._cache_key, self._cache = key, text
        return text

    def _draw(self, width: int, height: int) -> Text:
        st = {n: self.get_component_rich_style(f"bpb-chart--{n}", partial=True)
              for n in ("best", "keep", "discard", "over", "crash", "axis", "title", "band")}
        points = [(r.n, r.val_bpb, r.status) for r in self.rows if r.val_bpb is not None]
        crashes = [r.n for r in self.rows if r.status == "crash"]
        out = Text(no_wrap=True, overflow="crop")
        title = f"val_bpb · {len(points)} runs"
        if self.best is not None:
            title += f" · best {self.best:.6f}"
        if crashes and len(title) + 14 <= width:
            title += f" · {len(crashes)} crashed"
        out.append(title[:width], style=st["title"])
        plot_w = width - AXIS_W
        if not points:
            if height > 1:
                out.append("\n" + "no finished experiments yet", style=st["axis"])
            return out
        lo, hi = chart_range(points, self.baseline)
        band = None
        if self.noise is not None:
            sigma, z = self.noise
            band = sigma * z
            if band and self.best is not None and self.best - band < lo:
                lo = self.best - band  # room for the band's lower edge under the best
        n_over = sum(1 for _, v, _ in points if v > hi)
        # rows: title, legend, the plot, a strip for crashes (when there are any), the x axis
        plot_h = height - 3 - bool(crashes)
        if plot_h < 2 or plot_w < 6:
            return out
        out.append("\n")
        legend = [("●", "kept", "kept", "keep"), ("•", "discarded", "disc", "discard"),
                  (CRASH, "crashed", "crash", "crash"), ("━", "best so far", "best", "best"),
                  (OFF_SCALE, f"{n_over} off scale", f"{n_over} over", "over")]
        if band:
            z = self.noise[1]
            legend.append((BAND, f"noise ±{_zs(z)}σ", f"±{_zs(z)}σ", "band"))
        legend = [x for x in legend if not (x[3] == "crash" and not crashes) and not (x[3] == "over" and not n_over)]
        long = sum(len(x[1]) + 4 for x in legend) <= width
        for mark, name, short, layer in legend:
            out.append(mark, style=st[layer])
            out.append(f" {name}  " if long else f" {short} ", style=st["axis"])
        first = min(r.n for r in self.rows)
        last = max(r.n for r in self.rows)
        frontier = [(r.n, r.best_after) for r in self.rows if r.best_after is not None]
        cells = render_chart(points, plot_w, plot_h, lo, hi, frontier, first, last, band)
        for r, row in enumerate(cells):
            out.append("\n")
            pos = {0: hi, plot_h - 1: lo}
            if plot_h >= 7:
                pos[plot_h // 2] = hi - (hi - lo) * (plot_h // 2) / (plot_h - 1)
            label = f"{pos[r]:.6f}"[: AXIS_W - 1] if r in pos else ""
            out.append(label.rjust(AXIS_W - 1) + "┤" if label else " " * (AXIS_W - 1) + "│", style=st["axis"])
            for ch, layer in row:
                out.append(ch, style=st.get(layer) if layer else None)
        span = max(1, last - first)
        if crashes:
            strip = [" "] * plot_w
            for n in crashes:
                strip[min(plot_w - 1, round((n - first) * (2 * plot_w - 1) / span) // 2)] = CRASH
            out.append("\n" + "crashed".rjust(AXIS_W - 1) + "│", style=st["axis"])
            out.append("".join(strip), style=st["crash"])
        axis = [" "] * plot_w
        for col, label in x_ticks(first, last, plot_w):
            axis[col:col + len(label)] = list(label)
        out.append("\n" + " " * AXIS_W + "".join(axis[:plot_w]), style=st["axis"])
        return out
