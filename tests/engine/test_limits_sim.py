"""The governor against the real simulator (real SDK over TCP) under each ``--remaining-at``
convention: an output-bound job with a generous ``max_tokens`` (issue 9)."""

from __future__ import annotations

import pytest

from llmjobs.engine import Call, Engine


def item(i: int) -> Call:
    return Call(
        i,
        {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": f"Note #{i} on the quarterly report and its regions"}],
        },
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("remaining_at", ["admission", "answer", "refund"])
async def test_output_bound_job_under_each_remaining_convention(sim, remaining_at):
    sim.configure(otpm=30_000, burst=5, ttft=0.2, tps=1000, remaining_at=remaining_at)
    async with Engine(base_url=sim.base_url) as engine:
        outcomes = await engine.run_ordered([item(i) for i in range(60)])
        gov = engine.governor
    assert all(o.ok for o in outcomes)
    stats = sim.stats()
    assert stats["by_status"].get("429", 0) <= 1  # the first call alone learns the limits
    b = gov.output_tokens
    assert b.limit == 30_000
    # 5 s of refill, learned from the coarse -reset (a lower bound; at admission it is read
    # from the request's age, which includes the trip to the server: a hair above is fine)
    assert 2000 <= b.capacity <= 2500 * 1.01
    assert b.convention_name == remaining_at
    assert gov.binding == "output_tokens"
    assert gov.predicted_output is not None and gov.predicted_output < 1024
