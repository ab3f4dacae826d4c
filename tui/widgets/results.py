"""Results table: every experiment, newest first, coloured by status, with filters and search.

Drawn with Textual's line API (only visible rows are rendered) instead of DataTable: DataTable needed
about 2.4 s to add 10,000 rows on the dev box, the line API opens and filters them in milliseconds.
"""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..logstream import sanitize_line
from ..messages import ExperimentChosen
from .styles import ComponentStyles

FILTERS = {"all": None, "kept": "keep", "discarded": "discard", "crashed": "crash"}

# (title, width); the description takes the remaining width. "Δ decided": val_bpb minus the best the run was
# decided against (core.ledger.annotate), the number its keep/discard was made on; it never changes later.
COLUMNS = (("id", 5), ("commit", 7), ("val_bpb", 8), ("Δ decided", 9), ("mem GB", 6), ("status", 7),
           ("description", 0))


CONF_W = 8  # "z 2.4 ×2"


def confidence_of(r) -> str:
    """The ledger annotation's confidence ("z 3.5", "z 2.4 ×2"), or "person" for a person's decision; ''."""
    f = getattr(r.entry, "finished", None)
    if f is None:
        return ""
    if f.confidence:
        return sanitize_line(f.confidence, CONF_W)
    return "person" if f.decided_by == "person" else ""


def filter_rows(rows, status: str | None, needle: str, haystack: list[str] | None = None) -> list:
    """Newest first; status None = all; needle matched case-insensitively against id, commit, description."""
    needle = needle.lower().strip()
    if haystack is None:
        haystack = [f"{r.exp_id or ''} {r.commit} {r.description}".lower() for r in rows]
    out = []
    for i in range(len(rows) - 1, -1, -1):
        r = rows[i]
        if status is not None and r.status != status:
            continue
        if needle and needle not in haystack[i]:
            continue
        out.append(r)
    return out


class ResultsTable(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    ResultsTable { background: $surface; scrollbar-size-vertical: 1; }
    ResultsTable:focus { background-tint: $foreground 3%; }
    ResultsTable > .results-table--header { text-style: bold; color: $text-accent; }
    ResultsTable > .results-table--cursor { background: $primary 40%; color: $foreground; text-style: bold; }
    ResultsTable > .results-table--keep { color: $success; }
    ResultsTable > .results-table--discard { color: $text-muted; }
    ResultsTable > .results-table--crash { color: $error; }
    ResultsTable > .results-table--best { text-style: bold; }
    ResultsTable > .results-table--dim { color: $text-muted; }
    """

    COMPONENT_CLASSES = {"results-table--header", "results-table--cursor", "results-table--keep",
                         "results-table--discard", "results-table--crash", "results-table--best",
                         "results-table--dim"}

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "up", show=False),
        Binding("down,j", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", show=False),
        Binding("pagedown", "page(1)", show=False),
        Binding("home", "jump(0)", show=False),
        Binding("end", "jump(-1)", show=False),
        Binding("enter", "choose", "open", show=True),
    ]

    cursor = reactive(0, always_update=True, repaint=False)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows: tuple = ()
        self.best: float | None = None
        self.best_commit: str | None = None
        self.status_filter: str | None = None
        self.search = ""
        self.view: list = []
        self._haystack: list[str] = []
        self._id_width = 5  # "0001 " ids; upstream rows are "#123": as wide as the longest label
        self._conf: list[str] = []  # confidence per row (same order as rows)
        self._show_conf = False  # the column appears once any decision carries a confidence
        self._style = ComponentStyles(self, "results-table--")

    # --- data ---
    def set_rows(self, rows, best: float | None = None, best_commit: str | None = None) -> None:
        if rows is self.rows and best == self.best and best_commit == self.best_commit:
            return
        if rows is not self.rows:
            self._haystack = [f"{r.exp_id or ''} {r.commit} {r.description}".lower() for r in rows]
            self._id_width = min(12, max([5, *(len(r.label) for r in rows)]))
            self._conf = [confidence_of(r) for r in rows]
            self._show_conf = any(self._conf)
        self.rows, self.best, self.best_commit = rows, best, best_commit
        self._refilter()

    def set_filter(self, status: str | None) -> None:
        self.status_filter = status
        self._refilter()

    def set_search(self, text: str) -> None:
        self.search = text
        self._refilter()

    def _refilter(self) -> None:
        selected = self.selected
        # a new row arriving while the user follows the top keeps the cursor on top
        follow_top = self.cursor == 0
        self.view = filter_rows(self.rows, self.status_filter, self.search, self._haystack)
        cursor = 0
        if selected is not None and not follow_top:
            for i, r in enumerate(self.view):
                if r.n == selected.n:
                    cursor = i
                    break
        self.virtual_size = Size(self.size.width, len(self.view) + 1)
        self.cursor = min(cursor, max(0, len(self.view) - 1))
        self.refresh()

    @property
    def selected(self):
        if 0 <= self.cursor < len(self.view):
            return self.view[self.cursor]
        return None

    # --- keys ---
    def watch_cursor(self, old: int, new: int) -> None:
        if not self.view:
            return
        height = max(1, self.scrollable_content_region.height - 1)
        top = round(self.scroll_offset.y)
        if new < top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= top + height:
            self.scroll_to(y=new - height + 1, animate=False, immediate=True)
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        if self.view:
            self.cursor = max(0, min(len(self.view) - 1, self.cursor + delta))

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.scrollable_content_region.height - 2))

    def action_jump(self, where: int) -> None:
        if self.view:
            self.cursor = 0 if where == 0 else len(self.view) - 1

    def action_choose(self) -> None:
        if self.selected is not None:
            self.post_message(ExperimentChosen(self.selected))

    def on_click(self, event) -> None:
        idx = round(self.scroll_offset.y) + event.y - 1
        if event.y >= 1 and 0 <= idx < len(self.view):
            if idx == self.cursor and getattr(event, "chain", 1) >= 2:
                self.action_choose()
            self.cursor = idx

    # --- drawing ---
    def _styles(self) -> dict[str, Style]:
        return {n: self._style(n) for n in ("header", "cursor", "keep", "discard", "crash", "best", "dim")}

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self.rich_style
        styles = self._styles()
        if y == 0:
            cells = [title.ljust(self._id_width if title == "id" else w) if w else title for title, w in COLUMNS]
            if self._show_conf:
                cells.insert(4, "conf".ljust(CONF_W))
            return Strip([Segment(" ".join(cells), base + styles["header"])]).crop_extend(0, width, base)
        idx = round(self.scroll_offset.y) + y - 1
        if idx >= len(self.view):
            if not self.view and y == 1:
                msg = "no experiments yet" if not self.rows else "no rows match the filter/search"
                return Strip([Segment(" " + msg, base + styles["dim"])]).crop_extend(0, width, base)
            return Strip.blank(width, base)
        r = self.view[idx]
        row_style = base + styles.get(r.status, Style())
        if r.status == "keep" and self.best_commit and r.commit[:7] == self.best_commit[:7]:
            row_style += styles["best"]
        if idx == self.cursor:
            row_style += styles["cursor"]
        val = f"{r.val_bpb:.6f}" if r.val_bpb is not None else "—"
        d = r.delta
        delta = "" if d is None else f"{d:+.6f}".replace("-", "−")
        if d is None and r.val_bpb is not None and r.reference is None:
            delta = "first"
        mem = f"{r.memory_gb:.1f}" if r.memory_gb is not None else "—"
        status = "aborted" if r.aborted else r.status
        if r.status == "keep" and self.best_commit and r.commit[:7] == self.best_commit[:7]:
            status = "keep ◆"  # the best now (the header and the ratchet say the same)
        cells = [r.label[:12].ljust(self._id_width), r.commit[:7].ljust(7), val.rjust(8), delta.rjust(9), mem.rjust(6),
                 status.ljust(7), sanitize_line(r.description, 500)]
        if self._show_conf:
            conf = self._conf[r.n - 1] if 0 < r.n <= len(self._conf) else ""
            cells.insert(4, conf.ljust(CONF_W))
        return Strip([Segment(" ".join(cells), row_style)]).crop_extend(0, width, row_style if idx == self.cursor
                                                                         else base)

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.view) + 1)
