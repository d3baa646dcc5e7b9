"""What the engine keeps per call while it runs (``Job``), and recent attempt latencies."""

from __future__ import annotations

from typing import Any

from ._types import Call, EngineConfig
from .retry import Verdict
from .tokens import estimate_input_tokens

__all__ = ["Job", "Latency", "attempt_timeout", "needs_streaming"]

# The SDK refuses non-streaming requests that may run past 10 minutes (it
# estimates an hour per 128k output tokens) or past a model's non-streaming
# limit; the engine posts directly, so it applies the same rule and streams them.
try:
    from anthropic._constants import MODEL_NONSTREAMING_TOKENS
except ImportError:  # pragma: no cover - an SDK without the table
    MODEL_NONSTREAMING_TOKENS = {}
_NONSTREAMING_TOKENS: dict[str, int] = dict(MODEL_NONSTREAMING_TOKENS)
_NONSTREAMING_MAX_TOKENS = 128_000 * 600 / 3600  # ~21,333


def needs_streaming(params: dict[str, Any]) -> bool:
    """Would the SDK insist on streaming this request (a large ``max_tokens``)?"""
    mt = params.get("max_tokens")
    if not isinstance(mt, (int, float)):
        return False
    if mt > _NONSTREAMING_MAX_TOKENS:
        return True
    model = params.get("model")
    limit = _NONSTREAMING_TOKENS.get(model) if isinstance(model, str) else None
    return limit is not None and mt > limit


class Job:
    __slots__ = (
        "attempts",
        "call",
        "failures",
        "in_raw",
        "index",
        "last_error",
        "out_cost",
        "params",
        "repaired",
        "spent",
        "started",
        "stream",
        "timeouts",
    )

    def __init__(self, call: Call, index: int) -> None:
        self.call = call
        self.index = index
        params = call.params
        if type(params) is not dict or "stream" in params:
            params = dict(params)
            params.pop("stream", None)
        self.params = params
        self.in_raw = estimate_input_tokens(params)
        mt = params.get("max_tokens")
        self.out_cost = float(mt) if isinstance(mt, (int, float)) else 0.0
        self.stream = call.stream or needs_streaming(params)
        self.attempts = 0
        self.failures = 0
        self.timeouts = 0
        self.started: float | None = None
        self.last_error: Verdict | None = None
        self.repaired = False  # an invalid answer was sent back once (see repair)
        self.spent: dict[str, Any] | None = None  # usage of answers that were not kept


class Latency:
    """A rolling window of attempt latencies, for the adaptive timeout."""

    __slots__ = ("count", "p99", "pos", "window")

    def __init__(self, size: int = 256) -> None:
        self.window = [0.0] * size
        self.pos = 0
        self.count = 0
        self.p99: float | None = None

    def add(self, value: float) -> None:
        w = self.window
        w[self.pos] = value
        self.pos = (self.pos + 1) % len(w)
        self.count += 1
        if self.count >= 20 and (self.count % 32 == 0 or self.count == 20):
            n = min(self.count, len(w))
            data = sorted(w[:n])
            self.p99 = data[min(n - 1, int(n * 0.99))]

    @property
    def mean(self) -> float | None:
        """Mean of the latencies in the window (None before any)."""
        n = min(self.count, len(self.window))
        return sum(self.window[:n]) / n if n else None


def attempt_timeout(cfg: EngineConfig, job: Job, latency: Latency) -> float:
    """One attempt's timeout: the configured one, else 4x the recent p99 latency (at most a
    prior from ``max_tokens``, at least ``min_attempt_timeout``), doubled per timeout so far."""
    if cfg.attempt_timeout is not None:
        t = cfg.attempt_timeout
    else:
        prior = 30.0 + job.out_cost / 20.0
        p99 = latency.p99
        t = prior if p99 is None else min(prior, 4.0 * p99)
        if t < cfg.min_attempt_timeout:
            t = cfg.min_attempt_timeout
    if job.timeouts:
        t *= 2**job.timeouts
    return t if t < cfg.max_attempt_timeout else cfg.max_attempt_timeout
