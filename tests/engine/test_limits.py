"""The governor against an account's token buckets, on a fake clock (tests/engine/fakeserver.py).

Issue 9: under an input-token limit with hundreds of calls in flight and usage
that differs from the local estimate, the input-factor correction fed on itself
(it ran away toward 0, then to 1e305) and the run stalled; under an
output-token limit with a generous ``max_tokens`` the governor took
``-remaining`` at face value and ran 3.6x slower than it could. The server here
computes ``-remaining`` at admission, at the answer (own reservation held) or
after the refund; the governor must be right under each.
"""

from __future__ import annotations

import math
import random

import pytest

from llmjobs.engine import Governor
from llmjobs.engine.bucket import Bucket

from .fakeserver import Item, Oracle, Server, drive, wall_of

CONVENTIONS = ("admission", "answer", "refund")


def make_gov(clock: list[float], **kw) -> Governor:
    kw.setdefault("rng", random.Random(1))
    kw.setdefault("warmup", 5.0)
    kw.setdefault("wall", wall_of(clock))
    return Governor(clock=lambda: clock[0], **kw)


def sane(g: Governor, now: float) -> None:
    assert 0.25 <= g.input_factor <= 4.0
    for b in (g.requests, g.input_tokens, g.output_tokens):
        for level, cap in zip(b.levels, b.caps, strict=True):  # each model within its own capacity
            assert math.isfinite(level)
            if b.known:
                assert -(b.capacity + (b.limit or 0)) <= level <= cap + 1e-6
                assert 0 < cap <= (b.limit or 0) + 1e-6
    assert 1.0 <= g.ceiling <= g.max_concurrency


# -- 1. the input-token stall ---------------------------------------------------------------


def short_items(n: int, seed: int = 3) -> list[Item]:
    rng = random.Random(seed)
    # the local estimate says 40; the server counts 30 to 90 (mean 60)
    return [Item(40, rng.randint(30, 90), rng.randint(20, 80), 128) for _ in range(n)]


def test_input_factor_is_stable_with_hundreds_in_flight_and_a_biased_estimate():
    clock = [1000.0]
    g = make_gov(clock)
    server = Server(itpm=2_000_000, burst=60)
    res = drive(g, server, short_items(6000), clock, until=300, check=sane)
    assert res.done == 6000
    assert res.rejected == 0
    assert res.peak_in_flight >= 300  # hundreds in flight: the regime of the runaway
    assert g.input_factor == pytest.approx(1.5, rel=0.1)  # 60 counted per 40 estimated
    # latency-bound (512 in flight, ~0.55 s): about 6.5 s; the stall took minutes
    assert res.elapsed < 12.0


def test_input_factor_is_bounded_whatever_the_usage():
    clock = [0.0]
    g = make_gov(clock)
    for actual in (0, 1, 10_000_000, 0, 5):
        t = g.acquire(g.estimate_input(100), 0)
        g.on_success(t, actual, 1)
        assert 0.25 <= g.input_factor <= 4.0
    # answers arriving out of order, priced at different factors, compare like with like
    tickets = [g.acquire(g.estimate_input(100), 0) for _ in range(300)]
    for t in reversed(tickets):
        g.on_success(t, 200, 1)
    assert g.input_factor == pytest.approx(2.0, rel=0.01)
    assert all(t.in_raw == pytest.approx(100) for t in tickets)


def test_levels_stay_in_range_after_absurd_readings():
    b = Bucket(None, now=0.0)
    mark = b.debit(10, 0.0)
    b.observe(limit=600, remaining=50, reset_in=1.0, now=0.1, mark=mark, seq=1)
    for seq, rem in enumerate((1e12, -5, 1e300, 0), start=2):
        mark = b.debit(1e9, 0.2)
        b.observe(limit=600, remaining=rem, reset_in=0.0, now=0.3, mark=mark, seq=seq)
        for level in b.levels:
            assert -(b.capacity + 600) <= level <= b.capacity
        assert b.capacity <= 600


def test_capacity_only_learns_from_readings_and_never_exceeds_the_limit():
    b = Bucket(None, now=0.0)
    b.observe(limit=600, remaining=5, reset_in=0.5, now=0.0, seq=1)
    assert b.capacity == pytest.approx(10)
    b.observe(limit=600, remaining=0, reset_in=0.0, now=0.0, seq=2)  # says less: capacity stays
    assert b.capacity == pytest.approx(10)
    b.observe(limit=600, remaining=100, reset_in=1000.0, now=0.0, seq=3)
    assert b.capacity == 600


def test_429s_lower_the_ceiling_but_never_below_one_and_successes_regrow_it():
    clock = [0.0]
    g = make_gov(clock, warmup=0.0, initial_concurrency=64)
    for _ in range(50):
        t = g.acquire(0, 0)
        g.on_rate_limited(t, 0.1)
    assert g.ceiling == 1.0
    for _ in range(200):
        ts = [g.acquire(0, 0) for _ in range(g.free_slots())]
        clock[0] += 0.5
        for t in ts:
            g.on_success(t)
    assert g.ceiling > 10


# -- 2. output tokens: reserve, refund, and the three conventions of -remaining ---------------


def output_items(n: int = 300, seed: int = 5) -> list[Item]:
    rng = random.Random(seed)
    return [Item(40, 40, rng.randint(20, 80), 1024) for _ in range(n)]


def run_output_profile(remaining_at: str, client=None) -> tuple:
    clock = [1000.0]
    server = Server(otpm=30_000, burst=5, remaining_at=remaining_at)
    gov = client(server) if client else make_gov(clock)
    res = drive(gov, server, output_items(), clock, until=600, check=None if client else sane)
    return res, gov


@pytest.mark.parametrize("remaining_at", CONVENTIONS)
def test_output_bound_runs_as_fast_as_an_oracle_under_each_convention(remaining_at):
    oracle, _ = run_output_profile(remaining_at, client=Oracle)
    res, g = run_output_profile(remaining_at)
    assert res.done == 300
    assert res.rejected == 0
    assert g.output_tokens.convention_name == remaining_at
    assert g.output_tokens.capacity == pytest.approx(2500, rel=0.01)
    # the server-side physics (2,500-token bucket, 1,024 reserved per call for ~0.55 s)
    # bounds every client; the governor is within 5% of one that reads the server's bucket
    assert res.elapsed <= 1.05 * oracle.elapsed
    assert g.predicted_output is not None and 60 <= g.predicted_output <= 80
    assert g.binding == "output_tokens"


@pytest.mark.parametrize("remaining_at", CONVENTIONS)
def test_local_model_tracks_the_server_within_a_few_percent(remaining_at):
    clock = [1000.0]
    server = Server(otpm=30_000, burst=5, remaining_at=remaining_at)
    g = make_gov(clock)
    errors = []

    def check(gov, now):
        sane(gov, now)
        if gov.output_tokens.known and now - 1000.0 > 3.0:
            errors.append(abs(gov.output_tokens.level - server.buckets["output_tokens"].at(now)))

    drive(g, server, output_items(), clock, until=600, check=check)
    errors.sort()
    assert errors[len(errors) // 2] <= 0.03 * 2500  # median
    assert errors[int(len(errors) * 0.9)] <= 0.06 * 2500


def test_a_429_reading_corrects_an_optimistic_model():
    clock = [0.0]
    g = make_gov(clock, warmup=0.0, otpm=30_000)
    g.output_tokens.level = 2000.0
    t = g.acquire(0, 1024)
    hdr = {
        "anthropic-ratelimit-output-tokens-limit": "30000",
        "anthropic-ratelimit-output-tokens-remaining": "100",
        "anthropic-ratelimit-output-tokens-reset": "4.8",
    }
    g.on_rate_limited(t, 1.0, hdr)
    assert g.output_tokens.level == pytest.approx(100)
    assert all(level == pytest.approx(100) for level in g.output_tokens.levels)


def test_warmup_sends_a_small_first_wave_until_the_first_answer():
    clock = [0.0]
    g = make_gov(clock, initial_concurrency=32)
    assert g.free_slots() == 12  # governor.FIRST_WAVE (details in test_concurrency.py)
    ts = [g.acquire(0, 0) for _ in range(12)]
    assert g.free_slots() == 0
    g.on_success(ts[0])
    assert g.free_slots() >= 32


def test_predicted_output_is_a_high_percentile_and_never_lowers_the_reservation():
    clock = [0.0]
    g = make_gov(clock, warmup=0.0, otpm=60_000)
    assert g.predicted_output is None
    for n in range(1, 101):
        t = g.acquire(0, 1024)
        assert t.out_cost == 1024
        g.on_success(t, 0, n)
    assert g.predicted_output == pytest.approx(91, abs=1)
    t = g.acquire(0, 1024)
    assert t.out_cost == 1024
