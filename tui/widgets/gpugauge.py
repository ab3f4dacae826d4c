"""GPU gauge: VRAM bar and utilisation sparkline per GPU; a calm process-memory view when there is no GPU."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widget import Widget

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


def machine_memory_mb() -> float | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


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
        self.sample = None
        self.trainer_rss_mb: float | None = None
        self.engine_rss_mb: float | None = None
        self.util_history: dict[int, deque] = {}
        self.rss_history: deque = deque(maxlen=HISTORY)
        self._ram_mb = machine_memory_mb()
        self._height = 0

    def update_sample(self, sample, trainer_rss_mb=None, engine_rss_mb=None) -> None:
        self.sample = sample
        self.trainer_rss_mb = trainer_rss_mb
        self.engine_rss_mb = engine_rss_mb
        if sample is not None and sample.available:
            for g in sample.gpus:
                self.util_history.setdefault(g.index, deque(maxlen=HISTORY)).append(g.utilization_percent)
        elif self._ram_mb:
            self.rss_history.append(None if trainer_rss_mb is None else 100 * trainer_rss_mb / self._ram_mb)
        # a layout pass only when the height changes (GPUs appear or vanish), not once a second
        height = self.get_content_height(None, None, 0)
        self.refresh(layout=height != self._height)
        self._height = height

    def _style(self, name: str):
        return self.get_component_rich_style(f"gpu-gauge--{name}", partial=True)

    def _level(self, fraction: float) -> str:
        return "hot" if fraction >= 0.95 else "warn" if fraction >= 0.8 else "ok"

    def get_content_height(self, container, viewport, width: int) -> int:
        s = self.sample
        if s is None or not s.available:
            return 3
        return 3 * len(s.gpus)

    def render(self) -> Text:
        width = max(10, self.content_region.width or self.size.width)
        s = self.sample
        dim, label = self._style("dim"), self._style("label")
        if s is None:
            return Text("reading GPU state…", style=dim)
        if not s.available:
            return self._render_no_gpu(s.reason, width)
        out = Text(no_wrap=True, overflow="ellipsis")
        for k, g in enumerate(s.gpus):
            if k:
                out.append("\n")
            extras = []
            if g.temperature_c is not None:
                extras.append(f"{g.temperature_c:.0f}°C")
            if g.power_w is not None:
                extras.append(f"{g.power_w:.0f}W" + (f"/{g.power_limit_w:.0f}W" if g.power_limit_w else ""))
            extra = " ".join(extras)
            name = g.name.removeprefix("NVIDIA ")
            head = f"GPU{g.index} "
            room = width - len(head) - len(extra) - 1
            if room < len(name):
                name = name[: max(1, room - 1)] + "…"
            out.append(head, style=label)
            out.append(name)
            out.append(" " + extra.rjust(max(0, width - len(head) - len(name) - 1)), style=dim)
            frac = g.memory_fraction
            nums = f" {_gib(g.memory_used_mb)}/{_gib(g.memory_total_mb)}G"
            bw = max(4, width - 5 - len(nums))
            out.append("\nVRAM ", style=label)
            if frac is None:
                out.append("?".ljust(bw), style=dim)
            else:
                filled, empty = bar(frac, bw)
                out.append(filled, style=self._style(self._level(frac)))
                out.append(empty, style=dim)
            out.append(nums)
            util = g.utilization_percent
            pct = " ?%" if util is None else f" {util:3.0f}%"
            out.append("\nutil ", style=label)
            out.append(sparkline(self.util_history.get(g.index, ()), max(1, width - 5 - len(pct))),
                       style=self._style("spark"))
            out.append(pct)
        return out

    def _render_no_gpu(self, reason: str, width: int) -> Text:
        dim, label = self._style("dim"), self._style("label")
        out = Text(no_wrap=True, overflow="ellipsis")
        out.append("no NVIDIA GPU", style=label)
        out.append(f" · {reason}" if reason and reason != "no NVIDIA GPU" else "", style=dim)
        out.append("\nRAM  ", style=label)
        if self.trainer_rss_mb is None:
            out.append("trainer not running", style=dim)
            if self.engine_rss_mb is not None:
                out.append(f" · engine {_mem(self.engine_rss_mb)}", style=dim)
        else:
            nums = f" trainer {_mem(self.trainer_rss_mb)}"
            if self._ram_mb:
                frac = self.trainer_rss_mb / self._ram_mb
                filled, empty = bar(frac, max(4, width - 5 - len(nums)))
                out.append(filled, style=self._style(self._level(frac)))
                out.append(empty, style=dim)
            out.append(nums)
        out.append("\nmem  ", style=label)
        out.append(sparkline(self.rss_history, max(1, width - 5)), style=self._style("spark"))
        return out
