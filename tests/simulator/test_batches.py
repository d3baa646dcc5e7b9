"""Message Batches API through the real SDK."""

from __future__ import annotations

import anthropic
import pytest

from .conftest import MODEL, aclient, user


def request(custom_id: str, text: str, **params) -> dict:
    return {"custom_id": custom_id, "params": {"model": MODEL, "max_tokens": 64, "messages": user(text), **params}}


@pytest.mark.asyncio
async def test_batch_round_trip(sim):
    async with aclient(sim) as client:
        batch = await client.messages.batches.create(
            requests=[
                request("a", "Classify as one of: cat, dog. Text: the dog barked"),
                request("b", "hello there"),
                request("bad", "x", temperature=1.0),
                request("missing", "x", model="claude-nope"),
            ]
        )
        assert batch.type == "message_batch" and batch.id.startswith("msgbatch_")
        assert batch.processing_status == "ended"  # batch_seconds=0
        assert batch.results_url.startswith(sim.base_url)
        assert (batch.request_counts.succeeded, batch.request_counts.errored) == (2, 2)
        results = {item.custom_id: item.result async for item in await client.messages.batches.results(batch.id)}
        direct = await client.messages.create(model=MODEL, max_tokens=64, messages=user("hello there"))
        listed = [b.id async for b in client.messages.batches.list()]
        deleted = await client.messages.batches.delete(batch.id)
    assert results["a"].type == "succeeded" and results["a"].message.content[0].text == "dog"
    assert results["a"].message.usage.service_tier == "batch"
    assert results["b"].message.content[0].text == direct.content[0].text
    assert results["bad"].type == "errored" and results["bad"].error.error.type == "invalid_request_error"
    assert results["missing"].error.error.type == "not_found_error"
    assert listed == [batch.id] and deleted.id == batch.id
    stats = sim.stats()
    assert stats["batch"]["batches"] == 1 and stats["batch"]["succeeded"] == 2 and stats["batch"]["errored"] == 2
    assert stats["requests"] == 1  # batch requests are not Messages API requests ...
    assert stats["prompts"]["paid_more_than_once"] == 1  # ... but duplicate spend is still visible


@pytest.mark.asyncio
async def test_batch_in_progress_then_cancel(sim):
    sim.configure(batch_seconds=600)
    async with aclient(sim) as client:
        batch = await client.messages.batches.create(requests=[request("a", "one"), request("b", "two")])
        assert batch.processing_status == "in_progress" and batch.results_url is None
        assert batch.request_counts.processing == 2
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.delete(batch.id)
        canceled = await client.messages.batches.cancel(batch.id)
        assert canceled.processing_status == "canceling" and canceled.cancel_initiated_at is not None

        async def ended() -> anthropic.types.messages.MessageBatch:
            return await client.messages.batches.retrieve(batch.id)

        import asyncio

        while (current := await ended()).processing_status != "ended":
            await asyncio.sleep(0.02)
        assert current.request_counts.canceled == 2
        results = [item.result.type async for item in await client.messages.batches.results(batch.id)]
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve("msgbatch_nope")
    assert results == ["canceled", "canceled"]
    assert sim.stats()["batch"]["output_tokens"] == 0  # canceled requests are not billed


@pytest.mark.asyncio
async def test_batch_validation(sim):
    async with aclient(sim) as client:
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.create(requests=[])
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.create(requests=[request("same", "a"), request("same", "b")])
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.create(requests=[request("has space", "a")])
