"""Token prices by model (USD per million tokens): estimates for agents whose CLI or API reports no cost.

The figures are the vendors' public list prices as last checked for this table (API pay-as-you-go,
standard tier, no batch discount); a subscription, a discount or a price change makes them wrong, which
is why every cost computed here is recorded with `cost_estimated: true`. A model the table does not know
gets no cost (None) rather than a guess. AUTORESEARCH_PRICES overrides or extends the table:
  AUTORESEARCH_PRICES='{"gpt-6.1-sol": [2.0, 16.0], "my-model": [1.0, 4.0, 0.1]}'
(input, output[, cached input] per million tokens; a key matches a model exactly or as a prefix up to a `-`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cached_input: float  # a cache read
    cache_write: float  # Anthropic's prompt-cache write (1.25x input); OpenAI has none


def _anthropic(inp: float, out: float) -> Price:
    return Price(inp, out, round(inp * 0.1, 6), round(inp * 1.25, 6))


def _openai(inp: float, cached: float, out: float) -> Price:
    return Price(inp, out, cached, inp)


# Anthropic families are matched as substrings, first hit wins (the list runs from specific to general).
ANTHROPIC = (
    ("claude-3-opus", _anthropic(15.0, 75.0)), ("opus-4-0", _anthropic(15.0, 75.0)),
    ("opus-4-1", _anthropic(15.0, 75.0)), ("opus-4-2025", _anthropic(15.0, 75.0)),
    ("opus", _anthropic(5.0, 25.0)),  # Opus 4.5 and later
    ("sonnet", _anthropic(3.0, 15.0)),
    ("haiku-4", _anthropic(1.0, 5.0)), ("3-5-haiku", _anthropic(0.8, 4.0)), ("haiku", _anthropic(0.25, 1.25)),
)

# OpenAI models are matched exactly or as a prefix followed by `-` (gpt-5-codex, gpt-5-2025-08-07), never
# by a longer version number: gpt-5.6-sol is not gpt-5.
OPENAI = (
    ("gpt-5-nano", _openai(0.05, 0.005, 0.40)), ("gpt-5-mini", _openai(0.25, 0.025, 2.0)),
    ("gpt-5", _openai(1.25, 0.125, 10.0)), ("codex-mini-latest", _openai(1.5, 0.375, 6.0)),
    ("gpt-4.1-nano", _openai(0.10, 0.025, 0.40)), ("gpt-4.1-mini", _openai(0.40, 0.10, 1.60)),
    ("gpt-4.1", _openai(2.0, 0.50, 8.0)), ("gpt-4o-mini", _openai(0.15, 0.075, 0.60)),
    ("gpt-4o", _openai(2.50, 1.25, 10.0)), ("o4-mini", _openai(1.10, 0.275, 4.40)), ("o3", _openai(2.0, 0.50, 8.0)),
)


def _prefix_match(model: str, key: str) -> bool:
    return model == key or model.startswith(key + "-")


def _overrides() -> dict[str, Price]:
    raw = os.environ.get("AUTORESEARCH_PRICES")
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except ValueError:
        return {}
    out = {}
    for key, vals in (table.items() if isinstance(table, dict) else ()):
        if isinstance(vals, list) and len(vals) in (2, 3) and all(isinstance(v, (int, float)) for v in vals):
            inp, outp = float(vals[0]), float(vals[1])
            cached = float(vals[2]) if len(vals) == 3 else inp
            out[str(key).lower()] = Price(inp, outp, cached, inp)
    return out


def price_for(model: str | None) -> Price | None:
    """The price of a model, or None for one the table does not know."""
    if not model:
        return None
    m = model.lower()
    for key, p in sorted(_overrides().items(), key=lambda kv: -len(kv[0])):
        if _prefix_match(m, key):
            return p
    for key, p in OPENAI:
        if _prefix_match(m, key):
            return p
    if "claude" in m or any(f in m for f in ("opus", "sonnet", "haiku")):
        for family, p in ANTHROPIC:
            if family in m:
                return p
    return None


def estimate_cost(model: str | None, input_tokens: int, output_tokens: int, cache_write: int = 0,
                  cache_read: int = 0) -> float | None:
    """USD for one run; input_tokens are the uncached ones. None for a model the table does not know."""
    p = price_for(model)
    if p is None:
        return None
    return round((input_tokens * p.input + cache_write * p.cache_write + cache_read * p.cached_input
                  + output_tokens * p.output) / 1e6, 6)
