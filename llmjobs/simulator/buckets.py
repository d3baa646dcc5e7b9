"""Token buckets that refill continuously, the way Anthropic applies rate limits.

A limit of ``L`` per minute gives a bucket of capacity ``L * burst / 60`` that
refills at ``L / 60`` per second. Nothing here reads the wall clock on its own:
both classes take a ``clock`` (monotonic seconds) so tests can drive time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["Admission", "RateLimiter", "TokenBucket"]

Clock = Callable[[], float]
_EPS = 1e-9


class TokenBucket:
    """One continuously refilling bucket. ``level`` may go below zero (debt)
    when a request costs more than was checked at admission."""

    __slots__ = ("_clock", "_last", "_level", "capacity", "limit", "rate")

    def __init__(self, limit: float, *, burst: float = 60.0, clock: Clock = time.monotonic) -> None:
        if limit <= 0:
            raise ValueError("limit must be > 0")
        if burst <= 0:
            raise ValueError("burst must be > 0")
        self.limit = limit
        self.capacity = limit * burst / 60.0
        self.rate = limit / 60.0
        self._clock = clock
        self._level = self.capacity
        self._last = clock()

    def _refill(self) -> float:
        now = self._clock()
        elapsed = now - self._last
        if elapsed > 0:
            level = self._level + elapsed * self.rate
            self._level = level if level < self.capacity else self.capacity
        self._last = now
        return self._level

    @property
    def level(self) -> float:
        """Current content (may be negative while in debt)."""
        return self._refill()

    def remaining(self) -> int:
        """Whole units available now (never negative)."""
        level = self._refill()
        return int(level + _EPS) if level > 0 else 0

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` (capped at the capacity) can be taken; 0 if now."""
        need = amount if amount < self.capacity else self.capacity
        deficit = need - self._refill()
        return deficit / self.rate if deficit > _EPS else 0.0

    def time_to_full(self) -> float:
        """Seconds until the bucket is full again."""
        missing = self.capacity - self._refill()
        return missing / self.rate if missing > _EPS else 0.0

    def try_acquire(self, amount: float) -> bool:
        """Take ``amount`` if available now (requests larger than the capacity
        pass once the bucket is full, leaving it in debt)."""
        if self.wait_time(amount) > 0:
            return False
        self._level -= amount
        return True

    def consume(self, amount: float) -> None:
        """Take ``amount`` unconditionally (may leave the bucket in debt)."""
        self._refill()
        self._level -= amount

    def refund(self, amount: float) -> None:
        """Give back ``amount`` (never beyond the capacity)."""
        level = self._refill() + amount
        self._level = level if level < self.capacity else self.capacity

    def __repr__(self) -> str:
        return f"TokenBucket(limit={self.limit}, capacity={self.capacity}, level={self.level:.3f})"


class Admission:
    """Result of :meth:`RateLimiter.admit`."""

    __slots__ = ("limited_by", "ok", "output_reserved", "retry_after")

    def __init__(self, ok: bool, retry_after: float = 0.0, limited_by: str = "", output_reserved: int = 0) -> None:
        self.ok = ok
        self.retry_after = retry_after  # exact seconds until admission would succeed
        self.limited_by = limited_by  # "requests" | "input_tokens" | "output_tokens"
        self.output_reserved = output_reserved

    @property
    def retry_after_header(self) -> int:
        """The integer ``retry-after`` value: ceil of the wait, at least 1."""
        return max(1, math.ceil(self.retry_after - _EPS))


_KINDS = (("requests", b"requests"), ("input_tokens", b"input-tokens"), ("output_tokens", b"output-tokens"))


class RateLimiter:
    """The three Anthropic buckets: requests (RPM), uncached input tokens
    (ITPM) and output tokens (OTPM). A limit of 0 means unlimited."""

    __slots__ = ("_active", "_clock", "_wall", "input_tokens", "output_tokens", "requests")

    def __init__(
        self,
        rpm: int = 0,
        itpm: int = 0,
        otpm: int = 0,
        *,
        burst: float = 60.0,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self.requests = TokenBucket(rpm, burst=burst, clock=clock) if rpm > 0 else None
        self.input_tokens = TokenBucket(itpm, burst=burst, clock=clock) if itpm > 0 else None
        self.output_tokens = TokenBucket(otpm, burst=burst, clock=clock) if otpm > 0 else None
        self._active = [
            (name, header, bucket)
            for (name, header), bucket in zip(_KINDS, (self.requests, self.input_tokens, self.output_tokens))
            if bucket is not None
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._active)

    def admit(self, input_tokens: int, max_tokens: int) -> Admission:
        """Admit one request needing ``input_tokens`` uncached input tokens and
        reserving ``max_tokens`` output tokens (capped at the OTPM capacity),
        or say how long to wait. All three buckets are checked before any is
        charged."""
        if not self._active:
            return Admission(True)
        reserve = max_tokens
        if self.output_tokens is not None and reserve > self.output_tokens.capacity:
            reserve = int(self.output_tokens.capacity)
        needs = {"requests": 1, "input_tokens": input_tokens, "output_tokens": reserve}
        worst, limited_by = 0.0, ""
        for name, _, bucket in self._active:
            wait = bucket.wait_time(needs[name])
            if wait > worst:
                worst, limited_by = wait, name
        if worst > 0:
            return Admission(False, worst, limited_by)
        for name, _, bucket in self._active:
            bucket.consume(needs[name])
        return Admission(True, output_reserved=reserve if self.output_tokens is not None else 0)

    def settle(self, reserved: int, actual: int) -> None:
        """Correct the OTPM reservation to the real output (refund or charge)."""
        bucket = self.output_tokens
        if bucket is None:
            return
        diff = reserved - actual
        if diff > 0:
            bucket.refund(diff)
        elif diff < 0:
            bucket.consume(-diff)

    def headers(self) -> list[tuple[bytes, bytes]]:
        """``anthropic-ratelimit-*`` headers for the limits that are set."""
        if not self._active:
            return []
        wall = self._wall()
        out: list[tuple[bytes, bytes]] = []
        for _, header, bucket in self._active:
            prefix = b"anthropic-ratelimit-" + header
            reset = wall + bucket.time_to_full()
            out.append((prefix + b"-limit", b"%d" % bucket.limit))
            out.append((prefix + b"-remaining", b"%d" % bucket.remaining()))
            out.append((prefix + b"-reset", rfc3339(reset).encode()))
        return out


def rfc3339(epoch: float) -> str:
    """UTC RFC 3339 timestamp with second precision, rounded up."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(epoch)))
