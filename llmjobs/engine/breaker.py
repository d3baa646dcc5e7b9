"""The circuit breaker: an API outage pauses the run, not the items.

When the API stops answering (connection errors, timeouts, 5xx or 529 on every
recent call and no success for a while), retrying each item on its own burns
its attempt budget in seconds and fails it for a reason that is not its own.
The breaker instead *opens*: the whole run stops dispatching and sends one
probe at a time, with exponential backoff (``probe_base`` doubling up to
``probe_max``), until a call succeeds. Then it *closes* and the run goes on at
full speed. Failures seen while it is open do not count against the items.

It is driven by one monotonic clock (passed in), like the governor, so tests
fake time instead of sleeping.
"""

from __future__ import annotations

__all__ = ["CircuitBreaker"]

CLOSED = "closed"
OPEN = "open"


class CircuitBreaker:
    """Decides when the API is down for the whole run (not for one item).

    It opens after ``threshold`` outage-type failures in a row with no answer
    in between. Random faults (a few percent of calls) never string that many
    together. 529s alone open it only once no call has been answered for
    ``min_outage`` seconds: at a capacity wall a burst of calls above the
    ceiling gets 529 at once while the rest keep being answered (the governor
    handles that case).
    """

    __slots__ = (
        "_last_success",
        "_next_probe",
        "_probe_in_flight",
        "_streak",
        "min_outage",
        "opened_at",
        "opens",
        "probe_base",
        "probe_delay",
        "probe_max",
        "state",
        "threshold",
    )

    def __init__(
        self,
        *,
        threshold: int = 10,
        min_outage: float = 1.0,
        probe_base: float = 0.5,
        probe_max: float = 60.0,
        now: float = 0.0,
    ) -> None:
        self.threshold = threshold
        self.min_outage = min_outage
        self.probe_base = probe_base
        self.probe_max = probe_max
        self.state = CLOSED
        self.opens = 0  # how many times it opened (for stats)
        self.opened_at: float | None = None
        self.probe_delay = probe_base
        self._streak = 0
        self._last_success = now
        self._next_probe = 0.0
        self._probe_in_flight = False

    @property
    def is_open(self) -> bool:
        return self.state == OPEN

    @property
    def suspect(self) -> bool:
        """Closed, but the last attempts all failed as in an outage: don't give up on an item now."""
        return self.state == CLOSED and self._streak >= 2

    # -- dispatch --------------------------------------------------------------
    def delay(self, now: float) -> float | None:
        """Seconds until the next call may go out: 0 = now, None = wait for the probe in flight."""
        if self.state == CLOSED:
            return 0.0
        if self._probe_in_flight:
            return None
        wait = self._next_probe - now
        return wait if wait > 0 else 0.0

    def on_dispatch(self, now: float) -> bool:
        """A call goes out now. Returns True when it is the breaker's probe."""
        if self.state == CLOSED:
            return False
        self._probe_in_flight = True
        return True

    # -- feedback --------------------------------------------------------------
    def on_answer(self, now: float, probe: bool = False) -> None:
        """The API answered (a success, a 429 or an item's own 4xx): it is up.

        While open, only the probe's answer closes the breaker: a late answer to
        a call sent before the outage says nothing about the API now.
        """
        if probe:
            self._probe_in_flight = False
        self._last_success = now
        if self.state == OPEN and not probe:
            return
        self._streak = 0
        if self.state == OPEN:
            self.state = CLOSED
            self.opened_at = None
            self.probe_delay = self.probe_base

    def on_outage_failure(self, now: float, probe: bool = False, overloaded: bool = False) -> None:
        """A connection error or 5xx (``overloaded``: a 529): the API may be down."""
        self._streak += 1
        if self.state == OPEN:
            if probe:
                self._probe_in_flight = False
                self._next_probe = now + self.probe_delay
                delay = self.probe_delay * 2
                self.probe_delay = delay if delay < self.probe_max else self.probe_max
            return
        if self._streak >= self.threshold and (not overloaded or now - self._last_success >= self.min_outage):
            self.state = OPEN
            self.opens += 1
            self.opened_at = now
            self.probe_delay = self.probe_base
            self._next_probe = now + self.probe_delay
            self._probe_in_flight = False

    def on_abandoned(self, probe: bool = False) -> None:
        """The attempt was cancelled before the API said anything."""
        if probe:
            self._probe_in_flight = False
