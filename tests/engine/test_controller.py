"""Issue 17: the concurrency controller's decisions, on a fake clock."""

from __future__ import annotations

import heapq

import pytest

from llmjobs.engine import Governor


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def make(clock: FakeClock, **kw) -> Governor:
    kw.setdefault("learn", False)
    return Governor(clock=clock, wall=lambda: 1_700_000_000.0 + clock.t, **kw)


def wall_run(g: Governor, clock: FakeClock, capacity: int, until: float, rtt: float = 0.5) -> list[tuple[float, float]]:
    """A steady stream against a hard capacity wall: calls sent above `capacity` in flight get a
    529 at once, the others answer after `rtt`; free slots are refilled after every answer.
    Returns (seconds since start, ceiling) after each answer."""
    t0 = clock.t
    flight: list[tuple[float, int, object]] = []
    seq = 0
    trace = []

    def refill() -> None:
        nonlocal seq
        for _ in range(max(0, g.free_slots())):
            t = g.acquire(0, 0)
            seq += 1
            heapq.heappush(flight, (clock.t + (0.001 if t.level > capacity else rtt), seq, t))

    refill()
    while flight and clock.t - t0 < until:
        at, _, t = heapq.heappop(flight)
        clock.t = max(clock.t, at)
        if t.level > capacity:  # type: ignore[attr-defined]
            g.on_overloaded(t)  # type: ignore[arg-type]
            g.paused_until = 0.0
        else:
            g.on_success(t)  # type: ignore[arg-type]
        trace.append((clock.t - t0, g.ceiling))
        refill()
    return trace


def test_a_capacity_wall_sets_the_ceiling_just_under_it_and_holds_it():
    clock = FakeClock()
    g = make(clock, initial_concurrency=32, max_concurrency=512)
    trace = wall_run(g, clock, 200, 20.0)
    # found within two round trips (32 -> 128 -> the wall: the 529s above it come back at once)
    # and then held just under it: no multiplicative cut, no collapse, a gentle probe above
    after = [c for t, c in trace if t > 2 * 0.5 + 0.01]
    assert min(after) >= 195
    assert max(after) <= 205
    assert g.w_max in (201.0, 202.0)


def test_the_warm_up_round_trip_is_given_back_when_it_ends():
    clock = FakeClock()
    g = make(clock, initial_concurrency=32, max_concurrency=512, warmup=1.0)
    assert g.free_slots() == 1
    t = g.acquire(0, 0)
    clock.advance(0.5)
    g.on_success(t)
    assert g.ceiling == 256  # x8: the slow-start round trip the warm-up cost, and one more
    assert g.free_slots() == 256
    # only the warm-up's answer does that
    t = g.acquire(0, 0)
    g.on_success(t)
    assert g.ceiling == 256


def test_the_warm_up_gain_respects_max_concurrency():
    clock = FakeClock()
    g = make(clock, initial_concurrency=32, max_concurrency=50, warmup=1.0)
    t = g.acquire(0, 0)
    g.on_success(t)
    assert g.ceiling == 50


def test_a_slowing_api_stops_the_ceiling_growing_before_it_refuses():
    clock = FakeClock()
    g = make(clock, initial_concurrency=64, max_concurrency=4096)
    g.ssthresh = 64.0  # congestion avoidance, so each step's growth is small and visible

    def wave(rtt: float) -> float:
        tickets = [g.acquire(0, 0) for _ in range(max(0, g.free_slots()))]
        clock.advance(rtt)
        for t in tickets:
            g.on_success(t)
        return g.ceiling

    for _ in range(10):
        wave(0.5)  # a steady API: the ceiling probes upward
    before = g.ceiling
    assert before > 64
    for _ in range(5):
        wave(1.5)  # round trips three times longer: the API is queueing our calls
    assert g.ceiling == pytest.approx(before, abs=1.0)  # held (at most the first samples grew it)
    held = g.ceiling
    for _ in range(40):
        wave(0.5)  # back to normal: growth resumes
    assert g.ceiling > held


def test_rate_limit_headers_are_read_from_httpx_headers_in_one_pass():
    import httpx2

    clock = FakeClock()
    g = make(clock, learn=True)
    t = g.acquire(0, 0)
    headers = httpx2.Headers(
        {
            "Anthropic-RateLimit-Requests-Limit": "600",
            "anthropic-ratelimit-requests-remaining": "599",
            "content-type": "application/json",
        }
    )
    g.on_success(t, headers=headers)
    assert g.limits()["rpm"] == 600
    t = g.acquire(0, 0)
    g.on_success(t, headers=httpx2.Headers({"content-type": "application/json"}))  # none: nothing learned
    assert g.limits()["rpm"] == 600
