"""A discrete-event account on a fake clock: server-side token buckets and a driver.

The server applies the API's semantics (reserve ``max_tokens`` at admission,
capped at the capacity; refund the unused part at the end; continuous refill)
and computes ``-remaining`` under one of three conventions: at admission, at
the answer with the call's own reservation still held, or after the refund.
The driver dispatches through a real :class:`Governor` whose clock is the
simulation's: no sleeps, no wall time, fully deterministic for a seed.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from llmjobs.engine import Governor

WALL0 = 1_800_000_000.0  # the fake wall clock: WALL0 + the fake monotonic clock


def wall_of(clock: list[float]) -> Callable[[], float]:
    return lambda: WALL0 + clock[0]


KINDS = (("requests", "requests"), ("input_tokens", "input-tokens"), ("output_tokens", "output-tokens"))


class ServerBucket:
    def __init__(self, limit: float, burst: float, coarse_reset: bool = False) -> None:
        self.coarse_reset = coarse_reset
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = limit * burst / 60.0
        self.level = self.capacity
        self.t = 0.0

    def at(self, now: float) -> float:
        if now > self.t:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now
        return self.level

    def headers(self, prefix: str, now: float) -> dict[str, str]:
        level = self.at(now)
        ttf = (self.capacity - level) / self.rate if level < self.capacity else 0.0
        if self.coarse_reset:  # whole seconds, rounded up, as the API and the simulator send it
            reset = datetime.fromtimestamp(math.ceil(WALL0 + now + ttf), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:  # RFC 3339 with microseconds: exact
            reset = datetime.fromtimestamp(WALL0 + now + ttf, UTC).isoformat()
        return {
            f"anthropic-ratelimit-{prefix}-limit": str(int(self.limit)),
            # whole units, floored (never below 0), as the API and the simulator send it
            f"anthropic-ratelimit-{prefix}-remaining": str(max(0, int(level + 1e-9))),
            f"anthropic-ratelimit-{prefix}-reset": reset,
        }


class Server:
    def __init__(self, *, rpm=0, itpm=0, otpm=0, burst=60.0, remaining_at="refund", coarse_reset=False) -> None:
        self.buckets = {
            name: ServerBucket(limit, burst, coarse_reset)
            for name, limit in (("requests", rpm), ("input_tokens", itpm), ("output_tokens", otpm))
            if limit
        }
        self.remaining_at = remaining_at
        self.admitted = 0
        self.rejected = 0

    def headers(self, now: float) -> dict[str, str]:
        h: dict[str, str] = {}
        for name, prefix in KINDS:
            b = self.buckets.get(name)
            if b is not None:
                h.update(b.headers(prefix, now))
        return h

    def admit(self, now: float, input_tokens: int, max_tokens: int) -> tuple[bool, int, float, dict[str, str]]:
        out = self.buckets.get("output_tokens")
        reserve = min(max_tokens, int(out.capacity)) if out else 0
        needs = {"requests": 1, "input_tokens": input_tokens, "output_tokens": reserve}
        worst = 0.0
        for name, b in self.buckets.items():
            need = min(needs[name], b.capacity)
            deficit = need - b.at(now)
            if deficit > 1e-9:
                worst = max(worst, deficit / b.rate)
        if worst > 0:
            self.rejected += 1
            return False, 0, worst, self.headers(now)
        for name, b in self.buckets.items():
            b.at(now)
            b.level -= needs[name]
        self.admitted += 1
        return True, reserve, 0.0, self.headers(now)

    def settle(self, now: float, reserve: int, actual: int) -> None:
        out = self.buckets.get("output_tokens")
        if out is not None:
            out.at(now)
            out.level = min(out.capacity, out.level + reserve - actual)


@dataclass
class Item:
    raw_input: int  # the client's local estimate
    input_tokens: int  # what the server counts
    output_tokens: int
    max_tokens: int


@dataclass
class Result:
    elapsed: float = 0.0
    done: int = 0
    rejected: int = 0
    peak_in_flight: int = 0
    limited: list = field(default_factory=list)  # the seq of each call the server rejected
    trace: list = field(default_factory=list)


def drive(
    gov: Governor,
    server: Server,
    items: list[Item],
    clock: list[float],
    *,
    latency: Callable[[random.Random], float] = lambda rng: 0.55 * (0.8 + 0.4 * rng.random()),
    forward: Callable[[random.Random], float] | None = None,
    transit: Callable[[random.Random], float] | None = None,
    seed: int = 1,
    until: float = 3600.0,
    check: Callable[[Governor, float], None] | None = None,
    sample_every: float = 0.0,
) -> Result:
    """Run ``items`` through ``gov`` against ``server``; ``clock[0]`` is the governor's clock.

    ``forward``: a request's trip to the server (default 1 ms); ``transit``: an
    answer's trip back, headers computed before it (the response's age when the
    client reads it; default none, a 429's 1 ms). Both jittered, so requests may
    reach the server, and answers the client, out of order.
    """
    rng = random.Random(seed)
    pending = list(reversed(items))
    events: list = []  # (time, seq, kind, payload)
    seq = 0
    res = Result()
    t0 = clock[0]
    next_sample = t0

    def push(at: float, kind: str, payload: tuple) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, payload))

    def arrive(at: float, ticket, item: Item) -> None:
        ok, reserve, retry, headers = server.admit(at, item.input_tokens, item.max_tokens)
        if not ok:
            res.rejected += 1
            res.limited.append(ticket.seq if hasattr(ticket, "seq") else None)
            push(at + (transit(rng) if transit else 0.001), "429", (ticket, item, retry, headers))
            return
        adm_headers = headers if server.remaining_at == "admission" else None
        push(at + latency(rng), "answer", (ticket, item, reserve, adm_headers))

    while (pending or events) and clock[0] - t0 < until:
        now = clock[0]
        # dispatch what the governor allows now
        while pending and gov.free_slots() > 0:
            item = pending[-1]
            in_cost = gov.estimate_input(item.raw_input)
            if gov.delay(in_cost, item.max_tokens, now) > 0:
                break
            pending.pop()
            ticket = gov.acquire(in_cost, item.max_tokens, now)
            if forward is None:
                arrive(now + 0.001, ticket, item)
            else:
                push(now + forward(rng), "arrive", (ticket, item))
        res.peak_in_flight = max(res.peak_in_flight, gov.in_flight)
        if check is not None:
            check(gov, now)
        if sample_every and now >= next_sample:
            res.trace.append((now - t0, gov.in_flight, gov.output_tokens.level, gov.input_factor))
            next_sample = now + sample_every
        # advance the clock to the next event or the governor's next opening
        nxt = events[0][0] if events else None
        if pending and gov.free_slots() > 0:
            in_cost = gov.estimate_input(pending[-1].raw_input)
            d = gov.delay(in_cost, pending[-1].max_tokens, now)
            if d > 0 and (nxt is None or now + d < nxt):
                nxt = now + d + 1e-6
        if nxt is None:
            break
        clock[0] = max(now, nxt)
        now = clock[0]
        while events and events[0][0] <= now:
            _t, _s, kind, payload = heapq.heappop(events)
            if kind == "arrive":
                arrive(_t, *payload)
            elif kind == "429":
                ticket, item, retry, headers = payload
                gov.on_rate_limited(ticket, retry, dict(headers), now)
                pending.append(item)
            elif kind == "answer":
                ticket, item, reserve, adm_headers = payload
                if server.remaining_at == "answer":
                    headers = server.headers(_t)
                    server.settle(_t, reserve, item.output_tokens)
                else:
                    server.settle(_t, reserve, item.output_tokens)
                    headers = adm_headers if adm_headers is not None else server.headers(_t)
                if transit is None:
                    gov.on_success(ticket, item.input_tokens, item.output_tokens, headers, now)
                    res.done += 1
                else:
                    push(_t + transit(rng), "deliver", (ticket, item, headers))
            else:  # an answer reaches the client
                ticket, item, headers = payload
                gov.on_success(ticket, item.input_tokens, item.output_tokens, headers, now)
                res.done += 1
    res.elapsed = clock[0] - t0
    return res


class Oracle:
    """A client that reads the server's true buckets: dispatches the moment the server would admit.

    The yardstick for the governor (it needs the same duck-typed interface ``drive`` uses).
    """

    class _B:
        level = 0.0

    def __init__(self, server: Server, max_concurrency: int = 512) -> None:
        self.server = server
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.input_factor = 1.0
        self.output_tokens = self._B()

    def free_slots(self) -> int:
        return self.max_concurrency - self.in_flight

    def estimate_input(self, raw: float) -> float:
        return raw

    def delay(self, in_cost: float, out_cost: float, now: float) -> float:
        worst = 0.0
        for name, b in self.server.buckets.items():
            need = {"requests": 1, "input_tokens": in_cost, "output_tokens": out_cost}[name]
            need = min(need, b.capacity)
            deficit = need - b.at(now + 0.001)
            if deficit > 1e-9:
                worst = max(worst, deficit / b.rate)
        return worst

    def acquire(self, in_cost: float, out_cost: float, now: float) -> None:
        self.in_flight += 1

    def on_success(self, *a, **k) -> None:
        self.in_flight -= 1

    def on_rate_limited(self, *a, **k) -> float:
        self.in_flight -= 1
        return 0.0
