"""Keep or discard: the ratchet's rule as a pure function (upstream's rule: lower val_bpb by more than min_delta)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    status: str  # keep | discard
    simplification: bool
    reason: str


def decide(val_bpb: float, best: float | None, lines_added: int, lines_removed: int,
           min_delta: float = 0.0, simplify_tolerance: float = 0.0005) -> Decision:
    """Keep an improvement beyond min_delta; also keep a simplification (fewer lines) that costs at most
    simplify_tolerance; discard everything else. No best yet (the baseline): keep."""
    if best is None:
        return Decision("keep", False, "baseline")
    if val_bpb < best - min_delta:
        return Decision("keep", False, f"improved by {best - val_bpb:.6f}")
    if lines_removed > lines_added and val_bpb <= best + simplify_tolerance:
        return Decision("keep", True, f"simplification (-{lines_removed - lines_added} lines) "
                                      f"within {simplify_tolerance:g} of the best")
    if val_bpb < best:
        return Decision("discard", False, f"improved by {best - val_bpb:.6f}, not more than min_delta {min_delta:g}")
    return Decision("discard", False, f"worse by {val_bpb - best:.6f}" if val_bpb > best else "no improvement")
