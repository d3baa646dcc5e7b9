"""Message Batches as Anthropic runs them: limits, custom_id rules, results in
any order, progress counts, cancel, errored/expired shares, batch billing."""

from __future__ import annotations

import asyncio
import json

import anthropic
import pytest

from llmjobs.simulator.app import SimulatorApp
from llmjobs.simulator.batches import _create
from llmjobs.simulator.config import SimConfig

from .conftest import MODEL, aclient, raw_post, user


def request(custom_id: str, text: str = "hello", **params) -> dict:
    return {"custom_id": custom_id, "params": {"model": MODEL, "max_tokens": 64, "messages": user(text), **params}}


def many(n: int) -> list[dict]:
    return [request(f"item-{i}", f"Classify as one of: red, blue. Item {i} is blue") for i in range(n)]


@pytest.mark.asyncio
async def test_request_count_and_size_limits(sim):
    tiny = {"custom_id": "x", "params": {}}
    status, _, body = raw_post(sim.base_url, "/v1/messages/batches", {"requests": [tiny] * 100_001})
    assert status == 400 and "at most 100,000 requests" in json.loads(body)["error"]["message"]
    sim.configure(batch_max_requests=3, batch_max_bytes=4096)
    async with aclient(sim) as client:
        with pytest.raises(anthropic.BadRequestError, match="at most 3 requests"):
            await client.messages.batches.create(requests=many(4))
        assert (await client.messages.batches.create(requests=many(3))).request_counts.succeeded == 3
        with pytest.raises(anthropic.APIStatusError) as too_big:
            await client.messages.batches.create(requests=[request("a", "x" * 5000)])
    assert too_big.value.status_code == 413 and too_big.value.body["error"]["type"] == "request_too_large"


@pytest.mark.asyncio
@pytest.mark.parametrize("custom_id", ["", "x" * 65, "has space", "dot.ted", "slash/ed", "é"])
async def test_custom_id_must_match_the_pattern(sim, custom_id):
    async with aclient(sim) as client:
        with pytest.raises(anthropic.BadRequestError, match="custom_id"):
            await client.messages.batches.create(requests=[request("ok", "a"), request(custom_id, "b")])


@pytest.mark.asyncio
async def test_custom_id_edges_and_uniqueness(sim):
    longest = "A-z_09" + "x" * 58
    async with aclient(sim) as client:
        batch = await client.messages.batches.create(requests=[request(longest), request("-"), request("_")])
        ids = {r.custom_id async for r in await client.messages.batches.results(batch.id)}
        with pytest.raises(anthropic.BadRequestError, match="not unique"):
            await client.messages.batches.create(requests=[request("a"), request("b"), request("a")])
    assert ids == {longest, "-", "_"}


def _order(sim) -> list[str]:
    async def run() -> list[str]:
        async with aclient(sim) as client:
            batch = await client.messages.batches.create(requests=many(30))
            assert batch.results_url == f"{sim.base_url}/v1/messages/batches/{batch.id}/results"
            return [r.custom_id async for r in await client.messages.batches.results(batch.id)]

    return asyncio.run(run())


def test_results_come_in_a_seeded_shuffled_order(sim):
    first = _order(sim)
    sim.reset()
    again = _order(sim)
    sim.reset()
    sim.configure(seed=7)
    other = _order(sim)
    expected = [f"item-{i}" for i in range(30)]
    assert sorted(first) == sorted(expected) and first != expected  # every request once, in another order
    assert again == first  # the same seed, the same order
    assert other != first


@pytest.mark.asyncio
async def test_errored_and_expired_shares_and_batch_billing(sim):
    sim.configure(batch_error=0.25, batch_expire=0.25)
    async with aclient(sim) as client:
        batch = await client.messages.batches.create(requests=many(80))
        results = [r async for r in await client.messages.batches.results(batch.id)]
    counts = batch.request_counts
    assert batch.processing_status == "ended"
    assert counts.errored > 5 and counts.expired > 5 and counts.succeeded > 20 and counts.processing == 0
    assert counts.succeeded + counts.errored + counts.expired == 80
    kinds = [r.result.type for r in results]
    assert kinds.count("errored") == counts.errored and kinds.count("expired") == counts.expired
    error = next(r.result.error for r in results if r.result.type == "errored")
    assert error.type == "error" and error.error.type == "api_error" and error.request_id
    succeeded = [r.result.message for r in results if r.result.type == "succeeded"]
    stats = sim.stats()
    assert stats["batch"]["expired"] == counts.expired and stats["batch"]["errored"] == counts.errored
    assert stats["batch"]["output_tokens"] == sum(m.usage.output_tokens for m in succeeded)  # only succeeded is billed
    assert stats["batch"]["input_tokens"] == sum(m.usage.input_tokens for m in succeeded)
    assert stats["batch"]["price_multiplier"] == 0.5
    assert stats["input_tokens"] == stats["output_tokens"] == 0  # apart from the Messages API's totals
    assert all(m.usage.service_tier == "batch" for m in succeeded)


@pytest.mark.asyncio
async def test_batches_outlive_the_client_and_list_pages(sim):
    sim.configure(batch_seconds=600)
    async with aclient(sim) as first:
        created = [(await first.messages.batches.create(requests=many(2))).id for _ in range(3)]
    async with aclient(sim) as second:  # a new client (a restarted worker) finds them by id
        again = await second.messages.batches.retrieve(created[0])
        pages = await second.messages.batches.list(limit=2)
        listed = [b.id async for b in pages]
        canceled = await second.messages.batches.cancel(created[1])
        while (await second.messages.batches.retrieve(created[1])).processing_status != "ended":
            await asyncio.sleep(0.02)
        done = await second.messages.batches.retrieve(created[1])
    assert again.processing_status == "in_progress" and again.request_counts.processing == 2
    assert listed == created[::-1]  # newest first, over two pages
    assert canceled.processing_status == "canceling"
    assert done.request_counts.canceled == 2 and done.results_url is not None


# ------------------------------------------------------------------ fake clock: progress and cancel
class FakeWall:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_progress_and_cancel_keep_done_requests():
    wall = FakeWall()
    app = SimulatorApp(SimConfig(batch_seconds=100.0, seed=3), wall=wall)
    store = app.batch_store
    batch = _create(app, many(40))
    assert batch.counts(wall.now)["processing"] == 40
    seen = []
    for _ in range(4):
        wall.now += 10.0
        seen.append(batch.counts(wall.now))
    processing = [c["processing"] for c in seen]
    assert processing == sorted(processing, reverse=True) and 0 < processing[-1] < 40  # requests finish over time
    done_before = 40 - processing[-1]
    assert seen[-1]["succeeded"] == done_before
    store.cancel(batch.id)
    assert batch.status(wall.now) == "canceling"
    wall.now += 1.0
    assert batch.status(wall.now) == "ended"
    counts = batch.counts(wall.now)
    assert counts == {
        "processing": 0,
        "succeeded": done_before,
        "errored": 0,
        "canceled": 40 - done_before,
        "expired": 0,
    }
    stats = app.stats()["batch"]
    assert stats["succeeded"] == done_before and stats["canceled"] == 40 - done_before
    assert stats["output_tokens"] == sum(  # the requests done before the cancel are billed, the rest not
        item["result"]["message"]["usage"]["output_tokens"]
        for item in batch.results
        if item["result"]["type"] == "succeeded"
    )
    assert stats["output_tokens"] > 0


def test_expired_requests_stay_processing_until_the_batch_ends():
    wall = FakeWall()
    app = SimulatorApp(SimConfig(batch_seconds=100.0, batch_expire=0.5), wall=wall)
    batch = _create(app, many(20))
    wall.now += 99.0
    before = batch.counts(wall.now)
    wall.now += 1.0
    after = batch.counts(wall.now)
    assert before["expired"] == 0 and before["processing"] >= after["expired"] > 0
    assert after["processing"] == 0 and after["succeeded"] + after["expired"] == 20


def test_a_batch_ends_at_24_hours_and_unfinished_requests_expire():
    wall = FakeWall()
    app = SimulatorApp(SimConfig(batch_seconds=4 * 24 * 3600.0), wall=wall)
    batch = _create(app, many(40))
    wall.now += 24 * 3600.0 - 1
    assert batch.status(wall.now) == "in_progress"
    wall.now += 1
    counts = batch.counts(wall.now)
    assert batch.status(wall.now) == "ended"
    assert counts["expired"] > 20 and counts["succeeded"] > 0 and counts["succeeded"] + counts["expired"] == 40
    assert batch.as_dict(wall.now, "http://x")["ended_at"] == batch.as_dict(wall.now, "http://x")["expires_at"]
