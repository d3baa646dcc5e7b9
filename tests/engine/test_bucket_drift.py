"""A tight bucket under whole-unit ``-remaining`` and late answers, on a fake clock.

The API (and the simulator) floor the level to whole units, round ``-reset`` up
to whole seconds, and a response is read some time after the server computed its
headers (a loaded event loop, the network), while a request reaches the server
some time after it was sent. The model used to take any prediction within
``[remaining, remaining + 1]`` as exact: a tight bucket (capacity 10) sat up to a
unit above the server and met a 429 every ~50 calls; and the capacity, which only
grows, counted the response's age as refill under the ``ADMISSION`` convention
and grew to 11, or to 19-25 when calls take half a second.
"""

from __future__ import annotations

import random

import pytest

from llmjobs.engine import Governor
from llmjobs.engine.bucket import ADMISSION, REFUND, Bucket

from .fakeserver import Item, Server, drive, wall_of

CONVENTIONS = ("admission", "answer", "refund")
WAVE = 16  # the first calls go out blind, before any header was read


def run_tight(remaining_at: str, seed: int, latency: float, n: int = 400):
    clock = [1000.0]
    gov = Governor(
        clock=lambda: clock[0],
        initial_concurrency=WAVE,
        warmup=0.0,
        rng=random.Random(seed),
        wall=wall_of(clock),
    )
    server = Server(rpm=1200, burst=0.5, remaining_at=remaining_at, coarse_reset=True)  # 20/s, holds 10
    res = drive(
        gov,
        server,
        [Item(40, 40, 30, 64) for _ in range(n)],
        clock,
        seed=seed,
        latency=lambda rng: latency * (0.5 + rng.random()),
        forward=lambda rng: 0.001 + 0.05 * rng.random() ** 2,  # the trip to the server, up to 50 ms
        transit=lambda rng: 0.001 + 0.5 * rng.random() ** 2,  # read up to 0.5 s after the server wrote it
    )
    return res, gov


@pytest.mark.parametrize("latency", [0.0, 0.5])
@pytest.mark.parametrize("remaining_at", CONVENTIONS)
def test_a_tight_bucket_meets_no_429_once_its_model_is_learned(remaining_at, latency):
    late = []
    for seed in (1, 2, 3):
        res, gov = run_tight(remaining_at, seed, latency)
        assert res.done == 400
        # the blind first wave overruns the bucket, and its first answers (read out of
        # order) are the only evidence for the calls right after it; then none
        late += [s for s in res.limited if s > 2.5 * WAVE]
        b = gov.requests
        assert b.limit == 1200
        assert b.capacity <= 10 + 1e-6  # a lower bound of the server's, never above it
        assert max(b.caps) <= 10 + 1e-6  # the other models' too
        assert b.capacity >= 9
        # pacing stays at the refill rate: 390 calls beyond the bucket at 20/s
        assert res.elapsed <= 1.06 * (390 / 20 + 2 * latency)
    assert late == []


def test_a_model_inside_the_readings_interval_is_pulled_to_its_floor():
    b = Bucket(None, now=0.0)
    b.observe(limit=1200, remaining=9, reset_in=0.05, now=0.0, mark=b.debit(1, 0.0), seq=1)
    assert b.levels == [9.0, 9.0, 9.0]
    mark = b.debit(8.1, 0.0)  # the model: 0.9 left
    # "0 left": the server's level is in [0, 1); the model's 0.9 may be a unit too high
    b.observe(limit=1200, remaining=0, reset_in=0.5, now=0.0, mark=mark, seq=2)
    assert all(level < 0.5 for level in b.levels)
    assert b.scores == [0.0, 0.0, 0.0]  # inside the interval: a match, for choosing a convention
    # below the floor: taken up cautiously, and never above the floor
    mark = b.debit(0.0, 0.0)
    b.observe(limit=1200, remaining=3, reset_in=0.35, now=0.0, mark=mark, seq=3)
    assert all(0.5 < level < 3.0 for level in b.levels)


def test_the_capacity_is_not_grown_by_the_requests_trip_or_its_answers():
    # rpm 1200 (20/s), the server holds 10. A call sent at 0 reached the server at 0.3,
    # which had 4 and took 1 (3 left, full again 0.35 s later, at 0.65); read at 0.31
    b = Bucket(None, now=0.0)
    b.observe(limit=1200, remaining=9, reset_in=0.05, now=0.0, mark=b.debit(1, 0.0), seq=1, cost=1, age=0.0)
    b.convention = ADMISSION
    mark = b.debit(1, 0.0)
    b.observe(limit=1200, remaining=3, reset_in=0.34, now=0.31, mark=mark, seq=2, cost=1, age=0.31)
    # 3 + 20/s * (0.34 + 0.31) = 16 if the whole age counted as refill since the reading
    assert max(b.caps) <= 10
    # a reading after the refund (own cost given back) does not grow the admission model's
    # capacity by the cost beyond what reset allows
    b.convention = REFUND
    mark = b.debit(1, 0.4)
    b.observe(limit=1200, remaining=10, reset_in=0.0, now=0.45, mark=mark, seq=3, cost=1, age=0.05)
    assert b.caps == [10, 10, 10]


def test_the_admission_model_learns_the_whole_capacity_from_the_cost():
    # output tokens: 30,000/min (500/s), the server holds 2,500; a full bucket reserved 1,024
    # and its reading at admission (1,476 left, full in 2.048 s) came back 0.6 s later
    b = Bucket(None, now=0.0)
    mark = b.debit(1024, 0.0)
    b.observe(limit=30_000, remaining=1476, reset_in=1.448, now=0.6, mark=mark, seq=1, cost=1024, age=0.6)
    assert b.caps[ADMISSION] == 2499  # (less one unit: see Bucket.observe)
    assert b.caps[REFUND] == pytest.approx(1476 + 500 * 1.448)  # counted from now: a lower bound
