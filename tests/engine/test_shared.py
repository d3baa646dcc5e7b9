"""The shared governor's engine side (issue 12 part 3): a fake loop clock, a fake wall
clock and an in-memory ``exchange``; no Django, no database, no sleeping on timing."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Callable

import pytest

from llmjobs.engine.governor import Governor
from llmjobs.engine.shared import Grant, LocalState, SharedLimits


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def governor(clock: Clock, **kw) -> Governor:
    return Governor(clock=clock, wall=lambda: 1_000_000.0, **kw)


def headers(limit: int, remaining: int) -> dict[str, str]:
    return {
        "anthropic-ratelimit-requests-limit": str(limit),
        "anthropic-ratelimit-requests-remaining": str(remaining),
    }


class Row:
    """An in-memory stand-in for the database row: every member gets 1/N, the pause is shared."""

    def __init__(self) -> None:
        self.members: dict[int, LocalState] = {}
        self.paused_until = 0.0
        self.rpm: float | None = None

    def exchange_for(self, member: int):
        def exchange(state: LocalState) -> Grant:
            if state.leaving:
                self.members.pop(member, None)
            else:
                self.members[member] = state
            self.paused_until = max(self.paused_until, state.paused_until)
            self.rpm = state.rpm or self.rpm
            n = max(1, len(self.members))
            flying = sum(s.in_flight for s in self.members.values())
            return Grant(share=1 / n, paused_until=self.paused_until, members=n, in_flight=flying, rpm=self.rpm)

        return exchange


def test_the_engine_side_imports_no_django():
    code = "import sys, llmjobs.engine.shared; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_grant_scales_every_known_bucket_and_back():
    clock = Clock()
    gov = governor(clock, rpm=600, itpm=60_000)
    assert (gov.requests.capacity, gov.requests.level) == (100.0, 100.0)  # 10 s of refill
    gov.apply_grant(0.5)
    assert gov.share == 0.5
    assert (gov.requests.limit, gov.requests.rate, gov.requests.capacity) == (300.0, 5.0, 50.0)
    assert gov.requests.level == 50.0
    assert gov.input_tokens.limit == 30_000.0
    assert gov.output_tokens.limit is None  # unknown stays unknown
    gov.apply_grant(1.0)
    assert (gov.requests.limit, gov.requests.capacity, gov.requests.level) == (600.0, 100.0, 100.0)


def test_rate_limit_headers_are_read_as_this_members_share():
    clock = Clock()
    gov = governor(clock)
    gov.apply_grant(0.5)
    ticket = gov.acquire(1.0, 0.0)
    clock.t += 0.5
    gov.on_success(ticket, headers=headers(600, 40))
    assert gov.requests.limit == 300.0  # half the org's 600 RPM
    assert gov.requests.level == pytest.approx(20.0, abs=1.0)  # half of what the org has left


def test_two_members_share_one_limit_and_one_pause():
    clock, wall = Clock(), Clock(5_000.0)
    row = Row()
    a = SharedLimits(governor(clock, rpm=600), row.exchange_for(1), wall=wall)
    b = SharedLimits(governor(clock, rpm=600), row.exchange_for(2), wall=wall)
    for member in (a, b, a):
        member.applied(member.exchange(member.local_state()), clock.t)
    assert a.gov.share == b.gov.share == 0.5
    assert a.gov.requests.rate + b.gov.requests.rate == pytest.approx(10.0)  # together: the org's 600 RPM
    assert a.local_state().rpm == 600.0  # the org's limit is reported unscaled
    # a 429 at member a: a pause of 2 s; an exchange is due at once, and b takes the pause
    ticket = a.gov.acquire(1.0, 0.0)
    clock.t += 0.01
    a.gov.on_rate_limited(ticket, retry_after=2.0)
    assert a.due(clock.t)
    state = a.local_state()
    assert state.paused_until == pytest.approx(wall.t + 2.0)
    a.applied(a.exchange(state), clock.t)
    assert not a.due(clock.t)
    b.applied(b.exchange(b.local_state()), clock.t)
    assert b.gov.paused_until == pytest.approx(clock.t + 2.0)
    assert b.gov.delay(0.0, 0.0, clock.t) == pytest.approx(2.0)
    # b leaves: a gets the whole limit back at its next exchange
    b.exchange(b.local_state(leaving=True))
    clock.t += 0.3
    assert a.due(clock.t)
    a.applied(a.exchange(a.local_state()), clock.t)
    assert a.gov.share == 1.0 and a.gov.requests.limit == 600.0


def test_exchanges_are_paced_by_the_interval_and_slower_while_alone():
    clock = Clock()
    row = Row()
    shared = SharedLimits(governor(clock), row.exchange_for(1), interval=0.3, alone_interval=1.0)
    assert shared.due(clock.t)
    shared.applied(shared.exchange(shared.local_state()), clock.t)  # alone on the row
    assert shared.last is not None and shared.last.members == 1
    clock.t += 0.99
    assert not shared.due(clock.t)  # alone: one exchange a second (idle cost, issue 17)
    clock.t += 0.02
    assert shared.due(clock.t)
    other = SharedLimits(governor(clock), row.exchange_for(2))
    other.applied(other.exchange(other.local_state()), clock.t)  # a second member joins
    shared.applied(shared.exchange(shared.local_state()), clock.t)
    assert shared.last.members == 2
    clock.t += 0.29
    assert not shared.due(clock.t)
    clock.t += 0.02
    assert shared.due(clock.t)  # shared: every 0.3 s again
    # a 429 is news at once, whatever the interval
    ticket = shared.gov.acquire(1.0, 0.0)
    shared.applied(shared.exchange(shared.local_state()), clock.t)
    shared.gov.on_rate_limited(ticket, retry_after=1.0)
    assert shared.due(clock.t)


def test_the_alone_interval_defaults_to_a_second_and_never_below_the_interval():
    clock = Clock()
    assert SharedLimits(governor(clock), Row().exchange_for(1)).alone_interval == 1.0
    assert SharedLimits(governor(clock), Row().exchange_for(1), interval=2.0).alone_interval == 2.0


def test_three_failed_exchanges_fall_back_to_pacing_alone(caplog):
    clock = Clock()
    row = Row()
    shared = SharedLimits(governor(clock, rpm=600), row.exchange_for(1))
    shared.applied(Grant(share=0.25), clock.t)
    assert shared.gov.requests.limit == 150.0
    boom = RuntimeError("could not connect to server\ndetails")
    with caplog.at_level(logging.WARNING, logger="llmjobs.engine.shared"):
        shared.failed(boom, clock.t)
        shared.failed(boom, clock.t)
        assert not shared.fell_back and shared.gov.share == 0.25  # the last grant still holds
        shared.failed(boom, clock.t)
    assert shared.fell_back and shared.gov.share == 1.0 and shared.gov.requests.limit == 600.0
    assert not shared.due(clock.t + 10)
    [record] = caplog.records
    assert "3 exchanges failed" in record.getMessage() and "paces alone" in record.getMessage()
    assert "details" not in record.getMessage()  # one line


def test_a_run_that_fell_back_rejoins_its_share_when_the_exchange_works_again(caplog):
    clock = Clock()
    shared = SharedLimits(governor(clock, rpm=600), Row().exchange_for(1), rejoin_interval=30.0)
    boom = RuntimeError("database is locked")
    for _ in range(3):
        shared.failed(boom, clock.t)
    assert shared.fell_back
    clock.t += 29.9
    assert not shared.due(clock.t)  # pacing alone; no try before the rejoin interval
    shared.gov.paused_until = shared.gov.now() + 5  # a local 429 is no reason to try early either
    assert not shared.due(clock.t)
    clock.t += 0.2
    assert shared.due(clock.t)
    shared.failed(boom, clock.t)  # still down: the next try in 30 s, not in 0.3 s
    assert shared.fell_back and not shared.due(clock.t + 29)
    clock.t += 30
    assert shared.due(clock.t)
    with caplog.at_level(logging.WARNING, logger="llmjobs.engine.shared"):
        shared.applied(Grant(share=0.5, members=2), clock.t)
    assert not shared.fell_back and shared.failures == 0
    assert shared.gov.share == 0.5 and shared.gov.requests.limit == 300.0
    assert "works again" in caplog.records[-1].getMessage()
    assert not shared.due(clock.t + 0.2) and shared.due(clock.t + 0.31)  # the usual interval again


def run_until(make: Callable[[], SharedLimits], exchanged: list[LocalState], n: int) -> SharedLimits:
    """``make()`` on a fresh loop, its ``run()`` until ``exchanged`` holds ``n`` states, then
    cancelled (the engine run ended); the run swallows nothing but that cancel."""

    async def main() -> SharedLimits:
        shared = make()
        task = asyncio.create_task(shared.run())
        while len(exchanged) < n:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return shared

    return asyncio.run(main())


def test_run_keeps_trying_after_falling_back_and_leaves_the_row_after_rejoining():
    row = Row()
    inner = row.exchange_for(1)
    calls: list[LocalState] = []

    def exchange(state: LocalState) -> Grant:
        calls.append(state)
        if len(calls) <= 3:
            raise RuntimeError("server closed the connection unexpectedly")
        return inner(state)

    shared = run_until(
        lambda: SharedLimits(Governor(), exchange, interval=0.0, poll=0.001, rejoin_interval=0.01), calls, 6
    )
    assert not shared.fell_back and shared.exchanges >= 2
    assert calls[-1].leaving and row.members == {}  # rejoined, then left the row at the end


def test_a_success_resets_the_failure_count():
    clock = Clock()
    shared = SharedLimits(governor(clock), Row().exchange_for(1))
    shared.failed(RuntimeError("x"), clock.t)
    shared.failed(RuntimeError("x"), clock.t)
    shared.applied(Grant(share=1.0), clock.t)
    shared.failed(RuntimeError("x"), clock.t)
    assert not shared.fell_back


def test_run_exchanges_then_leaves_when_cancelled():
    row = Row()
    seen: list[LocalState] = []
    inner = row.exchange_for(1)

    def exchange(state: LocalState) -> Grant:
        seen.append(state)
        return inner(state)

    run_until(lambda: SharedLimits(Governor(), exchange, interval=0.0, poll=0.001), seen, 3)
    assert seen[-1].leaving and not any(s.leaving for s in seen[:-1])
    assert row.members == {}


def test_run_falls_back_keeps_going_and_never_raises():
    calls = []

    def exchange(state: LocalState) -> Grant:
        calls.append(state)
        raise ConnectionError("database down")

    # the three failures, then a try to rejoin
    shared = run_until(
        lambda: SharedLimits(Governor(), exchange, interval=0.0, poll=0.001, rejoin_interval=0.05), calls, 4
    )
    assert shared.fell_back and shared.gov.share in (None, 1.0)
    assert not any(s.leaving for s in calls)  # no leave after a fall-back: the row goes stale on its own
