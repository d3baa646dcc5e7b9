"""One org-wide rate limit shared by every process (issue 12 part 3): the engine side.

The org's limits (RPM, ITPM, OTPM) and its ``retry-after`` pause belong to the API
key and model family, not to one process. :class:`SharedLimits` runs beside one
engine run: every ``interval`` seconds (``alone_interval``, 1 s, while the last grant
said no other member shares the row), and at once after a local 429, it sends
the run's :class:`LocalState` to an injected ``exchange(state) -> Grant`` callable
(the Django side, ``llmjobs.org_governor``, keeps the state in the database the
workers share) on a thread of its own, and applies the :class:`Grant` it gets:

* ``share``: this run's fraction of the learned limits (1 / the live members
  using the same key and family). :func:`apply_grant` scales the governor's
  three buckets (limit, capacity, level) to it, and the governor scales every
  ``anthropic-ratelimit-*`` reading by it, so the local model keeps tracking the
  org's bucket (a member that uses less than its share shows up in the readings
  as room the others may take);
* ``paused_until``: the org's pause (wall-clock epoch seconds): a 429 seen by one
  member pauses them all.

The hot path never waits on an exchange: the grant is a share valid until the
next one. After ``max_failures`` exchanges in a row fail, the run falls back to
pacing alone (share 1, its own pause) with one log line, and tries again every
``rejoin_interval`` seconds (30): the first exchange that works brings it back to its
share (one more log line), so a database that comes back does not leave the run
pacing as if it were alone for the rest of a long job. Imports no Django.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .governor import Governor

__all__ = ["Grant", "LocalState", "SharedLimits", "apply_grant"]

log = logging.getLogger("llmjobs.engine.shared")

INTERVAL = 0.3  # seconds between exchanges while other members share the row
ALONE_INTERVAL = 1.0  # ... while the last grant said this run is alone on it (well within a member's
# liveness window): an idle or lone process pays for one small transaction a second, not three
POLL = 0.05  # how often a new local pause (a 429) is looked for, to exchange at once
MAX_FAILURES = 3
REJOIN_INTERVAL = 30.0  # seconds between tries to rejoin the row after falling back
LEAVE_TIMEOUT = 5.0  # the run's end waits at most this long to leave the row


@dataclass(frozen=True, slots=True)
class LocalState:
    """What one member (one engine run) tells the others."""

    in_flight: int
    rpm: float | None  # the org's limits as learned here (unscaled), None when unknown
    itpm: float | None
    otpm: float | None
    paused_until: float  # wall-clock epoch seconds (0: no pause)
    leaving: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    """What the shared row grants one member until the next exchange."""

    share: float  # of the learned limits, 0 < share <= 1
    paused_until: float = 0.0  # the org's pause, wall-clock epoch seconds
    members: int = 1  # live members using the row
    in_flight: int = 0  # calls in flight across them
    rpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None


def apply_grant(gov: Governor, share: float, pause: float = 0.0) -> None:
    """Scale ``gov``'s buckets to ``share`` of the org's limits; pause it ``pause`` more seconds."""
    share = min(1.0, max(share, 1e-3))
    old = gov.share
    if share != old:
        ratio = share / old
        for bucket in (gov.requests, gov.input_tokens, gov.output_tokens):
            if bucket.limit is not None:
                bucket.limit *= ratio
                bucket.rate = bucket.limit / 60.0 if bucket.limit > 0 else None
            if bucket.capacity > 0:
                bucket.refill(gov.now())
                bucket.capacity *= ratio
                bucket.levels = [min(level * ratio, bucket.capacity) for level in bucket.levels]
        gov.share = share
    if pause > 0:
        until = gov.now() + pause
        if until > gov.paused_until:
            gov.paused_until = until


class SharedLimits:
    """Keeps one governor's share of the org's limits current (see the module docstring)."""

    def __init__(
        self,
        governor: Governor,
        exchange: Callable[[LocalState], Grant],
        *,
        interval: float = INTERVAL,
        alone_interval: float | None = None,
        poll: float = POLL,
        max_failures: int = MAX_FAILURES,
        rejoin_interval: float = REJOIN_INTERVAL,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.gov = governor
        self.exchange = exchange
        self.interval = interval
        self.alone_interval = max(interval, ALONE_INTERVAL) if alone_interval is None else alone_interval
        self.poll = poll
        self.max_failures = max_failures
        self.rejoin_interval = rejoin_interval
        self.wall = wall
        self.failures = 0
        self.fell_back = False
        self.exchanges = 0
        self.last: Grant | None = None
        self._granted_pause = 0.0  # the governor's pause as the last grant left it
        self._next_at = 0.0

    # -- one step, on the loop (pure: testable with a fake clock) -------------------------
    def local_state(self, leaving: bool = False) -> LocalState:
        gov = self.gov
        share = gov.share or 1.0
        left = gov.paused_until - gov.now()
        limits = [
            b.limit / share if b.limit is not None else None
            for b in (gov.requests, gov.input_tokens, gov.output_tokens)
        ]
        return LocalState(
            in_flight=gov.in_flight,
            rpm=limits[0],
            itpm=limits[1],
            otpm=limits[2],
            paused_until=self.wall() + left if left > 0 else 0.0,
            leaving=leaving,
        )

    def due(self, now: float) -> bool:
        """An exchange is due: the interval passed, or a local pause (a 429) is news to the others.
        Fallen back: only the next try to rejoin."""
        if self.fell_back:
            return now >= self._next_at
        return now >= self._next_at or self.gov.paused_until > self._granted_pause

    def applied(self, grant: Grant, now: float) -> None:
        if self.fell_back:
            self.fell_back = False
            log.warning("shared rate limits: the exchange works again; this run takes its share of the org's limits")
        self.failures = 0
        self.exchanges += 1
        self.last = grant
        self.gov.apply_grant(grant.share, grant.paused_until - self.wall())
        self._granted_pause = self.gov.paused_until
        self._next_at = now + (self.interval if grant.members > 1 else self.alone_interval)

    def failed(self, exc: BaseException, now: float) -> None:
        self.failures += 1
        log.debug("shared rate limits: exchange failed (%d in a row): %r", self.failures, exc)
        self._granted_pause = self.gov.paused_until
        if self.fell_back:
            self._next_at = now + self.rejoin_interval
            return
        self._next_at = now + self.interval
        if self.failures >= self.max_failures:
            self.fell_back = True
            self._next_at = now + self.rejoin_interval
            self.gov.apply_grant(1.0)
            log.warning(
                "shared rate limits: %d exchanges failed in a row (%s: %s); this run paces alone until one works",
                self.failures,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Exchange until cancelled (the run ended), then leave the row."""
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmjobs-org-governor")
        try:
            while True:
                now = self.gov.now()
                if self.due(now):
                    state = self.local_state()
                    try:
                        grant = await loop.run_in_executor(pool, self.exchange, state)
                    except Exception as exc:
                        self.failed(exc, self.gov.now())
                    else:
                        self.applied(grant, self.gov.now())
                await asyncio.sleep(self.poll)
        finally:
            if not self.fell_back and not self.failures:  # (a failing database: the row goes stale)
                leave = loop.run_in_executor(pool, self.exchange, self.local_state(leaving=True))
                try:
                    await asyncio.wait_for(asyncio.shield(leave), LEAVE_TIMEOUT)
                except BaseException as exc:  # a second cancel, or a slow database: the row goes stale
                    log.debug("shared rate limits: leaving failed: %r", exc)
            pool.shutdown(wait=False)
