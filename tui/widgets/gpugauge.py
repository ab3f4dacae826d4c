"""GPU pane: VRAM bar and utilisation per GPU with the runs on it; CPU and memory when there is no NVIDIA GPU."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widget import Widget

from .styles import ComponentStyles

SPARK = " ▁▂▃▄▅▆▇█"
HISTORY = 120  # samples kept per GPU (two minutes at one a second)


def sparkline(values, width: int) -> str:
    """Percentages (0..100) as block characters, newest on the right."""
    vals = list(values)[-width:] if width > 0 else []
    out = []
    for v in vals:
        if v is None:
            out.append(" ")
        else:
            out.append(SPARK[max(0, min(len(SPARK) - 1, round(v / 100 * (len(SPARK) - 1))))])
    return "".join(out).rjust(max(0, width))


def bar(fraction: float, width: int) -> tuple[str, str]:
    """(filled, empty) parts of a horizontal bar, with eighth-blocks for a smooth edge."""
    width = max(0, width)
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, rem = divmod(eighths, 8)
    filled = "█" * full + ("▏▎▍▌▋▊▉"[rem - 1] if rem else "")
    return filled, "░" * (width - len(filled))


def _gib(mb: float | None) -> str:
    return "?" if mb is None else f"{mb / 1024:.1f}"


def _mem(mb: float | None) -> str:
    if mb is None:
        return "?"
    return f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


def short_reason(reason: str) -> str:
    """core.gpu's reason without its detail in parentheses: "no NVIDIA driver (NVML library not found)" -> the
    first part; the pane says it on one short line."""
    return reason.split(" (")[0].strip() if reason else ""


def slots_on(slots, index: int) -> str:
    """'0008, 0009': the experiments that the slots on this GPU run (slot.gpu is the device index)."""
    return ", ".join(s.experiment for s in slots if s.gpu == index and s.experiment)


class GpuGauge(Widget):
    """Attributes down: the app hands it GpuSampled contents through update_sample()."""

    DEFAULT_CSS = """
    GpuGauge { height: auto; min-height: 3; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    GpuGauge > .gpu-gauge--ok { color: $success; }
    GpuGauge > .gpu-gauge--warn { color: $warning; }
    GpuGauge > .gpu-gauge--hot { color: $error; }
    GpuGauge > .gpu-gauge--dim { color: $text-muted; }
    GpuGauge > .gpu-gauge--label { color: $text-accent; }
    GpuGauge > .gpu-gauge--spark { color: $accent; }
    """

    COMPONENT_CLASSES = {"gpu-gauge--ok", "gpu-gauge--warn", "gpu-gauge--hot", "gpu-gauge--dim",
                         "gpu-gauge--label", "gpu-gauge--spark"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sample = None  # tui.monitor.Sample
        self.slots = ()  # the engine's slots (SlotRun): which GPU runs what
        self.peaks: tuple = ()  # read-only repos: the last rows of results.tsv (their peak memory)
        self.util_history: dict[int, deque] = {}
        self.cpu_history: deque = deque(maxlen=HISTORY)
        self._styles = ComponentStyles(self, "gpu-gauge--")
        self._height = 0

    def update_sample(self, sample) -> None:
        self.sample = sample
        gpu = sample.gpu if sample is not None else None
        if gpu is not None and gpu.available:
            for g in gpu.gpus:
                self.util_history.setdefault(g.index, deque(maxlen=HISTORY)).append(g.utilization_percent)
        elif sample is not None:
            self.cpu_history.append(sample.cpu_percent)
        self._relayout()

    def set_slots(self, slots, peaks=()) -> None:
        if tuple(slots) == self.slots and tuple(peaks) == self.peaks:
            return
        self.slots, self.peaks = tuple(slots), tuple(peaks)
        self._relayout()

    def _relayout(self) -> None:
        # a layout pass only when the height changes (GPUs appear or vanish), not once a second
        height = self.get_content_height(None, None, 0)
        self.refresh(layout=height != self._height)
        self._height = height

    @property
    def available(self) -> bool:
        return self.sample is not None and self.sample.gpu is not None and self.sample.gpu.available

    def _style(self, name: str):
        return self._styles(name)

    def _level(self, fraction: float) -> str:
        return "hot" if fraction >= 0.95 else "warn" if fraction >= 0.8 else "ok"

    def _bar(self, out: Text, fraction: float | None, width: int) -> None:
        """A usage bar coloured by level (ok, warn, hot); '?' where the number is unknown."""
        if fraction is None:
            out.append("?".ljust(width), style=self._style("dim"))
            return
        filled, empty = bar(fraction, width)
        out.append(filled, style=self._style(self._level(fraction)))
        out.append(empty, style=self._style("dim"))

    def get_content_height(self, container, viewport, width: int) -> int:
        if self.sample is None:
            return 1
        if not self.available:
            return 5
        n = len(self.sample.gpu.gpus)
        return 3 * n if n <= 2 else n

    def render(self) -> Text:
        width = max(10, self.content_region.width or self.size.width)
        s = self.sample
        if s is None or s.gpu is None:
            return Text("reading GPU state…", style=self._style("dim"))
        if not s.gpu.available:
            return self._render_no_gpu(s, width)
        if len(s.gpu.gpus) > 2:
            return self._render_compact(s.gpu.gpus, width)
        out = Text(no_wrap=True, overflow="ellipsis")
        dim, label = self._style("dim"), self._style("label")
        for k, g in enumerate(s.gpu.gpus):
            if k:
                out.append("\n")
            extras = []
            if g.temperature_c is not None:
                extras.append(f"{g.temperature_c:.0f}°C")
            if g.power_w is not None:
                extras.append(f"{g.power_w:.0f}W" + (f"/{g.power_limit_w:.0f}W" if g.power_limit_w else ""))
            extra = " ".join(extras)
            name = g.name.removeprefix("NVIDIA ")
            runs = slots_on(self.slots, g.index)
            if runs:
                name += f" · runs {runs}"
            head = f"GPU{g.index} "
            room = width - len(head) - len(extra) - 1
            if room < len(name):
                name = name[: max(1, room - 1)] + "…"
            out.append(head, style=label)
            out.append(name)
            out.append(" " + extra.rjust(max(0, width - len(head) - len(name) - 1)), style=dim)
            frac = g.memory_fraction
            nums = f" {_gib(g.memory_used_mb)}/{_gib(g.memory_total_mb)}G"
            out.append("\nVRAM ", style=label)
            self._bar(out, frac, max(4, width - 5 - len(nums)))
            out.append(nums)
            util = g.utilization_percent
            pct = " ?%" if util is None else f" {util:3.0f}%"
            out.append("\nutil ", style=label)
            out.append(sparkline(self.util_history.get(g.index, ()), max(1, width - 5 - len(pct))),
                       style=self._style("spark"))
            out.append(pct)
        return out

    def _render_compact(self, gpus, width: int) -> Text:
        """Many GPUs: one line each (index, VRAM bar and numbers, utilisation, the runs on it)."""
        out = Text(no_wrap=True, overflow="ellipsis")
        dim, label = self._style("dim"), self._style("label")
        for k, g in enumerate(gpus):
            if k:
                out.append("\n")
            head = f"GPU{g.index:<2}"
            nums = f" {_gib(g.memory_used_mb)}/{_gib(g.memory_total_mb)}G"
            util = " ?%" if g.utilization_percent is None else f" {g.utilization_percent:3.0f}%"
            runs = slots_on(self.slots, g.index)
            tail = f" {runs}" if runs else " idle"
            bw = max(4, min(30, width - len(head) - len(nums) - len(util) - len(tail) - 1))
            out.append(head + " ", style=label)
            self._bar(out, g.memory_fraction, bw)
            out.append(nums + util)
            out.append(tail, style=None if runs else dim)
        return out

    def _render_no_gpu(self, s, width: int) -> Text:
        """What a system monitor shows on a box without an NVIDIA GPU: CPU and memory, and the trainer's share."""
        dim, label = self._style("dim"), self._style("label")
        out = Text(no_wrap=True, overflow="ellipsis")
        # CPU: machine-wide use, the cores
        pct = s.cpu_percent
        nums = f" {'?' if pct is None else f'{pct:3.0f}'}% of {s.cpu_count} core{'s' if s.cpu_count != 1 else ''}"
        out.append("CPU  ", style=label)
        self._bar(out, None if pct is None else pct / 100, max(4, width - 5 - len(nums)))
        out.append(nums)
        # memory: used / total of the machine
        out.append("\nRAM  ", style=label)
        m = s.memory
        if m is None:
            out.append("unknown", style=dim)
        else:
            nums = f" {m.used_mb / 1024:.1f}/{m.total_mb / 1024:.1f} GiB"
            self._bar(out, m.used_mb / m.total_mb if m.total_mb else None, max(4, width - 5 - len(nums)))
            out.append(nums)
        # the engine's processes, or (read-only) what the last runs needed
        out.append("\n")
        if self.peaks:
            # read-only: no trainer to measure; what the last runs needed at their peak (results.tsv), newest first
            out.append("peak ", style=label)
            items, used = [], 5
            for r in reversed(self.peaks):
                item = f"{r.label} {'—' if r.memory_gb is None else f'{r.memory_gb:.1f}G'}"
                if used + len(item) + 2 > width and items:
                    break
                items.append(item)
                used += len(item) + 2
            out.append("  ".join(items))
        else:
            # what the engine's children (the trainer, or the agent while it proposes) hold in memory
            out.append("run  ", style=label)
            if s.trainer_rss_mb is not None:
                who = "trainer" if any(x.experiment for x in self.slots) else "agent"
                out.append(f"{who} {_mem(s.trainer_rss_mb)} resident")
            else:
                out.append("idle", style=dim)
            if s.engine_rss_mb is not None:
                out.append(f" · engine {_mem(s.engine_rss_mb)}", style=dim)
        out.append("\ncpu  ", style=label)
        out.append(sparkline(self.cpu_history, max(1, width - 5)), style=self._style("spark"))
        out.append("\n")
        reason = short_reason(s.gpu.reason)
        out.append("no NVIDIA GPU" + (f": {reason}" if reason and reason != "no NVIDIA GPU" else ""), style=dim)
        return out
