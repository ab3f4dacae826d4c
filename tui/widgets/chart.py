"""val_bpb progress chart drawn with Unicode braille: every experiment a dot, the running best a step line."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

# braille dot bits by [row 0..3][column 0..1] within one character cell (2 x 4 dots)
_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
AXIS_W = 9  # "0.987500 " label column


def _y_range(values: list[float]) -> tuple[float, float]:
    """Lower end: the best value. Upper end: the baseline or a little above the upper quartile, whichever is
    higher, so a few terrible runs are clamped to the top instead of flattening everything else."""
    lo = min(values)
    ordered = sorted(values)
    q75 = ordered[min(len(ordered) - 1, int(0.75 * (len(ordered) - 1) + 0.5))]
    hi = min(max(values), max(values[0], q75 + (q75 - lo) * 0.5))
    if hi - lo < 1e-6:
        pad = max(1e-4, abs(lo) * 1e-3)
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def render_chart(points: list[tuple[int, float, str]], width: int, height: int) -> list[list[tuple[str, str]]]:
    """points: (x index, val_bpb, status). Returns height rows of (char, layer) cells; layer is
    'best' (frontier), 'keep', 'discard' or '' so the widget can colour them. Pure, for tests."""
    w, h = max(1, width), max(1, height)
    X, Y = 2 * w, 4 * h
    masks = {name: [[0] * w for _ in range(h)] for name in ("best", "keep", "discard")}
    if points:
        vals = [v for _, v, _ in points]
        lo, hi = _y_range(vals)
        n = max(p[0] for p in points)
        first = min(p[0] for p in points)
        span = max(1, n - first)

        def dot_x(i: int) -> int:
            return round((i - first) * (X - 1) / span)

        def dot_y(v: float) -> int:
            frac = (hi - v) / (hi - lo)
            return max(0, min(Y - 1, round(frac * (Y - 1))))

        def put(layer: str, x: int, y: int) -> None:
            masks[layer][y // 4][x // 2] |= _BITS[y % 4][x % 2]

        for i, v, status in points:
            # a 2x2 cluster of dots: a single braille dot is too small to find on most fonts
            x, y = dot_x(i), dot_y(v)
            x0, y0 = min(x, X - 2) if X > 1 else 0, min(y, Y - 2) if Y > 1 else 0
            for dx in range(min(2, X)):
                for dy in range(min(2, Y)):
                    put("keep" if status == "keep" else "discard", x0 + dx, y0 + dy)
        # frontier: running best over kept experiments, a step line across the whole width
        best_at: dict[int, float] = {}
        best = None
        for i, v, status in sorted(points):
            if status == "keep" and (best is None or v < best):
                best = v
                best_at[dot_x(i)] = v
        cur = None
        for x in range(X):
            if x in best_at:
                new = best_at[x]
                if cur is not None:  # the vertical drop at an improvement
                    for y in range(dot_y(cur), dot_y(new) + 1):
                        put("best", x, y)
                cur = new
            if cur is not None:
                put("best", x, dot_y(cur))
    rows = []
    for r in range(h):
        row = []
        for c in range(w):
            b, k, d = masks["best"][r][c], masks["keep"][r][c], masks["discard"][r][c]
            bits = b | k | d
            layer = "best" if b else "keep" if k else "discard" if d else ""
            row.append((chr(0x2800 + bits) if bits else " ", layer))
        rows.append(row)
    return rows


class BpbChart(Widget):
    """Attributes down: set_rows(rows, best) with state.Experiment rows."""

    DEFAULT_CSS = """
    BpbChart { height: 1fr; min-height: 4; text-wrap: nowrap; text-overflow: ellipsis; }
    BpbChart > .bpb-chart--best { color: $success; text-style: bold; }
    BpbChart > .bpb-chart--keep { color: $success; }
    BpbChart > .bpb-chart--discard { color: $text-muted; }
    BpbChart > .bpb-chart--axis { color: $text-muted; }
    BpbChart > .bpb-chart--title { color: $text-accent; text-style: bold; }
    """

    COMPONENT_CLASSES = {"bpb-chart--best", "bpb-chart--keep", "bpb-chart--discard", "bpb-chart--axis",
                         "bpb-chart--title"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows = ()
        self.best = None
        self._cache_key = None
        self._cache: Text | None = None

    def set_rows(self, rows, best) -> None:
        if rows is self.rows and best == self.best:
            return
        self.rows = rows
        self.best = best
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_region.width or self.size.width, self.content_region.height or self.size.height
        key = (id(self.rows), len(self.rows), self.best, width, height, self.app.theme)
        if key == self._cache_key and self._cache is not None:
            return self._cache
        text = self._draw(width, height)
        self._cache_key, self._cache = key, text
        return text

    def _draw(self, width: int, height: int) -> Text:
        st = {n: self.get_component_rich_style(f"bpb-chart--{n}", partial=True)
              for n in ("best", "keep", "discard", "axis", "title")}
        points = [(r.n, r.val_bpb, r.status) for r in self.rows if r.val_bpb is not None]
        crashes = sum(1 for r in self.rows if r.status == "crash")
        out = Text(no_wrap=True, overflow="crop")
        title = f"val_bpb · {len(points)} runs"
        if self.best is not None:
            title += f" · best {self.best:.6f}"
        if crashes:
            title += f" · {crashes} crashed"
        out.append(title[:width], style=st["title"])
        plot_h = height - 2  # title and x axis
        plot_w = width - AXIS_W
        if plot_h < 1 or plot_w < 4:
            return out
        if not points:
            out.append("\n" + "no finished experiments yet", style=st["axis"])
            return out
        lo, hi = _y_range([v for _, v, _ in points])
        cells = render_chart(points, plot_w, plot_h)
        for r, row in enumerate(cells):
            out.append("\n")
            if r == 0:
                label = f"{hi:.6f}"
            elif r == plot_h - 1:
                label = f"{lo:.6f}"
            else:
                label = ""
            out.append(label[: AXIS_W - 1].rjust(AXIS_W - 1) + "┤" if label else " " * (AXIS_W - 1) + "│",
                       style=st["axis"])
            for ch, layer in row:
                out.append(ch, style=st.get(layer) if layer else None)
        first, last = points[0][0], points[-1][0]
        if plot_w <= 10:
            axis = ""
        elif first == last:
            axis = f"#{first}"
        else:
            axis = f"#{first}".ljust(plot_w - len(f"#{last}")) + f"#{last}"
        out.append("\n" + " " * AXIS_W + axis, style=st["axis"])
        return out
