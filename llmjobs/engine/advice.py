"""User-facing hints from what a run observed (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["max_tokens_advice", "suggest_max_tokens"]

_MIN_SPEEDUP = 1.5  # below this the hint is not worth the user's attention
_MIN_SAMPLES = 20


def suggest_max_tokens(outputs: Sequence[float]) -> int:
    """A ``max_tokens`` that leaves room for every answer seen: the next power of two at or
    above twice the 99th percentile and 1.25 times the longest answer (at least 64)."""
    data = sorted(outputs)
    p99 = data[min(len(data) - 1, int(len(data) * 0.99))]
    need = max(2.0 * p99, 1.25 * data[-1], 64.0)
    value = 64
    while value < need:
        value *= 2
    return value


def max_tokens_advice(
    outputs: Sequence[float],
    max_tokens: int,
    binding: str | None,
    *,
    capacity: float | None = None,
    rate: float | None = None,
    latency: float | None = None,
) -> str | None:
    """The hint to show when ``max_tokens`` is far above the observed answers and the
    output-token budget held the run back, e.g. "answers average 52 tokens; max_tokens 256
    would run ≈ 3x faster" (with a multiplication sign); None when there is nothing useful to say.

    ``outputs`` are the observed output lengths (tokens), ``binding`` the budget that held
    dispatch back the longest (``"output_tokens"`` for this hint to apply). The API reserves
    ``max_tokens`` from the output-token bucket for each call's whole round trip: with the
    bucket's ``capacity`` (tokens), refill ``rate`` (tokens/s) and the call ``latency`` (s),
    a call costs its answer plus the unused reservation for the share of the bucket's refill
    period it is held (the whole reservation when they are unknown). The estimate is rough.
    """
    if binding != "output_tokens" or len(outputs) < _MIN_SAMPLES or max_tokens <= 0:
        return None
    mean = sum(outputs) / len(outputs)
    if mean <= 0:
        return None
    suggested = suggest_max_tokens(outputs)
    if suggested >= max_tokens:
        return None
    held = 1.0
    if capacity and rate and latency and capacity > 0 and rate > 0:
        held = min(1.0, latency * rate / capacity)

    def cost(reserve: float) -> float:
        reserve = min(reserve, capacity) if capacity else reserve
        return mean + max(0.0, reserve - mean) * held

    speedup = cost(max_tokens) / cost(suggested)
    if speedup < _MIN_SPEEDUP:
        return None
    times = f"{speedup:.0f}" if speedup >= 2.5 else f"{speedup:.1f}"
    return f"answers average {mean:.0f} tokens; max_tokens {suggested} would run ≈ {times}\u00d7 faster"
