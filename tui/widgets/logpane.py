"""Live log pane: a thread tails a file from a byte offset; finished lines scroll, `\\r` progress is one live line."""

from __future__ import annotations

import os
import threading
from collections import deque
from pathlib import Path
from typing import Callable

from rich.cells import cell_len
from rich.segment import Segment
from rich.text import Text
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from ..logstream import LogStream
from ..messages import LogAppended
from ..watch import ChangeWaiter

ACTIVE_POLL_S = 0.1  # while bytes flow: ~10 UI updates a second, whatever the trainer's line rate
IDLE_RECHECK_S = 2.0  # nothing new: sleep until watchfiles reports a change, and look anyway this often


class FileTail:
    """Reads what was appended to a file since the last call, in bounded chunks.

    Detects a new run (file truncated or replaced, or its first bytes changed) and never falls
    behind without bound: if more than `max_lag` bytes are waiting, it jumps to the newest part.
    """

    HEAD = 64

    def __init__(self, path: Path, initial_tail: int = 256 * 1024, max_read: int = 4 * 1024 * 1024,
                 max_lag: int = 16 * 1024 * 1024):
        self.path = Path(path)
        self.initial_tail = initial_tail
        self.max_read = max_read
        self.max_lag = max_lag
        self.offset: int | None = None
        self.ino: int | None = None
        self.head = b""
        self.skipped_bytes = 0

    def poll(self) -> tuple[bool, bytes]:
        """(reset, data): reset means the file started over and earlier lines no longer apply."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False, b""
        reset = False
        size = st.st_size
        if self.offset is None:
            self.offset = max(0, size - self.initial_tail)
            self.ino = st.st_ino
            self.head = self._read_head()
            drop_partial = self.offset > 0
        else:
            drop_partial = False
            if st.st_ino != self.ino or size < self.offset:
                reset = True
            elif size > self.offset and self.offset > 0 and self._read_head() != self.head[: min(self.HEAD, size)]:
                reset = True  # truncated and rewritten past our offset between two polls
            if reset:
                self.ino = st.st_ino
                self.offset = max(0, size - self.initial_tail)
                self.head = self._read_head()
                drop_partial = self.offset > 0
            elif size - self.offset > self.max_lag:
                # a firehose: skip to the newest part instead of lagging further behind
                self.skipped_bytes += size - self.initial_tail - self.offset
                self.offset = size - self.initial_tail
                drop_partial = True
        if size <= self.offset:
            return reset, b""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(min(size - self.offset, self.max_read))
        except OSError:
            return reset, b""
        self.offset += len(data)
        if len(self.head) < self.HEAD:
            self.head = self._read_head()
        if drop_partial:
            nl = data.find(b"\n")
            data = data[nl + 1:] if nl >= 0 else b""
        return reset, data

    def _read_head(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read(self.HEAD)
        except OSError:
            return b""


class LogView(ScrollView, can_focus=True):
    """Plain-text lines (never markup) in a bounded deque, drawn with the line API; follows the end."""

    DEFAULT_CSS = """
    LogView { background: $surface; scrollbar-size-vertical: 1; overflow-x: hidden; }
    LogView:focus { background-tint: $foreground 3%; }
    """

    def __init__(self, max_lines: int = 2000, **kwargs):
        super().__init__(**kwargs)
        self.lines: deque[str] = deque(maxlen=max_lines)
        self._width = 0
        self._follow = True  # at the end: new lines, and a shorter pane (the run panel grew), keep it there

    def clear(self) -> None:
        self.lines.clear()
        self._width = 0
        self.virtual_size = Size(0, 0)
        self.scroll_to(0, 0, animate=False, immediate=True)
        self.refresh()

    def append(self, new_lines) -> None:
        if not new_lines:
            return
        follow = self._follow or self.scroll_offset.y >= self.max_scroll_y - 1
        before = len(self.lines)
        self.lines.extend(new_lines)
        dropped = before + len(new_lines) - len(self.lines)
        self._width = max(self._width, max(len(line) for line in new_lines[-self.lines.maxlen:]))
        self.virtual_size = Size(self._width, len(self.lines))
        # force: the vertical scrollbar (which "allows" scrolling) only appears after the next layout, and an
        # unforced scroll before it is dropped, which left the view stuck at the top for good
        if follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False, force=True)
        elif dropped:
            # keep the text the user scrolled to in place while old lines fall off the top
            self.scroll_to(y=max(0, self.scroll_offset.y - dropped), animate=False, immediate=True, force=True)
        self.refresh()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._follow = new >= self.max_scroll_y - 1

    def on_resize(self) -> None:
        if self._follow and self.lines:
            self.scroll_end(animate=False, immediate=True, x_axis=False, force=True)

    def render_line(self, y: int) -> Strip:
        x0, y0 = self.scroll_offset
        idx = y0 + y
        width = self.scrollable_content_region.width
        style = self.rich_style
        if idx >= len(self.lines):
            return Strip.blank(width, style)
        strip = Strip([Segment(self.lines[idx], style)])
        return strip.crop_extend(x0, x0 + width, style)


MAX_LIVE_ROWS = 3  # a progress line wider than the pane wraps onto this many rows at most


def live_rows(line: str, width: int) -> int:
    """Rows the live line needs at this width: it wraps (the trainer's 'remaining' comes last in its line)."""
    if width <= 0 or not line:
        return 1
    return max(1, min(MAX_LIVE_ROWS, -(-cell_len(line) // width)))


class LogPane(Vertical):
    """Title, a LogView of finished lines, and one live line; fed by a tail thread or by feed_external."""

    DEFAULT_CSS = """
    LogPane > .live-line { height: 1; background: $boost; color: $text-accent; padding: 0 1; }
    """

    def __init__(self, path: Path | None = None, *, live: bool = True, max_lines: int = 2000,
                 formatter: Callable[[str], str] | None = None, id: str | None = None,
                 classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.path = Path(path) if path else None
        self.live_mode = live
        self.max_lines = max_lines
        self.formatter = formatter
        self.stream = LogStream(max_lines=max_lines)
        self._lock = threading.Lock()
        self._pending: deque[str] = deque(maxlen=max_lines)
        self._pending_live: str | None = None
        self._pending_reset = False
        self._posted = False
        self._stop: threading.Event | None = None
        self._generation = 0
        self.live_text = ""  # what the live line shows now
        self._live_rows = 1

    def compose(self):
        yield LogView(max_lines=self.max_lines)
        yield Static(Text(""), classes="live-line")

    @property
    def view(self) -> LogView:
        return self.query_one(LogView)

    def on_mount(self) -> None:
        if self.path is not None:
            self._start()

    def on_unmount(self) -> None:
        if self._stop is not None:
            self._stop.set()

    def set_path(self, path: Path | None) -> None:
        """Follow another file (e.g. the next experiment's agent.log): the view starts over."""
        path = Path(path) if path else None
        if path == self.path:
            return
        self.path = path
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        self._generation += 1
        with self._lock:
            self._pending.clear()
            self._pending_live = ""
            self._pending_reset = True
        self.stream = LogStream(max_lines=self.max_lines)
        self._notify()
        if path is not None and self.is_mounted:
            self._start()

    def _start(self) -> None:
        if not self.live_mode:
            self.load_once()
            return
        stop = threading.Event()
        self._stop = stop
        tail = FileTail(self.path)
        stream = self.stream
        gen = self._generation
        self.run_worker(lambda: self._tail_loop(tail, stream, stop, gen), thread=True, exclusive=True,
                        exit_on_error=False, group=f"log-tail-{self.id or 'pane'}", name="log-tail")

    def load_once(self) -> None:
        """Read the current end of the file once, synchronously (tests, snapshots, the detail screen)."""
        if self.path is None:
            return
        tail = FileTail(self.path)
        reset, data = tail.poll()
        while data:
            self._ingest(self.stream, reset, data, self._generation)
            reset, data = tail.poll()
        self._drain()

    def _tail_loop(self, tail: FileTail, stream: LogStream, stop: threading.Event, gen: int) -> None:
        # while bytes flow the file is read every ACTIVE_POLL_S (a trainer writes many times a second); when it
        # is quiet, the thread sleeps until the file changes
        waiter = ChangeWaiter([tail.path.parent], {tail.path.name}, stop, IDLE_RECHECK_S)
        try:
            while not stop.is_set():
                try:
                    reset, data = tail.poll()
                except Exception:  # an unreadable file must not kill the pane; try again later
                    reset, data = False, b""
                if reset or data:
                    self._ingest(stream, reset, data, gen)
                    stop.wait(ACTIVE_POLL_S)
                else:
                    waiter.wait()
        finally:
            waiter.close()

    def feed_external(self, data: bytes, reset: bool = False) -> None:
        """Thread-safe: feed bytes that do not come from a file (e.g. the demo's data preparation)."""
        self._ingest(self.stream, reset, data, self._generation)

    def _ingest(self, stream: LogStream, reset: bool, data: bytes, gen: int) -> None:
        if reset:
            stream.reset()
        finished = stream.feed(data) if data else []
        if self.formatter is not None and finished:
            finished = [self.formatter(line) for line in finished]
        with self._lock:
            if gen != self._generation:
                return  # a stale thread of a file we no longer follow
            if reset:
                self._pending.clear()
                self._pending_reset = True
            self._pending.extend(finished)
            self._pending_live = stream.live
        self._notify()

    def _notify(self) -> None:
        with self._lock:
            if self._posted:
                return
            self._posted = True
        self.post_message(LogAppended(self))

    def on_log_appended(self, message: LogAppended) -> None:
        message.stop()
        self._drain()

    def _drain(self) -> None:
        try:
            view = self.view
        except NoMatches:
            return  # not composed yet: the pending LogAppended message drains it later
        with self._lock:
            lines = list(self._pending)
            self._pending.clear()
            live = self._pending_live
            reset = self._pending_reset
            self._pending_reset = False
            self._pending_live = None
            self._posted = False
        if reset:
            view.clear()
        if lines:
            view.append(lines)
        if live is not None and live != self.live_text:
            self.live_text = live
            self._show_live()

    def _show_live(self) -> None:
        static = self.query_one(".live-line", Static)
        rows = live_rows(self.live_text, static.size.width - 2)
        text = Text(self.live_text, overflow="fold")
        if rows == self._live_rows:
            # same height: no layout pass (at one status update a second that is most of idle CPU)
            static.update(text, layout=False)
        else:
            self._live_rows = rows
            static.styles.height = rows
            static.update(text)

    def on_resize(self) -> None:
        if self.live_text and self.is_mounted:
            self._show_live()
