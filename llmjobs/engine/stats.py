"""Live counters of a run, read by runners, progress bars and the UI."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .governor import Governor

__all__ = ["EngineStats"]

_COUNTERS = (
    "requests",
    "ok",
    "rate_limited",
    "overloaded",
    "errors",
    "timeouts",
    "retries",
    "succeeded",
    "failed",
    "cancelled",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "pulled",
)


class EngineStats:
    """Counters updated in place while a run goes on (cheap to read at any time).

    ``requests`` counts HTTP attempts; ``ok``/``rate_limited`` (429)/``overloaded``
    (529)/``errors`` (anything else, timeouts included) split them. ``succeeded``,
    ``failed`` and ``cancelled`` count items. The ceiling, limits, in-flight
    counts and pause come live from the governor.
    """

    __slots__ = (*_COUNTERS, "started_at", "finished_at", "_governor", "_clock")

    requests: int
    ok: int
    rate_limited: int
    overloaded: int
    errors: int
    timeouts: int
    retries: int
    succeeded: int
    failed: int
    cancelled: int
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    pulled: int

    def __init__(self, governor: Governor | None = None, clock: Callable[[], float] | None = None) -> None:
        for name in _COUNTERS:
            setattr(self, name, 0)
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self._governor = governor
        self._clock = clock

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if self._governor is not None:
            return self._governor.now()
        import time

        return time.monotonic()

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.finished_at if self.finished_at is not None else self._now()
        return end - self.started_at

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.cancelled

    @property
    def in_flight(self) -> int:
        return self._governor.in_flight if self._governor else 0

    @property
    def peak_in_flight(self) -> int:
        return self._governor.peak_in_flight if self._governor else 0

    @property
    def ceiling(self) -> float:
        return self._governor.ceiling if self._governor else 0.0

    @property
    def limits(self) -> dict[str, float | None]:
        return self._governor.limits() if self._governor else {}

    @property
    def predicted_output(self) -> float | None:
        """A high percentile (p90) of the latest outputs in tokens, for planning and the ETA."""
        return self._governor.predicted_output if self._governor else None

    @property
    def binding(self) -> str | None:
        """The budget that held dispatch back the longest (``"requests"``, ``"input_tokens"``,
        ``"output_tokens"``), or None."""
        return self._governor.binding if self._governor else None

    @property
    def paused_for(self) -> float:
        """Seconds the run is still paused for after a 429/529 (0 when not paused)."""
        if self._governor is None:
            return 0.0
        left = self._governor.paused_until - self._governor.now()
        return left if left > 0 else 0.0

    @property
    def paused_until(self) -> float:
        """Governor-clock time until which dispatch is paused (0.0 if never paused)."""
        return self._governor.paused_until if self._governor else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _COUNTERS}
        d.update(
            elapsed=round(self.elapsed, 3),
            done=self.done,
            in_flight=self.in_flight,
            peak_in_flight=self.peak_in_flight,
            ceiling=round(self.ceiling, 1),
            limits=self.limits,
            paused_for=round(self.paused_for, 3),
        )
        return d

    def __repr__(self) -> str:
        return f"EngineStats({self.as_dict()!r})"
