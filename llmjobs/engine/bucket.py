"""A client-side mirror of one of the API's continuously refilling budgets."""

from __future__ import annotations

__all__ = ["Bucket"]

_EPS = 1e-9


class Bucket:
    """Local estimate of one server-side token bucket (requests, input or output tokens).

    ``rate`` is units per second (limit / 60); ``None`` means the limit is not
    known yet and the bucket never delays. ``level`` may go negative (debt).
    ``debited`` is a running total of what this client has taken (minus
    refunds); a request's snapshot of it lets a later ``remaining`` header be
    carried forward past everything dispatched after that request.
    """

    __slots__ = ("_seq", "capacity", "configured", "debited", "level", "limit", "rate", "updated")

    def __init__(self, limit: float | None = None, *, capacity: float | None = None, now: float = 0.0) -> None:
        self.limit: float | None = None
        self.rate: float | None = None
        self.capacity: float = 0.0
        self.level: float = 0.0
        self.updated = now
        self.debited = 0.0
        self.configured = limit is not None
        self._seq = -1
        if limit is not None:
            self._set_limit(limit)
            # A configured limit: assume a full bucket of `capacity` (default 10 s of refill).
            self.capacity = capacity if capacity is not None else max(1.0, self.rate * 10.0)  # type: ignore[operator]
            self.level = self.capacity

    def _set_limit(self, limit: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0 if limit > 0 else None

    @property
    def known(self) -> bool:
        return self.rate is not None

    def refill(self, now: float) -> float:
        rate = self.rate
        if rate is not None:
            elapsed = now - self.updated
            if elapsed > 0:
                level = self.level + elapsed * rate
                self.level = level if level < self.capacity else self.capacity
        self.updated = now
        return self.level

    def wait_time(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` (capped at the capacity) is available; 0 if now."""
        rate = self.rate
        if rate is None:
            return 0.0
        need = cost if cost < self.capacity else self.capacity
        deficit = need - self.refill(now)
        return deficit / rate if deficit > _EPS else 0.0

    def debit(self, cost: float, now: float) -> None:
        if self.rate is not None:
            self.refill(now)
        self.level -= cost
        self.debited += cost

    def credit(self, amount: float, now: float) -> None:
        """Give back ``amount`` (a refund); negative amounts debit."""
        if self.rate is not None:
            self.refill(now)
            level = self.level + amount
            self.level = level if level < self.capacity else self.capacity
        else:
            self.level += amount
        self.debited -= amount

    def observe(
        self,
        *,
        limit: float,
        remaining: float,
        reset_in: float | None,
        sent_at: float,
        snapshot: float,
        seq: int,
        now: float,
        coarse: bool = False,
        force: bool = False,
    ) -> bool:
        """Learn from a response's ``limit``/``remaining``/``reset`` headers.

        The server may have computed ``remaining`` when it admitted the request
        (this client was then at ``sent_at`` with ``debited == snapshot``: carry
        it forward by the refill since, minus what was taken since) or when it
        answered (then it is current). The smaller of the two readings is used,
        which is right or safe under either convention. ``reset_in`` (seconds
        until the server's bucket is full; ``coarse`` when rounded up to whole
        seconds) gives a lower bound of its capacity, which may be well below
        the per-minute limit. Only a response newer (by dispatch order) than the
        last one applied corrects the level (``force``: always, e.g. after a 429).
        Returns True when it did.
        """
        if limit > 0 and (not self.configured or self.limit is None or limit < self.limit) and self.limit != limit:
            self._set_limit(limit)
        rate = self.rate
        if rate is None:
            return False
        if reset_in is not None:
            if coarse:
                reset_in -= 1.0
            bound = remaining + rate * reset_in if reset_in > 0 else remaining
        else:
            bound = remaining
        if bound > self.limit:  # type: ignore[operator]
            bound = self.limit  # type: ignore[assignment]
        if self.capacity <= 0.0 or (self.configured and self._seq < 0):
            self.capacity = bound if bound > 1.0 else 1.0
        elif bound > self.capacity:
            self.capacity = bound
        if seq < self._seq:
            return False
        first_level = self._seq < 0 and not self.configured
        self._seq = seq
        est = remaining + rate * (now - sent_at) - (self.debited - snapshot)
        if remaining < est:
            est = remaining
        if est > self.capacity:
            est = self.capacity
        if first_level or force:
            self.level = est
            self.updated = now
            return True
        # Our own ledger is exact for our own traffic; the server's reading is floored
        # to whole units and, under either timing convention, slightly pessimistic. Follow
        # it when it says there is more, or clearly less (another client, a bad estimate);
        # ignore small downward noise, which would otherwise bias the pacing low.
        pred = self.refill(now)
        tol = 0.03 * self.capacity
        if est > pred or est < pred - tol:
            self.level = est
        return True
