"""Issue 17: the concurrency controller against the real simulator's capacity wall (over TCP)."""

from __future__ import annotations

import pytest

from llmjobs.engine import Call, Engine, EngineConfig

MODEL = "claude-sonnet-5-5"


def call(i: int) -> Call:
    return Call(i, {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": f"Note {i}"}]})


@pytest.mark.asyncio
async def test_a_capacity_wall_is_learned_from_the_529_levels_and_no_item_is_lost(sim):
    sim.configure(capacity=20, ttft=0.05)  # 529 beyond 20 in flight, at once
    # max_attempts=1: a 529 must never use up an attempt, however many an item meets
    async with Engine(base_url=sim.base_url, config=EngineConfig(max_attempts=1)) as engine:
        outcomes = await engine.run_ordered([call(i) for i in range(200)])
        gov = engine.governor
    assert [o.status for o in outcomes] == ["succeeded"] * 200
    assert sim.stats()["by_status"].get("529", 0) > 0  # the warm-up's x8 met the wall
    # the ceiling sits just under the wall the 529s showed, not a multiplicative fraction of it
    assert gov.w_max >= 21
    assert 0.7 * 20 <= gov.ceiling <= gov.w_max + 2
