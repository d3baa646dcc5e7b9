"""The engine bounds its work per event-loop pass (issue 17: loop lag). Counts, not clocks:
calls started per loop pass, against the real simulator and SDK; the budget's decisions
with a real loop and no I/O."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from llmjobs.engine import Call, Engine, EngineConfig, make_client
from llmjobs.engine.attempts import messages_url
from llmjobs.engine.pacing import END_COST, PASS_BUDGET, START_COST, PassBudget

MAX_STARTS = PASS_BUDGET // START_COST


class CountingLoop(asyncio.SelectorEventLoop):
    """A loop that numbers its passes (test instrumentation, as bench/runner.py's LoopMeter)."""

    passes = 0

    def _run_once(self) -> None:
        self.passes += 1
        super()._run_once()  # type: ignore[misc]


def call(i: int) -> Call:
    return Call(
        i, {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": f"hi {i}"}]}
    )


def test_no_loop_pass_starts_more_than_the_budget_allows(sim):
    sim.configure(ttft=0.05)  # calls overlap: the ceiling, not the answers, holds the starts back
    starts: Counter[int] = Counter()

    async def main() -> list:
        loop = asyncio.get_running_loop()
        client = make_client(base_url=sim.base_url)
        real_post = client.post

        async def post(*args, **kwargs):
            starts[loop.passes] += 1  # the attempt's first step: the SDK builds and sends the request
            return await real_post(*args, **kwargs)

        client.post = post  # type: ignore[method-assign]
        config = EngineConfig(max_concurrency=300, initial_concurrency=300, warmup=0)
        try:
            async with Engine(client=client, config=config) as engine:
                return await engine.run_ordered(call(i) for i in range(240))
        finally:
            await client.close()

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        outcomes = runner.run(main())
    assert [o.status for o in outcomes] == ["succeeded"] * 240
    assert sum(starts.values()) == 240
    assert max(starts.values()) == MAX_STARTS  # 300 slots free at once: the budget, not the ceiling, paced them
    assert len(starts) >= 240 // MAX_STARTS


def test_a_pass_that_follows_many_answers_starts_fewer_calls():
    async def scenario() -> None:
        budget = PassBudget(asyncio.get_running_loop())
        ends = PASS_BUDGET // END_COST - START_COST  # a burst of answers: room for one start only
        for _ in range(ends):
            budget.end()
        assert budget.can_start()  # a pass's first start is always allowed: nothing starves
        budget.start()
        assert not budget.can_start()
        await asyncio.sleep(0)  # the next pass: its answers have not run yet, the last pass's are the forecast
        assert budget.forecast == ends and budget.ended == 0
        budget.start()
        assert not budget.can_start()
        await asyncio.sleep(0)  # the burst is over (no answers in the last pass): a full pass of starts
        assert budget.forecast == 0
        n = 0
        while budget.can_start():
            budget.start()
            n += 1
        assert n == MAX_STARTS
        await asyncio.sleep(0)
        for _ in range(PASS_BUDGET // END_COST - 2 * START_COST + 1):  # answers counted in this pass so far
            budget.end()
        budget.start()
        assert not budget.can_start()  # more than the forecast (none): the count so far decides

    asyncio.run(scenario())


def test_a_pass_with_no_work_counts_nothing():
    async def scenario() -> int:
        budget = PassBudget(asyncio.get_running_loop())
        for _ in range(5):
            await asyncio.sleep(0)
        return budget.spans

    assert asyncio.run(scenario()) == 0  # no callback per pass while the engine is idle


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:9", "https://api.anthropic.com", "https://proxy.example/x/y", "https://proxy.example/x/y/"],
)
def test_the_messages_url_is_the_one_the_sdk_merges(base_url):
    client = make_client(base_url=base_url, api_key="k")
    assert messages_url(client) == str(client._prepare_url("/v1/messages"))


def test_clients_share_one_tls_context(monkeypatch):
    import httpcore2

    made = []
    real = httpcore2.default_ssl_context  # what loads the CA bundle
    monkeypatch.setattr(httpcore2, "default_ssl_context", lambda **k: made.append(1) or real(**k))
    from llmjobs.engine import client as client_module

    client_module._ssl_context.cache_clear()
    for _ in range(3):
        make_client(base_url="http://127.0.0.1:9", api_key="k")
    assert len(made) == 1  # not one CA-bundle load (20-40 ms on the loop) per client
