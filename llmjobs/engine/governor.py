"""The governor: when may the next call go out, and how many may be in flight.

It combines three things, all driven by one monotonic clock (the event loop's
by default, any callable in tests):

* three :class:`Bucket` budgets (requests, input tokens, output tokens per
  minute), configured or learned from ``anthropic-ratelimit-*`` headers and
  corrected from ``-remaining`` / ``-reset``. Output tokens are reserved at
  ``max_tokens`` and refunded to the actual usage, as the API does;
* the in-flight count and its adaptive ceiling, kept by a
  :class:`~.concurrency.ConcurrencyController` (``.concurrency``): slow start,
  the capacity wall learned from the levels 529s were sent at, a gentle probe,
  the latency gradient; see that module;
* a run-wide pause after a 429 or a 529 the ceiling does not explain, until
  ``retry-after`` or a jittered backoff that starts short (50 ms) and doubles
  while 529s keep coming without a success in between.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping

from .bucket import Bucket, Mark
from .concurrency import ConcurrencyController
from .ratelimit_headers import HEADER_NAMES as _HEADERS
from .ratelimit_headers import parse_reset as _parse_reset

__all__ = ["Governor", "Ticket"]

_FACTOR_MIN, _FACTOR_MAX = 0.25, 4.0  # the input estimate's correction factor stays in this range
_OUT_WINDOW = 512  # completed outputs remembered for the output-length prediction
_OUT_PERCENTILE = 0.9
# The first wave, sent before any answer has told the account's limits: what any account
# surely allows at once. A quarter of the lowest published tier's per-minute limits (tier 1:
# 50 RPM, 30,000 ITPM, 8,000 OTPM): a bucket may hold less than a minute of refill, and the
# wave must meet no 429 anywhere. Requests, input tokens (estimated), output tokens (reserved
# at max_tokens, as the API does). Each applies only while that limit is unknown.
FIRST_WAVE = (12, 7_500.0, 2_000.0)


class Ticket:
    """What the governor remembers about one dispatched request."""

    __slots__ = (
        "epoch",
        "in_cost",
        "in_raw",
        "level",
        "marks",
        "observed",
        "open",
        "out_cost",
        "sent_at",
        "seq",
        "wave",
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
        in_raw: float = 0.0,
        wave: bool = False,
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
        self.wave = wave  # the first call of the warm-up's first wave: streamed, its headers may end it
        # its headers, seen when they arrived (on_open): None (not seen), True (read then, the
        # warm-up ended), False (a tight budget: never read, being the admission's, stale by the
        # call's end; its answer does not end the warm-up, a later one's fresh headers do)
        self.observed: bool | None = None


class Governor:
    """Paces dispatch for one account. Share one per API key (it may serve many runs)."""

    __slots__ = (
        "_clock",
        "_out_dirty",
        "_out_p",
        "_out_pos",
        "_outputs",
        "_pause_base",
        "_pause_max",
        "_pause_seq",
        "_rng",
        "_seq",
        "_streak",
        "_wall",
        "_wave_in",
        "_wave_out",
        "concurrency",
        "input_factor",
        "input_tokens",
        "learn",
        "output_tokens",
        "paused_until",
        "requests",
        "share",
        "waited",
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
        first_wave: int | None = None,
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
        # a small first wave (FIRST_WAVE) in flight until the first answer (at most `warmup`
        # seconds), while the limits are unknown: a wave at the initial ceiling could meet them
        # with 429s; its headers tell them (its first call is streamed: on_open may end it sooner)
        self.concurrency = ConcurrencyController(
            max_concurrency=max_concurrency,
            initial_concurrency=initial_concurrency,
            warmup=warmup,
            first_wave=initial_concurrency
            if self.requests.known
            else int(FIRST_WAVE[0] if first_wave is None else min(first_wave, FIRST_WAVE[0])),
        )
        self._wave_in = 0.0  # input and output tokens the first wave holds so far
        self._wave_out = 0.0
        self.paused_until = 0.0
        self.input_factor = 1.0
        self._outputs: list[float] = []  # a ring of the latest completed output lengths
        self._out_pos = 0
        self._out_p: float | None = None
        self._out_dirty = 0
        self.waited = [0.0, 0.0, 0.0]  # seconds of dispatch delay due to each bucket (requests, input, output)
        self._rng = rng or random.Random()
        self._seq = 0
        self._streak = 0
        self._pause_seq = -1
        self._pause_base = pause_base
        self._pause_max = pause_max
        self.learn = learn
        self.share = 1.0  # of the org's limits, when processes share them (engine/shared.py)

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

    # -- the concurrency controller's state, read (and set, in tests) through the governor --
    @property
    def ceiling(self) -> float:
        return self.concurrency.ceiling

    @ceiling.setter
    def ceiling(self, value: float) -> None:
        self.concurrency.ceiling = value

    @property
    def ssthresh(self) -> float:
        return self.concurrency.ssthresh

    @ssthresh.setter
    def ssthresh(self, value: float) -> None:
        self.concurrency.ssthresh = value

    @property
    def w_max(self) -> float:
        return self.concurrency.w_max

    @w_max.setter
    def w_max(self, value: float) -> None:
        self.concurrency.w_max = value

    @property
    def in_flight(self) -> int:
        return self.concurrency.in_flight

    @property
    def peak_in_flight(self) -> int:
        return self.concurrency.peak_in_flight

    @property
    def max_concurrency(self) -> int:
        return self.concurrency.max_concurrency

    @property
    def warming(self) -> bool:
        return self.concurrency.warming

    # -- dispatch --------------------------------------------------------
    def free_slots(self) -> int:
        c = self.concurrency
        return c.free_slots(self.now()) if c.warming else int(c.ceiling) - c.in_flight

    def warmup_left(self, now: float | None = None) -> float:
        """Seconds the warm-up (the first wave in flight until the first answer) may still last."""
        c = self.concurrency
        return c.warmup_left(self.now() if now is None else now) if c.warming else 0.0

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
        c = self.concurrency
        if c.warming and c.in_flight and not self._in_first_wave(in_cost, out_cost):
            w = c.warmup_left(now)  # the first answer or headers (they wake the dispatcher), or the warm-up's end
            if w > wait:
                wait, which = w, -1
        if which >= 0:
            self.waited[which] += wait
        return wait if wait > 0 else 0.0

    def _in_first_wave(self, in_cost: float, out_cost: float) -> bool:
        """Whether a call of this cost still fits the first wave's token budget (unknown limits only)."""
        if in_cost and not self.input_tokens.known and self._wave_in + in_cost > FIRST_WAVE[1]:
            return False
        return not out_cost or self.output_tokens.known or self._wave_out + out_cost <= FIRST_WAVE[2]

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
        c = self.concurrency
        warming = c.warming
        if warming:
            self._wave_in += in_cost
            self._wave_out += out_cost
        level, epoch = c.send(now)
        self._seq += 1
        # the first call of a first wave of several is streamed: its headers may end the warm-up
        # (on_open); the rest go as asked, and their answers' headers pace the next calls as before
        wave = warming and level == 1 and c.first_wave > 1
        return Ticket(self._seq, now, level, epoch, in_cost, out_cost, marks, in_raw, wave)

    def on_open(self, ticket: Ticket, headers: Mapping[str, str] | None, now: float | None = None) -> bool:
        """The first wave's first call's response headers arrived (a 200: the API admitted
        it), an answer's time before its end. When they show no limit, or room in every
        budget for the next wave (the ceiling after the warm-up's gain, at the first wave's
        cost per call), they end the warm-up at once (x8), read now, when they were written
        (not again at the call's end). Otherwise (a tight budget, tier 1 say) the warm-up
        goes on as without them: the first answer of another first-wave call ends it, its
        headers read at its end; this call's are not read at all (the admission's, stale at
        its end), unless it is alone in the first wave. Returns True when the warm-up ended (the caller wakes its dispatcher)."""
        c = self.concurrency
        if not (ticket.wave and ticket.open and c.warming):
            return False
        if headers and self.learn:
            wave = c.in_flight if c.in_flight > 0 else 1  # calls of the first wave in flight
            room = c.warm_target() / wave  # the next wave, in first waves
            spent = (float(wave), self._wave_in, self._wave_out)
            for i in range(3):
                remaining = headers.get(_HEADERS[i][1])
                if remaining is None:
                    continue
                try:
                    tight = float(remaining) * self.share < room * spent[i]
                except ValueError:
                    tight = True
                if tight:
                    # other first-wave calls answer with fresh headers: this one's are not read;
                    # alone in its wave (a token budget held it to one), it is read at its end
                    ticket.observed = False if c.in_flight > 1 else None
                    return False
        if now is None:
            now = self.now()
        ticket.observed = True
        self.observe(ticket, headers, now)
        return c.on_open()

    # -- feedback --------------------------------------------------------
    def observe(
        self,
        ticket: Ticket,
        headers: Mapping[str, str] | None,
        now: float | None = None,
        force: bool = False,
        out_refund: float = 0.0,
        in_charged: float = 0.0,
    ) -> bool:
        """Learn limits and correct the levels from a response's rate-limit headers.

        ``out_refund``: this call's unused output reservation, not credited yet;
        ``in_charged``: the input tokens the server counted for it (0: unknown).
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
                    cost=(1.0, in_charged, ticket.out_cost)[i] * self.share,
                )
                or took
            )
        return took

    def _close(self, ticket: Ticket) -> bool:
        if not ticket.open:
            return False
        ticket.open = False
        self.concurrency.done(ticket.observed is not False)
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
        warming = self.concurrency.warming and ticket.observed is not False  # this answer ends the warm-up
        if not self._close(ticket):
            return
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
        if ticket.observed is None:
            self.observe(ticket, headers, now, out_refund=refund if refund > 0 else 0.0, in_charged=input_tokens or 0.0)
        if refund:
            self.output_tokens.credit(refund, now)
        self._streak = 0
        self.concurrency.on_success(ticket.level, now - ticket.sent_at, warming)

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
        if not modelled:
            self.concurrency.on_rate_limited(ticket.level, ticket.epoch)
        return self._pause(ticket, retry_after, now)

    def on_overloaded(self, ticket: Ticket, retry_after: float | None = None, now: float | None = None) -> float:
        """529: lower the ceiling if this concurrency was never seen to work lately; else pause briefly.

        A 529 for a call sent above every concurrency that worked lately is the
        ceiling's business (it learns the wall from it): the run goes on at once.
        Returns the pause (0 when none).
        """
        if now is None:
            now = self.now()
        if not self._close(ticket):
            return 0.0
        self._refund_all(ticket, now)
        if self.concurrency.on_overloaded(ticket.level, ticket.epoch) and retry_after is None:
            return 0.0
        return self._pause(ticket, retry_after, now)

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
