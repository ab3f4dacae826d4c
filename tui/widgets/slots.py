"""Slots pane: one line per slot (its run, stage, times, live loss, memory) and one per proposal in flight."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.reactive import reactive
from textual.widget import Widget

from core.progress import loss_at

from ..logstream import sanitize_line
from ..messages import ExperimentChosen, SlotSelected
from .styles import ComponentStyles


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(max(0, seconds))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _mem(mb: float | None) -> str:
    if mb is None:
        return "—"
    return f"{mb / 1024:.1f}G" if mb >= 1024 else f"{mb:.0f}M"


def slot_name(slot) -> str:
    """What a person calls the slot: its label ("GPU 1", "CPU 2/4"), else its GPU, else its id."""
    if slot.label:
        return sanitize_line(slot.label, 24)
    if slot.gpu is not None:
        return f"GPU {slot.gpu}"
    return f"slot {slot.id}"


def node_of(slot) -> str:
    """Where a Ray run is placed: its node, and its GPU when the label does not say it already; '' otherwise."""
    if not slot.node:
        return ""
    text = sanitize_line(slot.node, 20)
    if slot.gpu is not None and "gpu" not in (slot.label or "").lower():
        text += f" GPU {slot.gpu}"
    return text


def vs_best(run, best_curve) -> tuple[str, float | None]:
    """'3.412 −0.043': the run's live loss and its difference from the best run's loss at the same progress."""
    if run is None or run.loss is None:
        return "—", None
    text = f"{run.loss:.3f}"
    if run.fraction is None or not best_curve:
        return text, None
    ref = loss_at(list(best_curve), run.fraction)
    if ref is None:
        return text, None
    return text, run.loss - ref


class SlotsPane(Widget, can_focus=True):
    """Attributes down: set_state(snapshot, sample); `selected` is the slot the log pane follows."""

    DEFAULT_CSS = """
    SlotsPane { height: auto; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    SlotsPane:focus { background-tint: $foreground 3%; }
    SlotsPane > .slots--head { color: $text-muted; text-style: bold; }
    SlotsPane > .slots--cursor { background: $primary 40%; text-style: bold; }
    SlotsPane > .slots--dim { color: $text-muted; }
    SlotsPane > .slots--ahead { color: $success; }
    SlotsPane > .slots--behind { color: $error; }
    SlotsPane > .slots--label { color: $text-accent; }
    """

    COMPONENT_CLASSES = {"slots--head", "slots--cursor", "slots--dim", "slots--ahead", "slots--behind",
                         "slots--label"}

    BINDINGS = [
        Binding("up,k", "move(-1)", "up", show=False),
        Binding("down,j", "move(1)", "down", show=False),
        Binding("enter", "choose", "open", show=False),
    ]

    selected: reactive[str | None] = reactive(None, init=False)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.slots = ()
        self.proposals = ()
        self.sample = None
        self._height = 0
        self._styles = ComponentStyles(self, "slots--")

    def set_state(self, slots, proposals, sample=None) -> None:
        self.slots, self.proposals = tuple(slots), tuple(proposals)
        if sample is not None:
            self.sample = sample
        if self.slots and self.selected not in {s.id for s in self.slots}:
            self.selected = self._default()
        height = 1 + len(self.slots) + len(self.proposals)
        self.refresh(layout=height != self._height)
        self._height = height

    def set_sample(self, sample) -> None:
        self.sample = sample
        self.refresh()

    def _default(self) -> str | None:
        running = [s for s in self.slots if s.experiment]
        return (running or list(self.slots))[0].id if self.slots else None

    def get_content_height(self, container, viewport, width: int) -> int:
        return 1 + len(self.slots) + len(self.proposals)

    def watch_selected(self, old, new) -> None:
        self.refresh()
        self.post_message(SlotSelected(new))

    def cycle(self, step: int = 1) -> None:
        ids = [s.id for s in self.slots]
        if not ids:
            return
        i = ids.index(self.selected) if self.selected in ids else -1
        self.selected = ids[(i + step) % len(ids)]

    def action_move(self, step: int) -> None:
        self.cycle(step)

    @property
    def selected_slot(self):
        return next((s for s in self.slots if s.id == self.selected), None)

    def action_choose(self) -> None:
        slot = self.selected_slot
        if slot is not None and slot.experiment:
            self.post_message(ExperimentChosen(exp_id=slot.experiment))
        else:
            self.app.notify("this slot runs nothing right now: nothing to open", markup=False)

    def _st(self, name: str):
        return self._styles(name)

    def render(self) -> Text:
        out = Text(no_wrap=True, overflow="ellipsis")
        sample = self.sample
        runs = sample.runs if sample is not None else {}
        uses = sample.slots if sample is not None else {}
        best_curve = sample.best_curve if sample is not None else ()
        gpu = sample is not None and sample.gpu is not None and sample.gpu.available
        names = [slot_name(s) for s in self.slots] or ["slot"]
        w = max(8, *(len(n) for n in names))
        mem_title = "VRAM" if gpu else "RAM"
        nodes = [node_of(s) for s in self.slots]
        nw = max([4, *(len(n) for n in nodes)]) if any(nodes) else 0  # a node column only for Ray runs
        node_head = f"{'node'.ljust(nw)} " if nw else ""
        out.append(f"  {'slot'.ljust(w)} {node_head}{'exp'.ljust(5)} {'stage'.ljust(10)} {'training'.rjust(11)} "
                   f"{'elapsed'.rjust(7)} {'loss'.rjust(6)} {'vs best'.rjust(7)} {mem_title.rjust(6)}  what",
                   style=self._st("head"))
        for s, name, node in zip(self.slots, names, nodes):
            out.append("\n")
            mark = "▶ " if s.id == self.selected else "  "
            line_style = self._st("cursor") if s.id == self.selected and self.has_focus else None
            start = len(out)
            out.append(mark, style=self._st("label"))
            out.append(name.ljust(w), style=self._st("label"))
            if nw:
                out.append(" " + node.ljust(nw), style=self._st("dim"))
            if not s.experiment:
                out.append(" " + "—".ljust(5) + " " + "idle", style=self._st("dim"))
                if line_style is not None:
                    out.stylize(line_style, start, len(out))
                continue
            run = runs.get(s.experiment)
            stage = run.stage if run is not None else s.phase
            trained = f"{_dur(run.trained_s)}/{_dur(run.budget_s)}" if run is not None and run.budget_s else "—"
            elapsed = _dur(run.elapsed_s) if run is not None else "—"
            loss, delta = vs_best(run, best_curve)
            use = uses.get(s.id)
            if use is None:
                mem = "—"
            elif gpu:
                mem = "shared" if use.vram_shared else _mem(use.vram_mb)
            else:
                mem = _mem(use.rss_mb)
            out.append(f" {sanitize_line(s.experiment, 5).ljust(5)} {stage[:10].ljust(10)} {trained.rjust(11)} "
                       f"{elapsed.rjust(7)} {loss.rjust(6)} ")
            if delta is None:
                out.append("—".rjust(7))
            else:
                out.append(f"{delta:+.3f}".replace("-", "−").rjust(7),
                           style=self._st("ahead" if delta < 0 else "behind"))
            out.append(f" {mem.rjust(6)}  ")
            what = s.description or "(no description yet)"
            if s.confirms:
                what = f"confirms {s.confirms}: {what}"
            out.append(sanitize_line(what, 300))
            if line_style is not None:
                out.stylize(line_style, start, len(out))
        for p in self.proposals:
            out.append("\n")
            out.append("  ⋯ ", style=self._st("dim"))
            out.append(f"proposal {sanitize_line(p.id, 12)} ", style=self._st("dim"))
            state = p.state
            if sample is not None and p.started_at is not None and p.state != "ready":
                state += f" {_dur(sample.ts - p.started_at)}"
            out.append(state.ljust(16))
            if p.base:
                out.append(f" from {sanitize_line(p.base[:7], 7)}", style=self._st("dim"))
            what = p.description or (f"idea: {p.idea}" if p.idea else "")
            if what:
                out.append("  " + sanitize_line(what, 300))
        return out
