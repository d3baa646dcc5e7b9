"""Bound the engine's work per event-loop pass (issue 17: loop lag).

At a few hundred calls a second the loop is busy most of the time, and its lag comes
from single passes that do much: when 20-30 calls start or finish in one pass, the
SDK's request building (about 0.6 ms a start) and the answers' handling (about 0.25 ms
an end) add up to 10-15 ms. The ends cannot wait (their data has arrived), the starts
can: :class:`PassBudget` counts the work of the current pass, and the dispatcher starts
calls only while the pass has room, then yields (``sleep(0)``) to the next pass.

The dispatcher runs early in a pass, before most of the pass's ends (asyncio runs first
what was scheduled in the previous pass: the dispatcher's wake-up comes before the
answers' that the previous pass's socket reads scheduled), so it cannot count them yet.
Ends come in bursts that last several passes (answers pile up while a pass is long, or
while the machine runs something else), so the pass's ends are forecast as those of the
previous pass (or those counted so far, if more): a pass that follows one that finished
many calls starts few; a quiet one starts up to ``PASS_BUDGET // START_COST``. At least
one start per pass, so nothing starves.

A "pass" here is the span between two runs of a callback scheduled with ``call_soon``
when the first work of the span is counted: the callback runs in the next loop pass,
after what was already queued, so a span is about one pass (never the same work twice,
and spans do not overlap). Counts, not clocks: the tests count starts per pass.
"""

from __future__ import annotations

import asyncio

__all__ = ["END_COST", "PASS_BUDGET", "START_COST", "PassBudget"]

START_COST = 3  # a call started: the SDK builds the request and sends it (~0.6 ms of CPU)
END_COST = 1  # a call ended: the response read and parsed, the bookkeeping (~0.25 ms)
PASS_BUDGET = 12  # per pass: 4 starts, or 12 ends, or a mix (~3 ms of CPU)


class PassBudget:
    """The work counted in the current pass, against a budget. Not thread-safe (the loop's)."""

    __slots__ = ("_armed", "_loop", "budget", "ended", "forecast", "spans", "started")

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: int = PASS_BUDGET) -> None:
        self._loop = loop
        self.budget = budget
        self.started = 0  # calls started in this pass
        self.ended = 0  # calls ended in this pass so far
        self.forecast = 0  # ends expected in this pass: those of the previous one
        self.spans = 0  # passes that counted any work (for tests and stats)
        self._armed = False

    def _arm(self) -> None:
        if not self._armed:
            self._armed = True
            self.spans += 1
            self._loop.call_soon(self._next_pass)

    def _next_pass(self) -> None:
        self._armed = False
        self.forecast = self.ended
        self.started = self.ended = 0
        if self.forecast:
            self._arm()  # a pass with no work still closes, so that a forecast does not outlive its burst

    def can_start(self) -> bool:
        """Room for one more start in this pass (always for the pass's first)."""
        if self.started == 0:
            return True
        ends = self.ended if self.ended > self.forecast else self.forecast
        return (self.started + 1) * START_COST + ends * END_COST <= self.budget

    def start(self) -> None:
        """Count a call started in this pass."""
        self.started += 1
        self._arm()

    def end(self) -> None:
        """Count a call's answer (or failure) handled in this pass."""
        self.ended += 1
        self._arm()
