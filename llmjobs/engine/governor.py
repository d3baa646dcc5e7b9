"""The governor: when may the next call go out, and how many may be in flight.

It combines three things, all driven by one monotonic clock (the event loop's
by default, any callable in tests):

* three :class:`Bucket` budgets (requests, input tokens, output tokens per
  minute), configured or learned from ``anthropic-ratelimit-*`` headers and
  corrected from ``-remaining`` / ``-reset``. Output tokens are reserved at
  ``max_tokens`` and refunded to the actual usage, as the API does;
* an adaptive in-flight ceiling between 1 and ``max_concurrency``: slow start
  (x4 per round trip: a capacity 529 comes back at once, so overshoot is cheap),
  multiplicative decrease on 429 (x0.7); on a capacity 529 the ceiling goes to
  just under the lowest in-flight level that met a 529 (the wall, learned from
  ``Ticket.level``) rather than a multiplicative cut, at most once per round
  trip, then a slow probe above it. The warm-up's first answer, when it ends
  the warm-up, grants the slow-start round trip it cost and one more (x8).
  Latency is a second signal (a gradient, as in Netflix's concurrency-limits):
  while the recent round trips are much slower than the long-run ones, the
  ceiling stops growing, so a slowing API is seen before it refuses. A 529
  counts as a capacity signal only when most calls
  sent above every concurrency that worked lately get one, or when 529s are far
  above chance (>= 1 in 8 lately): random overloads (a few percent at any level)
  never collapse the ceiling;
* a run-wide pause after a 429 or 529, until ``retry-after`` or a jittered
  backoff that starts short (50 ms) and doubles while 529s keep coming without
  a success in between.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping

from .bucket import Bucket, Mark
from .ratelimit_headers import HEADER_NAMES as _HEADERS
from .ratelimit_headers import parse_reset as _parse_reset

__all__ = ["Governor", "Ticket"]

_SLOW_START_GAIN = 3.0  # ceiling += this per success in slow start (x4 per round trip; a 529 comes back at once)
_PROBE_MIN = 4.0  # per round trip below the last overload level (less a margin): at least this, or the gap
_PROBE_SLOW = 0.5  # per round trip near or above it
_DECREASE_529 = 0.9  # only for 529s far above chance at any level (not a wall above what worked)
_WALL_MARGIN = 0.01  # the ceiling after a capacity wall: this fraction (and one call) under its level
_WARM_GAIN = 8.0  # the warm-up's first answer: ceiling x this (its round trip and one more; 529s come back at once)
_RTT_SHORT, _RTT_LONG = 0.1, 0.005  # EMA weights of the short- and long-run round-trip times
_RTT_SLOW = 2.0  # short/long above this: the API is slowing down, stop growing
_RTT_MIN_SAMPLES = 32
_DECREASE_429 = 0.7
_FACTOR_MIN, _FACTOR_MAX = 0.25, 4.0  # the input estimate's correction factor stays in this range
_OUT_WINDOW = 512  # completed outputs remembered for the output-length prediction
_OUT_PERCENTILE = 0.9


class Ticket:
    """What the governor remembers about one dispatched request."""

    __slots__ = (
        "epoch",
        "in_cost",
        "in_raw",
        "level",
        "marks",
        "open",
        "out_cost",
        "probe",
        "sent_at",
        "seq",
    )

    def __init__(
        self,
        seq: int,
        sent_at: float,
        level: int,
        epoch: int,
        in_cost: float,
        out_cost: float,
        marks: tuple[Mark, Mark, Mark],
        probe: bool = False,
        in_raw: float = 0.0,
    ) -> None:
        self.seq = seq
        self.sent_at = sent_at
        self.level = level
        self.epoch = epoch
        self.in_cost = in_cost  # input tokens debited (the raw estimate times the factor of the time)
        self.in_raw = in_raw  # the raw local estimate: what usage is compared with
        self.out_cost = out_cost
        self.marks = marks  # each bucket's models right after this debit
        self.open = True
        self.probe = probe  # sent at a concurrency above any that worked lately


class Governor:
    """Paces dispatch for one account. Share one per API key (it may serve many runs)."""

    __slots__ = (
        "_clock",
        "_epoch",
        "_out_dirty",
        "_out_p",
        "_out_pos",
        "_outputs",
        "_pause_base",
        "_pause_max",
        "_pause_seq",
        "_probe_529s",
        "_probe_min",
        "_probes",
        "_rng",
        "_rtt_long",
        "_rtt_n",
        "_rtt_short",
        "_seq",
        "_streak",
        "_succ_level",
        "_wall",
        "_warm_until",
        "_warmup",
        "_win",
        "_win_529s",
        "ceiling",
        "in_flight",
        "input_factor",
        "input_tokens",
        "learn",
        "max_concurrency",
        "output_tokens",
        "paused_until",
        "peak_in_flight",
        "requests",
        "share",
        "ssthresh",
        "w_max",
        "waited",
        "warming",
    )

    def __init__(
        self,
        *,
        rpm: float | None = None,
        itpm: float | None = None,
        otpm: float | None = None,
        max_concurrency: int = 512,
        initial_concurrency: int = 32,
        pause_base: float = 0.05,
        pause_max: float = 30.0,
        learn: bool = True,
        warmup: float = 0.0,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall  # epoch seconds, to read the absolute `-reset` timestamps
        now = self.now()
        self.requests = Bucket(rpm, now=now)
        self.input_tokens = Bucket(itpm, now=now)
        self.output_tokens = Bucket(otpm, now=now)
        self.max_concurrency = max_concurrency
        self.ceiling = float(max(1, min(initial_concurrency, max_concurrency)))
        self.ssthresh = float(max_concurrency)
        self.w_max = 0.0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.paused_until = 0.0
        self.input_factor = 1.0
        self._outputs: list[float] = []  # a ring of the latest completed output lengths
        self._out_pos = 0
        self._out_p: float | None = None
        self._out_dirty = 0
        self.waited = [0.0, 0.0, 0.0]  # seconds of dispatch delay due to each bucket (requests, input, output)
        self._rng = rng or random.Random()
        self._seq = 0
        self._epoch = 0
        self._succ_level = 0.0
        self._streak = 0
        self._pause_seq = -1
        self._probes = 0  # probe calls resolved since the last cut (success or 529)
        self._probe_529s = 0
        self._probe_min = 0  # the lowest level of a probe that met a 529 since the last cut (0: none)
        self._rtt_short = 0.0
        self._rtt_long = 0.0
        self._rtt_n = 0
        self._win = 0  # all calls resolved lately (success or 529), and the 529s among them
        self._win_529s = 0
        self._pause_base = pause_base
        self._pause_max = pause_max
        self.learn = learn
        self.share = 1.0  # of the org's limits, when processes share them (engine/shared.py)
        # one call in flight until the first answer (at most `warmup` seconds), while the
        # limits are unknown: a first wave at the initial ceiling could only meet them with 429s
        self.warming = warmup > 0
        self._warmup = warmup
        self._warm_until: float | None = None

    # -- clock -----------------------------------------------------------
    def now(self) -> float:
        """The governor's clock: the injected one, else the running loop's (monotonic)."""
        clock = self._clock
        if clock is not None:
            return clock()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    # -- dispatch --------------------------------------------------------
    def free_slots(self) -> int:
        if self.warming and self.warmup_left() > 0:
            return 1 - self.in_flight
        return int(self.ceiling) - self.in_flight

    def warmup_left(self, now: float | None = None) -> float:
        """Seconds the warm-up (one call in flight until the first answer) may still last."""
        if not self.warming:
            return 0.0
        if self._warm_until is None:
            return self._warmup
        left = self._warm_until - (self.now() if now is None else now)
        if left <= 0:
            self.warming = False
            return 0.0
        return left

    def estimate_input(self, raw: float) -> float:
        return raw * self.input_factor

    def delay(self, in_cost: float, out_cost: float, now: float | None = None) -> float:
        """Seconds until a call of this cost may go out (pause and budgets; not the ceiling)."""
        if now is None:
            now = self.now()
        wait = self.paused_until - now
        which = -1
        w = self.requests.wait_time(1.0, now)
        if w > wait:
            wait, which = w, 0
        if in_cost:
            w = self.input_tokens.wait_time(in_cost, now)
            if w > wait:
                wait, which = w, 1
        if out_cost:
            w = self.output_tokens.wait_time(out_cost, now)
            if w > wait:
                wait, which = w, 2
        if which >= 0:
            self.waited[which] += wait
        return wait if wait > 0 else 0.0

    def acquire(self, in_cost: float, out_cost: float, now: float | None = None, in_raw: float | None = None) -> Ticket:
        """Record a dispatch now: debit the budgets and count it in flight.

        ``in_cost`` is the input estimate to debit (``estimate_input(in_raw)``);
        ``in_raw`` the raw local estimate (default: ``in_cost`` / the factor now).
        """
        if now is None:
            now = self.now()
        if in_raw is None:
            in_raw = in_cost / self.input_factor
        cap = self.output_tokens.capacity
        if out_cost > cap > 0.0:
            out_cost = cap  # the API reserves at most the bucket's capacity
        marks = (
            self.requests.debit(1.0, now),
            self.input_tokens.debit(in_cost, now),
            self.output_tokens.debit(out_cost, now),
        )
        if self.warming and self._warm_until is None:
            self._warm_until = now + self._warmup
        self.in_flight = level = self.in_flight + 1
        if level > self.peak_in_flight:
            self.peak_in_flight = level
        self._seq += 1
        return Ticket(self._seq, now, level, self._epoch, in_cost, out_cost, marks, level > self._succ_level, in_raw)

    # -- feedback --------------------------------------------------------
    def observe(
        self,
        ticket: Ticket,
        headers: Mapping[str, str] | None,
        now: float | None = None,
        force: bool = False,
        out_refund: float = 0.0,
    ) -> bool:
        """Learn limits and correct the levels from a response's rate-limit headers.

        ``out_refund``: this call's unused output reservation, not credited yet.
        Returns True when a known budget took the reading.
        """
        if not headers or not self.learn:
            return False
        # (A one-pass read of httpx's raw header pairs was tried for CPU, and let a tight
        # RPM bucket overrun every ~11 calls in test_tight_rpm_is_learned_and_paced: the
        # plain Mapping lookups stay until the cause is understood.)
        took = False
        if now is None:
            now = self.now()
        wall = self._wall()
        for i, bucket in enumerate((self.requests, self.input_tokens, self.output_tokens)):
            lim_h, rem_h, reset_h = _HEADERS[i]
            limit = headers.get(lim_h)
            if limit is None:
                continue
            remaining = headers.get(rem_h)
            if remaining is None:
                continue
            try:
                limit_f = float(limit) * self.share
                remaining_f = float(remaining) * self.share
            except ValueError:
                continue
            reset_in, coarse = _parse_reset(headers.get(reset_h), wall)
            took = (
                bucket.observe(
                    limit=limit_f,
                    remaining=remaining_f,
                    reset_in=reset_in,
                    coarse=coarse,
                    now=now,
                    seq=ticket.seq,
                    force=force,
                    mark=ticket.marks[i],
                    own_refund=out_refund if i == 2 else 0.0,
                    age=now - ticket.sent_at,
                )
                or took
            )
        return took

    def _close(self, ticket: Ticket) -> bool:
        if not ticket.open:
            return False
        ticket.open = False
        self.warming = False
        self.in_flight -= 1
        return True

    def on_success(
        self,
        ticket: Ticket,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        headers: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> None:
        """A call succeeded: correct from headers, refund unused output, grow the ceiling."""
        if now is None:
            now = self.now()
        warming = self.warming
        if not self._close(ticket):
            return
        if warming and self.ceiling < self.ssthresh:
            # the warm-up held one call for a round trip: give that round trip's slow start back
            c = self.ceiling * _WARM_GAIN
            self.ceiling = c if c < self.max_concurrency else float(self.max_concurrency)
        if input_tokens is not None:
            # the server charged the real input at admission: keep the ledger honest, and
            # learn how the raw local estimate compares with its count (like with like,
            # bounded: a factor can never run away, whatever the order of answers)
            if ticket.in_cost:
                self.input_tokens.credit(ticket.in_cost - input_tokens, now)
            if ticket.in_raw > 0:
                ratio = input_tokens / ticket.in_raw
                ratio = _FACTOR_MIN if ratio < _FACTOR_MIN else (_FACTOR_MAX if ratio > _FACTOR_MAX else ratio)
                factor = self.input_factor + 0.05 * (ratio - self.input_factor)
                self.input_factor = (
                    _FACTOR_MIN if factor < _FACTOR_MIN else (_FACTOR_MAX if factor > _FACTOR_MAX else factor)
                )
        refund = 0.0
        if output_tokens is not None:
            refund = ticket.out_cost - output_tokens
            self._record_output(output_tokens)
        # read the headers before crediting the refund: the models of the conventions
        # under which the server still held it need the level without it
        self.observe(ticket, headers, now, out_refund=refund if refund > 0 else 0.0)
        if refund:
            self.output_tokens.credit(refund, now)
        self._streak = 0
        level = ticket.level
        if ticket.probe:
            self._count_probe(False)
        self._count_window(False)
        succ = self._succ_level - 0.01
        self._succ_level = level if level > succ else succ
        ceiling = self.ceiling
        # the latency gradient: round trips of late much slower than in the long run mean the
        # API queues our calls; hold the ceiling (a 529 or a recovery will follow)
        rtt = now - ticket.sent_at
        n = self._rtt_n
        if n:
            self._rtt_short += _RTT_SHORT * (rtt - self._rtt_short)
            w = _RTT_LONG if n > 200 else 1.0 / (n + 1)
            self._rtt_long += w * (rtt - self._rtt_long)
        else:
            self._rtt_short = self._rtt_long = rtt
        self._rtt_n = n + 1
        if n >= _RTT_MIN_SAMPLES and self._rtt_short > _RTT_SLOW * self._rtt_long:
            return
        # Grow only while the ceiling is actually in use. All int(ceiling) slots
        # in use counts too: with a small fractional ceiling (say 2.9, two slots),
        # 80% of it could never be reached and the ceiling would stick there.
        in_use = 0.8 * ceiling
        if in_use > int(ceiling):
            in_use = int(ceiling)
        if self.in_flight + 1 >= in_use:
            if ceiling < self.ssthresh:
                ceiling += _SLOW_START_GAIN
            else:
                w_max = self.w_max
                target = w_max - (0.02 * w_max if w_max > 50.0 else 1.0)
                if ceiling < target:
                    gain = target - ceiling  # back near the last overload level within a round trip
                    if gain < _PROBE_MIN:
                        gain = _PROBE_MIN
                else:
                    gain = _PROBE_SLOW
                ceiling += gain / ceiling
            self.ceiling = ceiling if ceiling < self.max_concurrency else float(self.max_concurrency)

    def on_failure(self, ticket: Ticket, now: float | None = None) -> None:
        """A call failed for a reason that says nothing about load (500, timeout, 4xx...)."""
        if now is None:
            now = self.now()
        if not self._close(ticket):
            return
        if ticket.out_cost:
            self.output_tokens.credit(ticket.out_cost, now)

    def _refund_all(self, ticket: Ticket, now: float) -> None:
        self.requests.credit(1.0, now)
        if ticket.in_cost:
            self.input_tokens.credit(ticket.in_cost, now)
        if ticket.out_cost:
            self.output_tokens.credit(ticket.out_cost, now)

    def _pause(self, ticket: Ticket, retry_after: float | None, now: float) -> float:
        # calls sent before the current pause began are one event, not a streak
        if ticket.seq > self._pause_seq:
            self._streak += 1
            self._pause_seq = self._seq
        if retry_after is not None and retry_after > 0:
            pause = retry_after
        else:
            pause = self._pause_base * (2 ** min(self._streak - 1, 16))
            if pause > self._pause_max:
                pause = self._pause_max
            pause *= 0.5 + 0.5 * self._rng.random()
        until = now + pause
        if until > self.paused_until:
            self.paused_until = until
        return pause

    def on_rate_limited(
        self,
        ticket: Ticket,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> float:
        """429: the server did not admit the call. Pause the run, lower the ceiling. Returns the pause."""
        if now is None:
            now = self.now()
        if not self._close(ticket):
            return 0.0
        self._refund_all(ticket, now)
        modelled = False
        if headers:
            # `remaining` on a 429 is the level now, without this call (refunded above)
            modelled = self.observe(ticket, headers, now, force=True)
        # A 429 says a budget ran out, not that too many calls are in flight. When its
        # headers corrected the budget's model, that model paces the next calls; only an
        # unexplained 429 (no usable headers) lowers the in-flight ceiling.
        if not modelled and ticket.epoch == self._epoch:
            self._epoch += 1
            base = min(self.ceiling, float(ticket.level))
            self.ceiling = max(1.0, base * _DECREASE_429)
            self.ssthresh = self.ceiling
        return self._pause(ticket, retry_after, now)

    def on_overloaded(self, ticket: Ticket, retry_after: float | None = None, now: float | None = None) -> float:
        """529: pause briefly; lower the ceiling if this concurrency was never seen to work lately."""
        if now is None:
            now = self.now()
        if not self._close(ticket):
            return 0.0
        self._refund_all(ticket, now)
        level = ticket.level
        # A 529 means "too many in flight" only if it came above every concurrency that
        # worked lately, and most calls sent up there get one (at a capacity wall all of
        # them do; random overloads hit a few percent at any level).
        wall = False
        if ticket.probe and level > self._succ_level:
            self._count_probe(True)
            if self._probe_min == 0 or level < self._probe_min:
                self._probe_min = level
            wall = self._probe_529s >= 3 and 2 * self._probe_529s >= self._probes
        self._count_window(True)
        # ... or, at any level, when 529s are far more frequent than chance (>= 1 in 8 lately)
        wall = wall or (self._win_529s >= 8 and 8 * self._win_529s >= self._win)
        if wall and ticket.epoch == self._epoch:
            self._epoch += 1
            lowest = self._probe_min
            self._probes = self._probe_529s = self._win = self._win_529s = self._probe_min = 0
            self.w_max = float(level)
            if lowest and lowest > self._succ_level:
                # a wall: calls above `lowest - 1` in flight meet 529s; sit just under it
                self.w_max = float(lowest)
                ceiling = float(lowest) - 1.0 - _WALL_MARGIN * lowest
            else:
                ceiling = min(self.ceiling, float(level)) * _DECREASE_529
            self.ceiling = max(1.0, min(self.ceiling, ceiling))
            self.ssthresh = self.ceiling
        return self._pause(ticket, retry_after, now)

    def _count_window(self, overloaded: bool) -> None:
        self._win += 1
        if overloaded:
            self._win_529s += 1
        if self._win >= 128:
            self._win //= 2
            self._win_529s //= 2

    def _count_probe(self, overloaded: bool) -> None:
        self._probes += 1
        if overloaded:
            self._probe_529s += 1
        if self._probes >= 64:  # a sliding-ish window
            self._probes //= 2
            self._probe_529s //= 2

    def release(self, ticket: Ticket, now: float | None = None) -> None:
        """The call was cancelled: just give back its slot and reservation."""
        self.on_failure(ticket, now)

    # -- output lengths ------------------------------------------------------
    def _record_output(self, tokens: float) -> None:
        outs = self._outputs
        if len(outs) < _OUT_WINDOW:
            outs.append(float(tokens))
        else:
            outs[self._out_pos] = float(tokens)
            self._out_pos = (self._out_pos + 1) % _OUT_WINDOW
        self._out_dirty += 1

    @property
    def predicted_output(self) -> float | None:
        """A high percentile (p90) of the latest completed outputs, in tokens; None before any.

        For planning and the ETA only: output is always reserved at ``max_tokens``.
        """
        outs = self._outputs
        if not outs:
            return None
        if self._out_p is None or self._out_dirty >= 16 or (len(outs) < 64 and self._out_dirty):
            data = sorted(outs)
            self._out_p = data[min(len(data) - 1, int(len(data) * _OUT_PERCENTILE))]
            self._out_dirty = 0
        return self._out_p

    def observed_outputs(self) -> list[float]:
        """The latest completed output lengths (at most the last 512), oldest first not guaranteed."""
        return list(self._outputs)

    @property
    def binding(self) -> str | None:
        """The budget that held dispatch back the longest ("requests", "input_tokens",
        "output_tokens"), or None if none did."""
        w = self.waited
        i = max(range(3), key=lambda k: w[k])
        return ("requests", "input_tokens", "output_tokens")[i] if w[i] > 0 else None

    def apply_grant(self, share: float, pause: float = 0.0) -> None:
        """Take ``share`` of the org's limits and its pause (``llmjobs.engine.shared``)."""
        from .shared import apply_grant

        apply_grant(self, share, pause)

    # -- introspection -----------------------------------------------------
    def limits(self) -> dict[str, float | None]:
        return {
            "rpm": self.requests.limit,
            "itpm": self.input_tokens.limit,
            "otpm": self.output_tokens.limit,
        }
