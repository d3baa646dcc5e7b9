"""A client-side mirror of one of the API's continuously refilling budgets.

The API applies each limit (requests, input tokens, output tokens per minute) as
a token bucket: it holds ``capacity`` units, refills continuously at
``limit / 60`` per second up to the capacity, and takes a request's cost when it
admits the request (``max_tokens`` for output tokens, capped at the capacity),
refunding the unused part of an output reservation when the request ends.

This module mirrors that ledger locally, exactly for this client's own traffic,
and corrects it from the ``anthropic-ratelimit-*-remaining`` / ``-reset``
headers. The API does not say *when* ``remaining`` is computed, so each bucket
runs three models side by side, one per convention:

* ``ADMISSION``: right after the server admitted the request;
* ``ANSWER``: when it answered, the request's own output reservation still held;
* ``REFUND``: after the request's unused reservation was refunded.

Each model predicts every reading under its own convention and is corrected by
its own residual; the one whose predictions have matched the server best lately
is selected (the most pessimistic one until there is evidence), and the pacing
follows the lowest of the models the readings cannot tell apart from it. A wrong
convention shows up as residuals: the server's bucket clips at its capacity (or
rejects with a 429, whose reading is unambiguous) where the wrong model does not.

``remaining`` is whole units, floored: the server's level is in ``[remaining,
remaining + 1)``. Any prediction in that interval counts as a match, but the
correction aims at its floor: a model may sit below the server, never above it
by what the rounding hides (a bucket of 10 drifted up into a 429 every ~50 calls).
And a reading is not always fresh (the answer waited in a busy event loop): the
pacing margin grows with the selected model's recent error, by at least a unit
on a small bucket.

Stability by construction: every correction compares a prediction with a
reading of the same moment, is applied with a gain below one, and every level
stays within ``[-(capacity + limit), capacity]``. Each model has its own
capacity, which only grows, never above the limit, from evidence that is a lower
bound under its convention: ``remaining`` plus the refill until ``reset``
counted from when the response was read, and at admission ``remaining`` plus
the request's own cost.
"""

from __future__ import annotations

__all__ = ["ADMISSION", "ANSWER", "CONVENTIONS", "REFUND", "Bucket"]

_EPS = 1e-9

ADMISSION, ANSWER, REFUND = 0, 1, 2
CONVENTIONS = ("admission", "answer", "refund")
_N = 3
# Share of a residual applied per reading (noise averages out, drift is followed). The
# server is often a little ahead of this client (a refund it made whose answer is still on
# its way here): a reading above the model is partly that, and taken cautiously; one below
# it is not, and taken nearly whole.
_GAIN_UP = 0.25
_GAIN_DOWN = 0.75
_SCORE_DECAY = 0.9  # exponential average of each model's absolute residual
_SWITCH = 0.6  # switch models when the other's average residual is below this share of ours...
_SWITCH_MIN = 0.01  # ...and lower by at least this share of the capacity

# a request's mark: each model's level right after its debit, their corrections so far, ``debited`` then
Mark = tuple[tuple[float, ...], tuple[float, ...], float]


class Bucket:
    """Local estimate of one server-side token bucket (requests, input or output tokens).

    ``rate`` is units per second (limit / 60); ``None`` means the limit is not
    known yet and the bucket never delays. ``level`` (the selected model's) may
    go negative (debt). ``debited`` is a running total of what this client has
    taken (minus refunds).
    """

    __slots__ = (
        "_corr",
        "_observed",
        "_pace",
        "_seq",
        "caps",
        "configured",
        "convention",
        "debited",
        "levels",
        "limit",
        "rate",
        "scores",
        "updated",
    )

    def __init__(self, limit: float | None = None, *, capacity: float | None = None, now: float = 0.0) -> None:
        self.limit: float | None = None
        self.rate: float | None = None
        self.caps: list[float] = [0.0] * _N  # each model's capacity, from the evidence valid under its convention
        self.levels: list[float] = [0.0] * _N
        self.scores: list[float] = [0.0] * _N
        self._corr: list[float] = [0.0] * _N  # cumulative corrections applied to each model
        self.convention = REFUND
        self.updated = now
        self.debited = 0.0
        self.configured = limit is not None
        self._seq = -1
        self._observed = 0
        self._pace = (True, True, True)  # which models are not clearly worse than the selected one
        if limit is not None:
            rate = self._set_limit(limit)
            # A configured limit: assume a full bucket of `capacity` (default 10 s of refill).
            self.capacity = capacity if capacity is not None else max(1.0, (rate or 0.0) * 10.0)
            self.levels = [self.capacity] * _N

    def _set_limit(self, limit: float) -> float | None:
        self.limit = limit
        self.rate = limit / 60.0 if limit > 0 else None
        return self.rate

    # -- the selected model ------------------------------------------------------
    @property
    def capacity(self) -> float:
        """The selected model's capacity (a lower bound of the server's, only grows)."""
        return self.caps[self.convention]

    @capacity.setter
    def capacity(self, value: float) -> None:
        # every model's, in proportion (a share of the org's limits scales them all)
        old = self.caps[self.convention]
        if old > 0.0 and value > 0.0:
            ratio = value / old
            self.caps = [c * ratio for c in self.caps]
        else:
            self.caps = [value] * _N

    @property
    def level(self) -> float:
        return self.levels[self.convention]

    @level.setter
    def level(self, value: float) -> None:
        self.levels = [value] * _N

    @property
    def known(self) -> bool:
        return self.rate is not None

    @property
    def convention_name(self) -> str:
        return CONVENTIONS[self.convention]

    def _floor(self) -> float:
        return -(self.capacity + (self.limit or 0.0))

    # -- the ledger ----------------------------------------------------------------
    def refill(self, now: float) -> float:
        rate = self.rate
        if rate is not None:
            elapsed = now - self.updated
            if elapsed > 0:
                caps = self.caps
                add = elapsed * rate
                levels = self.levels
                for i in range(_N):
                    level = levels[i] + add
                    cap = caps[i]
                    levels[i] = level if level < cap else cap
        self.updated = now
        return self.levels[self.convention]

    def wait_time(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` (capped at the capacity) is available; 0 if now."""
        rate = self.rate
        if rate is None:
            return 0.0
        # a margin of twice the selected model's recent error (at most 5% of the capacity):
        # a call sent the moment the model says "enough" must not meet a 429
        margin = 2.0 * self.scores[self.convention]
        cap = self.capacity
        most = 0.05 * cap if cap > 20.0 else 1.0  # (at least one unit: the readings are whole units)
        if margin > most:
            margin = most
        need = cost + margin
        if need > cap:
            need = cap
        level = self.refill(now)
        # the most pessimistic of the models the readings do not tell apart from it
        levels = self.levels
        pace = self._pace
        for i in range(_N):
            if pace[i] and levels[i] < level:
                level = levels[i]
        deficit = need - level
        return deficit / rate if deficit > _EPS else 0.0

    def debit(self, cost: float, now: float) -> Mark:
        """Take ``cost`` now; returns the mark a later reading of this request is compared with."""
        if self.rate is not None:
            self.refill(now)
        levels = self.levels
        floor = self._floor() if self.rate is not None else float("-inf")
        for i in range(_N):
            level = levels[i] - cost
            levels[i] = level if level > floor else floor
        self.debited += cost
        return (tuple(levels), tuple(self._corr), self.debited)

    def credit(self, amount: float, now: float) -> None:
        """Give back ``amount`` (a refund); negative amounts debit."""
        levels = self.levels
        if self.rate is not None:
            self.refill(now)
            caps = self.caps
            floor = self._floor()
            for i in range(_N):
                level = levels[i] + amount
                cap = caps[i]
                levels[i] = cap if level > cap else (level if level > floor else floor)
        else:
            for i in range(_N):
                levels[i] += amount
        self.debited -= amount

    # -- learning from headers -------------------------------------------------------
    def observe(
        self,
        *,
        limit: float,
        remaining: float,
        reset_in: float | None,
        now: float,
        sent_at: float | None = None,
        snapshot: float | None = None,
        seq: int = 0,
        coarse: bool = False,
        force: bool = False,
        mark: Mark | None = None,
        own_refund: float = 0.0,
        cost: float = 0.0,
        age: float = 0.0,
    ) -> bool:
        """Learn from a response's ``limit``/``remaining``/``reset`` headers.

        ``mark`` is what :meth:`debit` returned for this request (else ``sent_at``
        and ``snapshot``, the value of ``debited`` after its debit, give an
        approximate one). ``own_refund`` is what this request will give back and
        has not yet been credited (its unused output reservation): the server
        still holds it under the ``ADMISSION`` and ``ANSWER`` conventions.
        ``remaining`` is whole units, floored: the server's level was in
        ``[remaining, remaining + 1)``. ``reset_in`` (seconds until the server's
        bucket is full; ``coarse`` when rounded up to whole seconds) gives a lower
        bound of its capacity, which may be well below the per-minute limit;
        ``cost`` is what the server took for this request when it admitted it (0:
        unknown), another one under the ``ADMISSION`` convention, kept below what
        ``reset`` allows that long ago (``age``: since the request was sent). ``force``: a
        429's reading, taken with nothing of this request held: it sets every
        model. Only a response newer (by dispatch order) than the last one applied
        corrects the level. Returns True when it did.
        """
        if limit > 0 and (not self.configured or self.limit is None or limit < self.limit) and self.limit != limit:
            self._set_limit(limit)
        rate = self.rate
        top = self.limit
        if rate is None or top is None:
            return False
        if remaining < 0:
            remaining = 0.0
        # Capacity evidence: lower bounds only, since the capacity never shrinks. The server
        # computed `reset` when it computed `remaining`, at some moment between this request's
        # dispatch and now; counted from now, its refill is a lower bound whatever that moment
        # was. (Counting it from the dispatch, as a reading at admission would allow, also
        # counts the request's trip to the server: on a loaded machine a capacity of 10
        # became 16 to 18, for good.) A whole-second `reset` is rounded up: one second less.
        bound = remaining
        # At admission, this request's cost had just been taken from a level that never
        # exceeds the capacity (and was at least `remaining` after it): `remaining + cost`,
        # for that model only. Less one unit, and no more than `reset` counted from the
        # dispatch allows: under another convention (a full bucket reads its capacity) it
        # would overshoot by the cost.
        by_cost = 0.0
        if reset_in is not None:
            if cost > 1.0 and remaining > 0 and not force:
                by_cost = remaining + cost - 1.0
            most = remaining + 1.0 + rate * (reset_in + age if reset_in > 0 else age)
            if by_cost > most:
                by_cost = most
            if coarse:
                reset_in -= 1.0
            if reset_in > 0:
                bound += rate * reset_in
        first = self._observed == 0
        caps = self.caps
        for i in range(_N):
            b = bound
            if i == ADMISSION and by_cost > b:
                b = by_cost
            if b > top:
                b = top
            if caps[i] <= 0.0 or (self.configured and first):
                caps[i] = b if b > 1.0 else 1.0
            elif b > caps[i]:
                caps[i] = b
        self.refill(now)
        levels = self.levels
        if force:
            # nothing of this request is held: the reading is the level now, under any convention
            for i in range(_N):
                pred = levels[i]
                self._score(i, _residual(remaining, pred, 1.0))
                target = remaining if remaining > 0 else (pred if pred < 0 else 0.0)
                self._set(i, target)
            self._observed += 1
            self._select()
            return True
        # what each model says the server read, under its own convention
        preds = [0.0] * _N
        if mark is not None:
            marked, corr, then = mark
            preds[ADMISSION] = marked[ADMISSION] + (self._corr[ADMISSION] - corr[ADMISSION])
            since = self.debited - then
        else:
            since = self.debited - snapshot if snapshot is not None else 0.0
            elapsed = now - sent_at if sent_at is not None else 0.0
            preds[ADMISSION] = levels[ADMISSION] - rate * elapsed + since
        preds[ANSWER] = levels[ANSWER]
        pred_ref = levels[REFUND] + own_refund
        cap = caps[REFUND]
        preds[REFUND] = pred_ref if pred_ref < cap else cap
        if first:
            # no history: each model takes the reading as its convention says, and the
            # most pessimistic one drives the pacing until the readings tell them apart.
            # Nor is there any idea yet of when the reading was taken: the server may not
            # have counted what this client sent after this request (a blind first wave,
            # whose first answer was written before the rest arrived, on a cold start)
            low = remaining - since
            for i in range(_N):
                value = levels[i] + (remaining - preds[i])
                self._set(i, value if value < low else low)
            self.convention = min(range(_N), key=lambda i: (levels[i], -i))
            self._observed = 1
            self._seq = seq
            return True
        # A model is as good as its predictions fall inside the reading's interval, and is
        # corrected toward the interval's floor: a model anywhere inside it could sit up to
        # one unit above the server for good, no reading would say so, and a call sent on it
        # meets a 429 (a tight bucket of 10 drifted into one every ~50 calls). (Inlined
        # `_residual` with widths 1 and 0: this runs for every answer.)
        scores = self.scores
        fixes = [0.0] * _N
        for i in range(_N):
            d = remaining - preds[i]
            if d > 0.0:  # below the floor (debt reads 0: no floor then)
                err = fix = d if remaining > 0 else 0.0
            else:  # at or above the floor; a miss only beyond the interval
                fix = d
                err = -1.0 - d if d < -1.0 else 0.0
            scores[i] = _SCORE_DECAY * scores[i] + (1.0 - _SCORE_DECAY) * err
            fixes[i] = fix
        self._observed += 1
        self._select()
        if seq < self._seq:
            return False
        self._seq = seq
        for i in range(_N):
            r = fixes[i]
            if r:
                self._set(i, levels[i] + (_GAIN_UP if r > 0 else _GAIN_DOWN) * r)
        return True

    def _set(self, i: int, value: float) -> None:
        cap = self.caps[i]
        floor = self._floor()
        value = cap if value > cap else (value if value > floor else floor)
        self._corr[i] += value - self.levels[i]
        self.levels[i] = value

    def _score(self, i: int, residual: float) -> None:
        err = residual if residual >= 0 else -residual
        self.scores[i] = _SCORE_DECAY * self.scores[i] + (1.0 - _SCORE_DECAY) * err

    def _select(self) -> None:
        scores = self.scores
        cur = self.convention
        best = min(range(_N), key=lambda i: (scores[i], -i))
        if (
            best != cur
            and scores[best] < _SWITCH * scores[cur]
            and scores[cur] - scores[best] > _SWITCH_MIN * self.capacity
        ):
            self.convention = cur = best
        most = 2.0 * scores[cur]
        if most < 1.0:
            most = 1.0  # whole units: within one, the readings cannot tell models apart
        self._pace = (scores[0] <= most, scores[1] <= most, scores[2] <= most)


def _residual(remaining: float, pred: float, width: float) -> float:
    """Reading minus prediction, 0 when the prediction is in ``[remaining, remaining + width]``.

    The server floors its level to whole units (``width`` 1 is the reading's whole
    interval, 0 its floor) and never reports below 0 (debt reads 0: no lower end).
    """
    lo = remaining if remaining > 0 else float("-inf")
    hi = remaining + width
    if pred < lo:
        return lo - pred
    if pred > hi:
        return hi - pred
    return 0.0
