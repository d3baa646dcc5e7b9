"""Issue 17: the concurrency controller's decisions on a fake clock, and once against the real
simulator's capacity wall (over TCP, with the real SDK)."""

from __future__ import annotations

import heapq
import random

import pytest

from llmjobs.engine import Call, ConcurrencyController, Engine, EngineConfig, Governor
from tests.engine.test_governor import FakeClock

MODEL = "claude-sonnet-5-5"


def make(clock: FakeClock, **kw) -> Governor:
    kw.setdefault("learn", False)
    kw.setdefault("rng", random.Random(1))
    return Governor(clock=clock, wall=lambda: 1_700_000_000.0 + clock.t, **kw)


def wave(c: ConcurrencyController, rtt: float = 0.5) -> float:
    """One round trip of a steady stream: every call in flight is answered after ``rtt``,
    each freed slot refilled at once. The ceiling after."""
    if not c.in_flight:
        for _ in range(max(0, c.free_slots(0.0))):
            c.send(0.0)
    for _ in range(c.in_flight):
        level = c.in_flight  # a steady stream: the oldest call was sent at about this level
        c.done()
        c.on_success(level, rtt)
        for _ in range(max(0, c.free_slots(0.0))):
            c.send(0.0)
    return c.ceiling


def wall_run(g: Governor, clock: FakeClock, capacity: int, until: float, rtt: float = 0.5) -> list[tuple[float, float]]:
    """A steady stream against a hard capacity wall: calls sent above `capacity` in flight get a
    529 at once, the others answer after `rtt`; free slots are refilled after every answer (a
    529'd call is sent again at once, as the engine does). Returns (seconds, ceiling) per answer."""
    t0 = clock.t
    flight: list[tuple[float, int, object | None]] = []
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
        if t is None:  # the end of a run-wide pause
            refill()
            continue
        if t.level > capacity:  # type: ignore[attr-defined]
            g.on_overloaded(t)  # type: ignore[arg-type]
        else:
            g.on_success(t)  # type: ignore[arg-type]
        trace.append((clock.t - t0, g.ceiling))
        pause = g.delay(0, 0)
        if pause > 0:  # nothing goes out during the pause
            seq += 1
            heapq.heappush(flight, (clock.t + pause, seq, None))
        else:
            refill()
    return trace


# -- ramp ---------------------------------------------------------------------------------------


def test_slow_start_grows_x4_per_round_trip_until_the_first_signal():
    c = ConcurrencyController(initial_concurrency=32, max_concurrency=4096)
    assert [wave(c) for _ in range(3)] == [128, 512, 2048]
    assert wave(c) == 4096  # capped by max_concurrency


def test_the_warm_up_round_trip_is_given_back_when_it_ends():
    clock = FakeClock()
    g = make(clock, initial_concurrency=32, max_concurrency=512, warmup=1.0)
    assert g.free_slots() == 12  # the first wave: what any account surely allows at once
    ts = [g.acquire(0, 0) for _ in range(12)]
    assert g.free_slots() == 0
    clock.advance(0.3)
    g.on_success(ts[0])
    assert g.ceiling == 256  # x8: the slow-start round trip the warm-up cost, and one more
    assert g.free_slots() == 256 - 11
    for t in ts[1:]:
        g.on_success(t)  # only the warm-up's (first) answer does that
    assert g.ceiling == 256


def test_the_first_wave_reserves_tokens_against_what_any_account_allows_at_once():
    clock = FakeClock()
    g = make(clock, warmup=1.0)
    # max_tokens 1,024: the first call always goes, the next would hold 2,048 output tokens
    # reserved (over the first wave's 2,000): it waits for the first answer
    g.acquire(40, 1024)
    assert g.free_slots() > 0 and g.delay(40, 1024) == pytest.approx(1.0)
    assert g.delay(40, 900) == 0.0  # a smaller call still fits
    # long documents: the estimated input (7,500 tokens at most) holds the wave to three
    g = make(clock, warmup=1.0)
    for _ in range(3):
        assert g.delay(2000, 256) == 0.0
        g.acquire(2000, 256)
    assert g.delay(2000, 256) == pytest.approx(1.0)


def test_the_first_wave_waits_for_the_first_answer_or_the_warm_ups_end():
    clock = FakeClock()
    g = make(clock, warmup=1.0)
    t = g.acquire(40, 1024)
    clock.advance(0.4)
    assert g.delay(40, 1024) == pytest.approx(0.6)  # the rest of the warm-up at most
    g.on_success(t, 40, 30)  # the first answer ends the wave (its headers would tell the limits)
    assert not g.warming and g.delay(40, 1024) == 0.0
    g = make(clock, warmup=1.0)
    g.acquire(40, 1024)
    clock.advance(1.0)  # no answer within the warm-up: slow start as without one
    assert g.delay(40, 1024) == 0.0 and g.free_slots() == 31


def test_known_limits_are_paced_by_their_buckets_not_by_the_first_wave():
    clock = FakeClock()
    # configured limits (a known tier): the first wave is as wide as their buckets allow
    g = make(clock, warmup=1.0, rpm=4000, itpm=2_000_000, otpm=400_000)
    assert g.free_slots() == 32
    for _ in range(32):
        assert g.delay(40, 1024) == 0.0
        g.acquire(40, 1024)
    # an unknown output limit still holds the wave to what any account allows
    g = make(clock, warmup=1.0, rpm=4000)
    assert g.free_slots() == 32
    g.acquire(40, 1024)
    assert g.delay(40, 1024) > 0


def test_a_first_wave_of_one_where_others_may_be_spending_the_limits():
    clock = FakeClock()
    g = make(clock, warmup=1.0, first_wave=1)  # the runner's choice when the org governor shows live runs
    assert g.free_slots() == 1
    g.on_success(g.acquire(40, 128))
    assert g.ceiling == 256 and not g.warming


def test_the_first_waves_headers_end_the_warm_up_when_they_show_no_limit():
    clock = FakeClock()
    g = make(clock, initial_concurrency=32, max_concurrency=512, warmup=1.0, learn=True)
    ts = [g.acquire(40, 128) for _ in range(12)]
    # the first call of the first wave is streamed (the engine does so for Ticket.wave); the rest go as asked
    assert [t.wave for t in ts] == [True] + [False] * 11
    assert not g.on_open(ts[1], {})
    clock.advance(0.01)
    assert g.on_open(ts[0], {"request-id": "x"})  # admitted, no rate-limit headers: nothing to wait for
    assert not g.warming and g.ceiling == 256  # x8 at once, an answer's time sooner
    assert not g.on_open(ts[0], {})  # once
    later = g.acquire(40, 128)
    assert not later.wave and not g.on_open(later, {})
    g.on_success(ts[0])
    assert g.ceiling == 256  # the first answer gives no second x8


def _limits(rpm: int, rpm_left: int, otpm: int, otpm_left: int) -> dict[str, str]:
    return {
        "anthropic-ratelimit-requests-limit": str(rpm),
        "anthropic-ratelimit-requests-remaining": str(rpm_left),
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:21Z",
        "anthropic-ratelimit-output-tokens-limit": str(otpm),
        "anthropic-ratelimit-output-tokens-remaining": str(otpm_left),
        "anthropic-ratelimit-output-tokens-reset": "2023-11-14T22:13:21Z",
    }


def test_the_first_waves_headers_end_the_warm_up_when_every_budget_has_room_for_the_next_wave():
    clock = FakeClock()
    g = make(clock, initial_concurrency=32, warmup=1.0, learn=True)
    ts = [g.acquire(40, 128) for _ in range(12)]  # 12 requests, 1,536 output tokens reserved
    # the next wave: 256 calls, 21x the first; tier 4 has room for that in every budget
    assert g.on_open(ts[0], _limits(4000, 3988, 400_000, 398_000))
    assert not g.warming and g.ceiling == 256
    assert g.requests.limit == 4000 and g.output_tokens.limit == 400_000  # learnt before the next call
    assert ts[0].observed is True  # read when they were written, not again at the call's end


@pytest.mark.parametrize(
    ("rpm", "rpm_left", "otpm", "otpm_left"),
    [
        (50, 38, 400_000, 398_000),  # tier 1's requests: 38 left, the next wave would be 256
        (4000, 3988, 30_000, 2_000),  # a 2,500-token output bucket
    ],
)
def test_a_tight_budget_in_the_first_headers_leaves_the_warm_up_to_the_first_answer(rpm, rpm_left, otpm, otpm_left):
    clock = FakeClock()
    g = make(clock, initial_concurrency=32, warmup=1.0, learn=True)
    ts = [g.acquire(40, 128) for _ in range(12)]
    assert not g.on_open(ts[0], _limits(rpm, rpm_left, otpm, otpm_left))
    assert g.warming and g.ceiling == 32 and g.free_slots() == 0  # as without the headers
    assert ts[0].observed is False and g.requests.limit is None  # not read: stale at the call's end
    clock.advance(0.3)
    g.on_success(ts[0], 40, 60, _limits(rpm, rpm_left, otpm, otpm_left))
    assert g.warming and g.requests.limit is None  # its answer does not end the warm-up
    g.on_success(ts[1], 40, 60, _limits(rpm, rpm_left - 1, otpm, otpm_left))
    assert not g.warming and g.ceiling == 256 and g.requests.limit == rpm  # the next answer's headers


def test_the_warm_up_gain_respects_max_concurrency():
    clock = FakeClock()
    g = make(clock, initial_concurrency=32, max_concurrency=50, warmup=1.0)
    g.on_success(g.acquire(0, 0))
    assert g.ceiling == 50


# -- the wall: set just under the in-flight level the 529s came at -------------------------------


def test_a_wall_is_set_one_call_under_the_lowest_refused_level():
    c = ConcurrencyController(initial_concurrency=300, max_concurrency=512)
    c.ssthresh = 300.0
    sent = [c.send(0.0) for _ in range(205)]  # levels 1..205
    for level, _ in sent[:200]:  # the first 200 are admitted and answered
        c.done()
        c.on_success(level, 0.5)
    refused = sent[200:]  # 201..205 got 529 at once; they come back in any order
    for level, epoch in refused[:-3:-1]:  # 205, 204: two could be chance
        c.done()
        c.on_overloaded(level, epoch)
    assert c.ceiling == 300
    level, epoch = refused[2]
    c.done()
    assert c.on_overloaded(level, epoch) is True  # 203: three, and nothing out above them: a wall
    assert c.ceiling == 202  # one call under the lowest refused level, no multiplicative cut
    for level, epoch in refused[1::-1]:  # 202 and 201, late: the wall is lower still
        c.done()
        c.on_overloaded(level, epoch)
    assert c.ceiling == 200
    assert c.w_max == 201
    assert c.ssthresh == 200  # gentle probing from here on


def test_scattered_529s_with_calls_still_in_flight_above_them_are_not_a_wall():
    """Random overloads: a few scattered 529s while calls sent above them are still out
    (and will succeed) are not a wall."""
    c = ConcurrencyController(initial_concurrency=100, max_concurrency=512)
    sent = [c.send(0.0) for _ in range(100)]
    before = c.ceiling
    for i in (11, 36, 57, 80):  # four 529s, scattered, with calls still out above them
        c.done()
        c.on_overloaded(*sent[i])
    assert c.ceiling == before


def test_the_529s_of_the_burst_that_caused_a_cut_do_not_cut_again():
    c = ConcurrencyController(initial_concurrency=512, max_concurrency=512)
    c.ssthresh = 512.0
    sent = [c.send(0.0) for _ in range(260)]
    for level, _ in sent[:200]:
        c.done()
        c.on_success(level, 0.5)
    for level, epoch in sent[200:]:
        c.done()
        explained = c.on_overloaded(level, epoch)
        if c.ceiling < 512:
            assert explained  # the ceiling now stands under it: no run-wide pause needed
    assert c.ceiling == 200


def test_a_capacity_wall_is_found_within_two_round_trips_and_held():
    clock = FakeClock()
    g = make(clock, initial_concurrency=32, max_concurrency=512)
    trace = wall_run(g, clock, 200, 20.0)
    after = [c for t, c in trace if t > 2 * 0.5 + 0.1]  # 32 -> 128 -> the wall (and its late 529s)
    assert min(after) >= 200  # set at the wall, never cut under it again
    assert max(after) < 202  # a gentle probe above it, each time refused and reset
    assert g.w_max == 201


def test_a_wall_529_does_not_pause_the_run_but_an_unexplained_one_does():
    clock = FakeClock()
    g = make(clock, initial_concurrency=8, max_concurrency=8)
    g.ssthresh = 8.0
    tickets = [g.acquire(0, 0) for _ in range(8)]
    for t in tickets[:5]:
        g.on_success(t)  # levels 1..5 work
    assert g.on_overloaded(tickets[5]) > 0  # level 6: could be chance, pause as usual
    g.paused_until = 0.0
    g.on_overloaded(tickets[6])
    g.paused_until = 0.0
    assert g.on_overloaded(tickets[7]) == 0.0  # the third, nothing out above: a wall, no pause
    assert g.ceiling == 5
    g.on_success(g.acquire(0, 0))
    assert g.on_overloaded(g.acquire(0, 0)) > 0  # level 1, under the ceiling: the API is busy, pause


# -- the gentle probe ------------------------------------------------------------------------------


def test_after_a_wall_the_probe_above_it_is_gentle():
    c = ConcurrencyController(initial_concurrency=200, max_concurrency=512)
    c.ssthresh, c.w_max = 200.0, 201.0  # just set under a wall at 201
    ceilings = [wave(c) for _ in range(10)]
    steps = [b - a for a, b in zip([200.0, *ceilings], ceilings, strict=False)]
    assert all(0 < s <= 0.6 for s in steps)  # about +0.5 a round trip: not slow start's x4
    assert ceilings[-1] < 206


def test_below_the_last_wall_the_ceiling_climbs_back_fast():
    c = ConcurrencyController(initial_concurrency=100, max_concurrency=512)
    c.ssthresh, c.w_max = 100.0, 201.0  # cut far under the last wall (say by 429s)
    for _ in range(3):
        wave(c)
    assert c.ceiling >= 190  # back near it within a few round trips, not +0.5 each


# -- the latency gradient --------------------------------------------------------------------------


def test_a_slowing_api_makes_the_ceiling_back_off_before_it_refuses_and_recover_after():
    c = ConcurrencyController(initial_concurrency=64, max_concurrency=4096)
    c.ssthresh = 64.0  # congestion avoidance: each step's growth is small and visible
    for _ in range(10):
        wave(c, 0.5)  # a steady API: the ceiling probes upward
    before = c.ceiling
    assert before > 64
    for _ in range(5):
        wave(c, 1.5)  # round trips three times longer: the API queues our calls
    slowed = c.ceiling
    assert slowed < 0.5 * before  # backed off (by about the gradient each round trip), no 529 needed
    assert slowed >= 1
    for _ in range(60):
        wave(c, 0.5)  # back to normal: growth resumes
    assert c.ceiling > slowed


def test_normal_latency_variation_does_not_back_off():
    c = ConcurrencyController(initial_concurrency=64, max_concurrency=4096)
    c.ssthresh = 64.0
    rng = random.Random(5)
    levels = [c.send(0.0) for _ in range(64)]
    for _ in range(3000):  # round trips between 0.4 and 0.6 s (output lengths vary)
        level, _ = levels.pop(0)
        c.done()
        c.on_success(level, rng.uniform(0.4, 0.6))
        levels.extend(c.send(0.0) for _ in range(max(0, c.free_slots(0.0))))
    assert c.ceiling > 64


# -- the floor -----------------------------------------------------------------------------------


def test_the_ceiling_never_goes_under_one():
    c = ConcurrencyController(initial_concurrency=4)
    for _ in range(50):  # 529 at level 1, over and over: the API is busy, not our concurrency
        level, epoch = c.send(0.0)
        c.done()
        c.on_overloaded(level, epoch)
    assert c.ceiling == 1.0 and c.free_slots(0.0) == 1
    for _ in range(20):
        level, epoch = c.send(0.0)
        c.done()
        c.on_rate_limited(level, epoch)
    assert c.ceiling == 1.0
    for _ in range(100):
        wave(c, 5.0 if _ > 40 else 0.1)  # and the latency gradient cannot push it under one either
    assert c.ceiling >= 1.0


# -- the real simulator ------------------------------------------------------------------------


def call(i: int) -> Call:
    return Call(i, {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": f"Note {i}"}]})


@pytest.mark.asyncio
async def test_a_capacity_wall_is_learned_from_the_529_levels_and_no_item_is_lost(sim):
    sim.configure(capacity=20, ttft=0.3)  # 529 beyond 20 in flight, at once; calls long enough to pile up
    # max_attempts=1: a 529 must never use up an attempt, however many an item meets
    async with Engine(base_url=sim.base_url, config=EngineConfig(max_attempts=1)) as engine:
        outcomes = await engine.run_ordered([call(i) for i in range(200)])
        gov = engine.governor
    assert [o.status for o in outcomes] == ["succeeded"] * 200
    assert sim.stats()["by_status"].get("529", 0) > 0  # the warm-up's x8 met the wall
    assert engine.stats.failed == 0
    # the ceiling sits just under the wall the 529s showed, not a multiplicative fraction of it
    assert gov.w_max >= 21
    assert 0.7 * 20 <= gov.ceiling <= gov.w_max + 2


@pytest.mark.asyncio
async def test_with_no_limits_the_first_wave_goes_at_once_then_the_ceiling_jumps(sim):
    sim.configure(ttft=0.3)  # no limit headers: nothing to learn, a first wave to lose nothing
    seen: list[tuple[int, int, bool]] = []  # (in flight, answers, warming) at each pull
    async with Engine(base_url=sim.base_url) as engine:
        gov = engine.governor

        def calls():
            for i in range(100):
                seen.append((gov.in_flight, engine.stats.succeeded, gov.warming))
                yield call(i)

        outcomes = await engine.run_ordered(calls())
    assert [o.status for o in outcomes] == ["succeeded"] * 100
    # twelve calls in flight while warming (not one), no more; the first wave is streamed, so
    # its first headers end the warm-up (x8) long before its first answer (ttft 0.3 s): many
    # more go out before any answer
    assert (11, 0, True) in seen and not any(n >= 12 for n, _, warming in seen if warming)
    assert sum(1 for _, done, _ in seen if done == 0) >= 60
    assert sim.stats()["by_status"].get("429", 0) == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("limits", "max_tokens", "words"),
    [
        ({"tier": 1}, 32, 5),  # the lowest published tier: 50 RPM, 30k ITPM, 8k OTPM, 60 s buckets
        ({"otpm": 30_000, "burst": 5.0}, 1024, 5),  # 2,500 output tokens at once: two calls of 1,024
        ({"itpm": 240_000, "burst": 5.0}, 256, 1500),  # 20k input tokens at once: ~10 documents
    ],
)
async def test_a_limited_account_meets_no_429s_at_the_start(sim, limits, max_tokens, words):
    # tier 1, bench/limits.py's output-bound profile, a tight input bucket: the first wave meets no 429
    sim.configure(ttft=0.2, **limits)
    text = " ".join(["word"] * words)
    calls = [
        Call(i, {"model": MODEL, "max_tokens": max_tokens, "messages": [{"role": "user", "content": f"{i} {text}"}]})
        for i in range(12)
    ]
    async with Engine(base_url=sim.base_url) as engine:
        outcomes = await engine.run_ordered(calls)
    assert [o.status for o in outcomes] == ["succeeded"] * 12
    assert sim.stats()["by_status"].get("429", 0) == 0
