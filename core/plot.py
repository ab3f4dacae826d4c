"""`autoresearch plot -o FILE`: val_bpb of every experiment with the running-best frontier (PNG/SVG/PDF)."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .report import load_summary, printable
from .workspace import Workspace

FORMATS = (".png", ".svg", ".pdf")
LABEL_CHARS = 48


def y_limits(values: list[float], best: float, baseline: float | None) -> tuple[float, float]:
    """Zoom on the interesting band: a few wild discards must not flatten the frontier."""
    top_ref = max([baseline or best] + sorted(values)[: max(1, int(len(values) * 0.9))])
    span = max(top_ref - best, 1e-3)
    return best - 0.08 * span, top_ref + 0.15 * span


def render_plot(ws: Workspace, output: Path) -> Path:
    s = load_summary(ws)
    points = [(i + 1, r) for i, r in enumerate(s.rows)]
    valid = [(x, r) for x, r in points if r.status != "crash" and r.val_bpb > 0]
    if not valid:
        raise UserError("nothing to plot yet: results.tsv has no experiment with a val_bpb; "
                        "run `autoresearch loop` first.")
    import matplotlib
    matplotlib.use("Agg")  # no display on a GPU box over SSH
    import matplotlib.pyplot as plt

    # svg.fonttype none: SVG text stays text (searchable, small) instead of glyph outlines
    with plt.rc_context({"svg.fonttype": "none"}):
        fig, ax = plt.subplots(figsize=(12, 6), dpi=120)
        try:
            _draw(ax, s, points, valid)
            fig.tight_layout()
            output.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(output)
        finally:
            plt.close(fig)
    return output


def _draw(ax, s, points, valid) -> None:
    """Points by status, the running-best step line and labels of the kept improvements."""
    best_v = min(r.val_bpb for _, r in valid)
    lo, hi = y_limits([r.val_bpb for _, r in valid], best_v, s.baseline.val_bpb if s.baseline else None)
    ax.set_ylim(lo, hi)
    ax.set_xlim(0.5, s.total + 0.5 + 0.12 * s.total)  # room for the last labels

    disc = [(x, r.val_bpb) for x, r in valid if r.status != "keep" and r.val_bpb <= hi]
    over = [(x, hi - 0.015 * (hi - lo)) for x, r in valid if r.status != "keep" and r.val_bpb > hi]
    kept = [(x, r) for x, r in valid if r.status == "keep"]
    if disc:
        ax.scatter(*zip(*disc), s=18, color="#9e9e9e", alpha=0.7, label="discarded", zorder=2)
    if over:
        ax.scatter(*zip(*over), s=30, marker="^", color="#9e9e9e", zorder=2, label="discarded (off scale)")
    if kept:
        ax.scatter([x for x, _ in kept], [r.val_bpb for _, r in kept], s=36, color="#2e7d32",
                   label="kept", zorder=4)
    crashes = [x for x, r in points if r.status == "crash"]
    if crashes:
        ax.scatter(crashes, [lo + 0.02 * (hi - lo)] * len(crashes), marker="x", s=24, color="#c62828",
                   label="crashed", zorder=3)

    # running best frontier: a step that drops at every kept improvement
    fx, fy = [], []
    for x, e in zip((x for x, _ in points), s.entries):
        if e.best_after is not None:
            fx.append(x)
            fy.append(e.best_after)
    if fx:
        ax.step(fx, fy, where="post", color="#2e7d32", linewidth=1.6, alpha=0.9, label="running best",
                zorder=3)

    for (x, r), d in ((p, s.deltas[p[0] - 1]) for p in kept):
        if d is None or d < 0:  # label the baseline and real improvements
            label = printable(r.description)
            label = label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "…"
            # parse_math=False: a '$' in an agent's description must stay a dollar sign
            ax.annotate(label, (x, r.val_bpb), xytext=(4, 6), textcoords="offset points", fontsize=7,
                        rotation=25, color="#1b5e20", parse_math=False, zorder=5)

    gain = ""
    if s.baseline and s.best:
        gain = f", best {s.best.val_bpb:.6f} (baseline {s.baseline.val_bpb:.6f})"
    ax.set_title(f"autoresearch: {s.total} experiments, {s.kept} kept{gain}", fontsize=11)
    ax.set_xlabel("experiment #")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper right", fontsize=8)


def cmd_plot(ws: Workspace, args) -> int:
    """Entry point of `autoresearch plot [-o FILE]`; a relative FILE is taken from the current directory."""
    output = Path(getattr(args, "output", None) or "progress.png").expanduser()
    if output.suffix.lower() not in FORMATS:
        raise UserError(f"cannot write {output.name}: use a file name ending in {', '.join(FORMATS)}.")
    path = render_plot(ws, output.resolve())
    print(path)
    return 0
