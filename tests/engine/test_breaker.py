"""The circuit breaker: an outage pauses the run, not the items.

Unit tests drive the breaker with a fake clock; the end-to-end test stops the
real simulator process mid-run (connections refused) and starts it again on
the same port.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from llmjobs.engine import Call, Engine, EngineConfig
from llmjobs.engine.breaker import CircuitBreaker
from llmjobs.simulator.server import SimulatorProcess


def test_random_faults_never_open_it():
    b = CircuitBreaker(threshold=10)
    now = 0.0
    for i in range(1000):
        now += 0.01
        if i % 14 == 0:  # 7% of calls fail, never 10 in a row
            b.on_outage_failure(now)
        else:
            b.on_answer(now)
    assert not b.is_open and b.opens == 0


def test_a_streak_of_failures_opens_it_and_one_probe_goes_at_a_time():
    b = CircuitBreaker(threshold=10, probe_base=0.5, probe_max=4.0)
    for _ in range(9):
        b.on_outage_failure(1.0)
    assert not b.is_open and b.delay(1.0) == 0.0
    b.on_outage_failure(1.0)
    assert b.is_open and b.opens == 1
    assert b.delay(1.0) == pytest.approx(0.5)
    assert b.delay(1.5) == 0.0
    assert b.on_dispatch(1.5) is True  # the probe
    assert b.delay(1.6) is None  # nothing else while the probe is out
    # the probe fails: the next one waits longer, doubling up to probe_max
    waits = []
    now = 1.5
    for _ in range(6):
        b.on_outage_failure(now, probe=True)
        waits.append(b.delay(now))
        now += waits[-1]
        b.on_dispatch(now)
    assert waits == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0])
    b.on_answer(now, probe=True)
    assert not b.is_open and b.delay(now) == 0.0 and b.opens == 1


def test_overloads_alone_open_it_only_when_nothing_was_answered_for_a_while():
    b = CircuitBreaker(threshold=10, min_outage=1.0)
    b.on_answer(10.0)
    for _ in range(50):  # a burst of 529s above a capacity wall, at once
        b.on_outage_failure(10.2, overloaded=True)
    assert not b.is_open
    b.on_outage_failure(11.1, overloaded=True)
    assert b.is_open


def test_a_cancelled_probe_frees_the_slot():
    b = CircuitBreaker(threshold=1)
    b.on_outage_failure(0.0)
    assert b.on_dispatch(1.0)
    assert b.delay(1.0) is None
    b.on_abandoned(probe=True)
    assert b.delay(1.0) == 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.asyncio
async def test_items_survive_an_outage_longer_than_their_retry_budget():
    """The API goes away for seconds while each item may fail only 3 times, with
    50 ms backoffs: without the breaker most items would fail for good."""
    port = _free_port()
    sim = SimulatorProcess("--ttft", "0.2", "--tps", "0", port=port).start()
    n = 80
    calls = [
        Call(i, {"model": "claude-haiku-4-5", "max_tokens": 32, "messages": [{"role": "user", "content": f"hi {i}"}]})
        for i in range(n)
    ]
    cfg = EngineConfig(max_attempts=3, backoff_base=0.05, backoff_max=0.2, initial_concurrency=16, max_concurrency=16)
    outcomes = []
    try:
        async with Engine(base_url=sim.base_url, config=cfg) as engine:
            run = engine.run(calls)
            async for outcome in run:
                outcomes.append(outcome)
                if len(outcomes) == 20:
                    await asyncio.to_thread(sim.stop)  # in-flight calls break, new ones are refused
                    await asyncio.sleep(3.0)
                    sim = SimulatorProcess("--ttft", "0.2", "--tps", "0", port=port)
                    await asyncio.to_thread(sim.start)
            breaker = engine.breaker
            stats = engine.stats
    finally:
        sim.stop()
    assert sorted(o.key for o in outcomes) == list(range(n))
    failed = [(o.key, o.error_type, o.error_message) for o in outcomes if o.status != "succeeded"]
    assert failed == []
    assert breaker.opens >= 1 and not breaker.is_open
    assert stats.errors > 0
    # Without the breaker (seen before it existed) about 20 of the 80 items failed
    # here with connection_error after their 3 attempts.


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["close", "503", "529"])
async def test_items_survive_a_simulated_outage_of_every_kind(sim, mode):
    """/_sim/outage: connections closed without an answer, 503s or 529s for 3 s."""
    sim.configure(ttft=0.05)
    n = 60
    calls = [
        Call(i, {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": f"x {i}"}]})
        for i in range(n)
    ]
    # 4 attempts with 0.2 s backoffs: without the breaker the items burn their
    # budget in well under a second of a 3-second outage.
    cfg = EngineConfig(max_attempts=4, backoff_base=0.2, backoff_max=1.0, initial_concurrency=8, max_concurrency=8)
    outcomes = []
    async with Engine(base_url=sim.base_url, config=cfg) as engine:
        async for outcome in engine.run(calls):
            outcomes.append(outcome)
            if len(outcomes) == 10:
                await asyncio.to_thread(sim.outage, 3.0, mode)
        breaker = engine.breaker
    assert [o for o in outcomes if o.status != "succeeded"] == []
    assert len(outcomes) == n and breaker.opens >= 1
    assert sim.stats()["prompts"]["extra_paid_calls"] == 0


def test_two_outage_failures_in_a_row_make_it_suspect_until_an_answer():
    b = CircuitBreaker(threshold=10)
    b.on_outage_failure(0.0)
    assert not b.suspect
    b.on_outage_failure(0.1)
    assert b.suspect and not b.is_open
    b.on_answer(0.2)
    assert not b.suspect
