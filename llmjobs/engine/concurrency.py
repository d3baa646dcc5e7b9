"""The concurrency controller: how many calls may be in flight (issue 17).

One :class:`ConcurrencyController` per governor keeps the in-flight count and an
adaptive ceiling between 1 and ``max_concurrency``. Its decisions, all from what
the answers say (the caller passes the clock's readings in):

* **slow start**: the ceiling grows by ``_SLOW_START_GAIN`` per success while in
  use (x4 per round trip: a capacity 529 comes back at once, so overshoot is
  cheap) until the first signal. A warm-up (a small first wave, at most
  ``first_wave`` calls and what any account surely allows at once, see the
  governor, in flight until the first answer, at most ``warmup`` seconds) learns
  the account's limits before the full wave. Its first call is streamed, so its
  headers come back as soon as the API admits it, long before its answer: when
  they show no limit or room for the next wave, they end it (``on_open``; the
  governor decides). Either end gives the ceiling two slow-start round trips
  at once (x8);
* **capacity wall**: each 529 carries the in-flight level it was sent at. Three
  529s above every level that worked lately, either dense (most levels between
  the lowest and the highest of them refused) or with nothing left in flight
  above the lowest of them when they come (every call sent up there was
  refused), are a wall: the ceiling goes to one call under that level, not a multiplicative
  fraction of it, once per round trip; a 529 of that burst that comes back late
  from a lower level moves it under that one. Such 529s need no run-wide pause
  (``on_overloaded`` says so): the ceiling is the answer. 529s at levels that
  work, far above chance (>= 1 in 8 lately), cut by 10% (the capacity shrank);
  a few random overloads never move it;
* **gentle probe**: after a signal, growth is back to the last wall quickly
  (``_PROBE_MIN`` per round trip) and then ``_PROBE_SLOW`` per round trip above
  it, until the next signal;
* **latency gradient** (Netflix concurrency-limits' Gradient2Limit): a short and
  a long exponential average of round-trip times; ``gradient = clamp(tolerance *
  long / short, 0.5, 1)``. Below 1 the API is queueing our calls: the ceiling
  stops growing and shrinks by about ``gradient`` per round trip, so a slowing
  API is seen before it refuses. The long average decays when the short one
  drops far below it, so recovery is quick;
* **429 without usable headers**: multiplicative decrease (x0.7), once per
  round trip (a 429 with headers corrects the budgets instead; see the governor).

The ceiling never goes below 1. 529s never fail an item (the engine retries them
without using up an attempt); this class only decides the ceiling.
"""

from __future__ import annotations

__all__ = ["ConcurrencyController"]

_SLOW_START_GAIN = 3.0  # ceiling += this per success in slow start (x4 per round trip)
_WARM_GAIN = 8.0  # the warm-up's end (first headers or answer): ceiling x this (two round trips)
_PROBE_MIN = 4.0  # per round trip below the last wall: at least this, or the gap
_PROBE_SLOW = 0.5  # per round trip near or above it
_DECREASE_529 = 0.9  # only for 529s far above chance at any level (not a wall above what worked)
_DECREASE_429 = 0.7
_RTT_SHORT = 0.1  # EMA weight of the short-run round-trip time (the last ~10 answers)
_RTT_LONG = 20.0  # the long-run one spans about this many round trips (a ceiling's worth of answers each)
_RTT_TOLERANCE = 1.5  # short up to this x long is normal variation (Gradient2's rttTolerance)
_RTT_MIN_SAMPLES = 32
_GRADIENT_MIN = 0.5  # Gradient2 never cuts by more than half a window on one reading


class ConcurrencyController:
    """The in-flight count and its adaptive ceiling; pure arithmetic, no clock of its own."""

    __slots__ = (
        "_epoch",
        "_fails",
        "_rtt_long",
        "_rtt_n",
        "_rtt_short",
        "_succ_level",
        "_warm_until",
        "_warmup",
        "_win",
        "_win_529s",
        "ceiling",
        "first_wave",
        "in_flight",
        "max_concurrency",
        "peak_in_flight",
        "ssthresh",
        "w_max",
        "warming",
    )

    def __init__(
        self,
        *,
        max_concurrency: int = 512,
        initial_concurrency: int = 32,
        warmup: float = 0.0,
        first_wave: int = 1,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.ceiling = float(max(1, min(initial_concurrency, max_concurrency)))
        self.ssthresh = float(max_concurrency)  # slow start below it, gentle probing above
        self.w_max = 0.0  # the level of the last capacity signal (0: none yet)
        self.in_flight = 0
        self.peak_in_flight = 0
        self._epoch = 0  # bumped by each cut: one cut per round trip
        self._succ_level = 0.0  # the highest level that worked lately (decays slowly)
        self._fails: list[int] = []  # levels of this round trip's 529s above every level that worked lately
        self._win = 0  # all calls resolved lately (success or 529), and the 529s among them
        self._win_529s = 0
        self._rtt_short = 0.0
        self._rtt_long = 0.0
        self._rtt_n = 0
        self.warming = warmup > 0
        self._warmup = warmup
        self._warm_until: float | None = None
        self.first_wave = max(1, first_wave)  # calls in flight at most while warming

    # -- dispatch --------------------------------------------------------
    def free_slots(self, now: float) -> int:
        if self.warming and self.warmup_left(now) > 0:
            wave = self.first_wave
            ceiling = int(self.ceiling)
            return (wave if wave < ceiling else ceiling) - self.in_flight
        return int(self.ceiling) - self.in_flight

    def warmup_left(self, now: float) -> float:
        """Seconds the warm-up (the first wave in flight until the first answer) may still last."""
        if not self.warming:
            return 0.0
        if self._warm_until is None:
            return self._warmup
        left = self._warm_until - now
        if left <= 0:
            self.warming = False
            return 0.0
        return left

    def send(self, now: float) -> tuple[int, int]:
        """Count one call in flight: its (level, epoch)."""
        if self.warming and self._warm_until is None:
            self._warm_until = now + self._warmup
        self.in_flight = level = self.in_flight + 1
        if level > self.peak_in_flight:
            self.peak_in_flight = level
        return level, self._epoch

    def done(self, warmed: bool = True) -> None:
        """One call is no longer in flight (any outcome); the warm-up ends with it, unless
        ``warmed`` is False (its headers were not read: see ``Governor.on_open``)."""
        if warmed:
            self.warming = False
        self.in_flight -= 1

    def on_open(self) -> bool:
        """The first wave's response headers showed no limit in the way (the governor
        decides): the warm-up ends here, with its gain, instead of at the first answer.
        Returns True when it ended the warm-up (the caller wakes dispatch)."""
        if not self.warming:
            return False
        self.warming = False
        self._warm_gain()
        return True

    def warm_target(self) -> float:
        """The ceiling the warm-up's end gives (its gain, within max_concurrency)."""
        if self.ceiling >= self.ssthresh:
            return self.ceiling
        c = self.ceiling * _WARM_GAIN
        return c if c < self.max_concurrency else float(self.max_concurrency)

    def _warm_gain(self) -> None:
        self.ceiling = self.warm_target()

    # -- feedback --------------------------------------------------------
    def on_success(self, level: int, rtt: float, warmed: bool = False) -> None:
        """A call sent at ``level`` succeeded after ``rtt`` seconds (``done()`` already called).

        ``warmed``: this answer ended the warm-up (no headers of the first wave did before).
        """
        if warmed:
            self._warm_gain()
        self._count_window(False)
        succ = self._succ_level - 0.01
        self._succ_level = level if level > succ else succ
        ceiling = self.ceiling
        gradient = self._gradient(rtt)
        if gradient < 1.0:
            # the API queues our calls: shrink by about `gradient` per round trip (a
            # ceiling's worth of answers), never under one; no growth meanwhile
            ceiling -= (1.0 - gradient) if ceiling > 1.0 else 0.0
            self.ceiling = ceiling if ceiling > 1.0 else 1.0
            if self.ssthresh > self.ceiling:
                self.ssthresh = self.ceiling  # back to gentle probing when it recovers
            return
        # Grow only while the ceiling is actually in use. All int(ceiling) slots
        # in use counts too: with a small fractional ceiling (say 2.9, two slots),
        # 80% of it could never be reached and the ceiling would stick there.
        in_use = 0.8 * ceiling
        if in_use > int(ceiling):
            in_use = int(ceiling)
        if self.in_flight + 1 < in_use:
            return
        if ceiling < self.ssthresh:
            ceiling += _SLOW_START_GAIN
        else:
            w_max = self.w_max
            target = w_max - 1.0
            if ceiling < target:
                gain = target - ceiling  # back near the last wall within a round trip
                if gain < _PROBE_MIN:
                    gain = _PROBE_MIN
            else:
                gain = _PROBE_SLOW
            ceiling += gain / ceiling
        self.ceiling = ceiling if ceiling < self.max_concurrency else float(self.max_concurrency)

    def _gradient(self, rtt: float) -> float:
        """Fold one round trip into the averages; Gradient2's ``tolerance * long / short`` in [0.5, 1]."""
        n = self._rtt_n
        self._rtt_n = n + 1
        if not n:
            self._rtt_short = self._rtt_long = rtt
            return 1.0
        short = self._rtt_short = self._rtt_short + _RTT_SHORT * (rtt - self._rtt_short)
        span = _RTT_LONG * self.ceiling  # answers in about _RTT_LONG round trips
        w = 1.0 / (n + 1) if n + 1 < span else 1.0 / span
        long = self._rtt_long = self._rtt_long + w * (rtt - self._rtt_long)
        if long > 2.0 * short:
            self._rtt_long = long = long * 0.95  # latency is back to normal after a long slow spell
        if n < _RTT_MIN_SAMPLES or short <= 0.0:
            return 1.0
        g = _RTT_TOLERANCE * long / short
        return 1.0 if g >= 1.0 else (_GRADIENT_MIN if g < _GRADIENT_MIN else g)

    def on_overloaded(self, level: int, epoch: int) -> bool:
        """A 529 for a call sent at ``level`` (``done()`` already called).

        Returns True when the ceiling now explains it: a capacity signal, and the
        ceiling is under ``level`` (the caller need not pause the whole run for it).
        """
        if epoch != self._epoch:
            # sent before the last cut: part of the burst that caused it; one that came back
            # late from a level the new ceiling allows, above what worked, lowers the wall
            if self._succ_level < level <= self.ceiling and self.ssthresh == self.ceiling:
                self.w_max = float(level)
                self.ceiling = self.ssthresh = max(1.0, level - 1.0)
            return self.ceiling < level
        # A capacity wall: 529s for calls sent above every level that worked lately, at least
        # three, and (what random overloads lack) either dense, most levels from the lowest
        # to the highest of them refused, or no call left in flight above the lowest of them
        # (every call sent up there came back refused: the in-flight count *now*, when the
        # 529 came, says so).
        fails = self._fails
        succ = self._succ_level
        if level > succ:
            fails.append(level)
        else:
            self._count_window(True)
        if len(fails) > 1:
            fails[:] = [f for f in fails if f > succ][-64:]
        n = len(fails)
        lowest = min(fails) if fails else 0
        wall = n >= 3 and (self.in_flight <= lowest or 2 * n >= max(fails) - lowest + 1)
        # ... or 529s at levels that work, far more frequent than chance (>= 1 in 8 lately):
        # the capacity shrank (cut by 10% a round trip)
        if not wall and not (self._win_529s >= 8 and 8 * self._win_529s >= self._win):
            return False
        self._epoch += 1
        self._win = self._win_529s = 0
        fails.clear()
        if wall:
            # calls sent at `lowest` in flight and above meet 529s; sit one call under it
            self.w_max = float(lowest)
            ceiling = float(lowest) - 1.0
        else:
            self.w_max = float(level)
            ceiling = min(self.ceiling, float(level)) * _DECREASE_529
        self.ceiling = max(1.0, min(self.ceiling, ceiling))
        self.ssthresh = self.ceiling
        return wall and self.ceiling < level

    def on_rate_limited(self, level: int, epoch: int) -> None:
        """A 429 that no budget explained: cut multiplicatively, once per round trip."""
        if epoch != self._epoch:
            return
        self._epoch += 1
        base = min(self.ceiling, float(level))
        self.ceiling = max(1.0, base * _DECREASE_429)
        self.ssthresh = self.ceiling

    def _count_window(self, overloaded: bool) -> None:
        self._win += 1
        if overloaded:
            self._win_529s += 1
        if self._win >= 128:
            self._win //= 2
            self._win_529s //= 2
