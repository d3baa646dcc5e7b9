"""Introspection: /_sim/stats, /_sim/config, /_sim/reset."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from llmjobs.simulator.server import SimulatorError

from .conftest import MODEL, aclient, raw_post, user, wait_until


@pytest.mark.asyncio
async def test_stats_count_duplicates_and_tokens(sim):
    async with aclient(sim) as client:
        outputs = 0
        for _ in range(3):
            message = await client.messages.create(model=MODEL, max_tokens=64, messages=user("same prompt"))
            outputs += message.usage.output_tokens
        await client.messages.create(model=MODEL, max_tokens=64, messages=user("other prompt"))
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("other prompt")) as stream:
            await stream.get_final_message()
        sim.inject("429")
        with pytest.raises(Exception):
            await client.messages.create(model=MODEL, max_tokens=64, messages=user("third"))
    stats = sim.stats()
    assert stats["requests"] == 6
    assert stats["by_status"] == {"200": 5, "429": 1}
    assert stats["in_flight"] == 0 and stats["peak_in_flight"] == 1
    assert stats["prompts"] == {
        "distinct": 3,
        "requested_more_than_once": 2,
        "paid_more_than_once": 2,
        "extra_paid_calls": 3,
    }
    counts = stats["prompt_counts"]
    by_preview = {entry["preview"]: entry for entry in counts.values()}
    assert by_preview["same prompt"] == {"requests": 3, "paid": 3, "preview": "same prompt"}
    assert by_preview["third"] == {"requests": 1, "paid": 0, "preview": "third"}
    assert all(len(key) == 16 and int(key, 16) >= 0 for key in counts)
    assert stats["input_tokens"] == 3 * 3 + 2 * 3  # "same prompt" and "other prompt": 3 tokens each
    assert stats["output_tokens"] >= outputs
    brief = sim.stats(brief=True)
    assert "prompt_counts" not in brief and brief["requests"] == 6


def test_prompt_key_ignores_non_prompt_fields(sim):
    base = {"model": MODEL, "max_tokens": 10, "messages": user("key")}
    raw_post(sim.base_url, "/v1/messages", base)
    raw_post(sim.base_url, "/v1/messages", {**base, "max_tokens": 20, "metadata": {"user_id": "u"}})
    raw_post(sim.base_url, "/v1/messages", {**base, "system": "different"})
    counts = sim.stats()["prompt_counts"]
    canonical = json.dumps([MODEL, None, base["messages"]], separators=(",", ":"), sort_keys=True)
    assert counts[hashlib.sha1(canonical.encode()).hexdigest()[:16]]["requests"] == 2
    assert len(counts) == 2


@pytest.mark.asyncio
async def test_peak_in_flight(sim):
    async with aclient(sim) as client:
        tasks = [
            asyncio.create_task(
                client.messages.create(
                    model=MODEL, max_tokens=8, messages=user(f"p{i}"), extra_headers={"x-sim-fault": "hang"}
                )
            )
            for i in range(5)
        ]
        await asyncio.to_thread(wait_until, lambda: sim.stats(brief=True)["in_flight"] == 5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.to_thread(wait_until, lambda: sim.stats(brief=True)["in_flight"] == 0)
    stats = sim.stats(brief=True)
    assert stats["peak_in_flight"] == 5
    assert stats["by_status"] == {"499": 5}


def test_reset_clears_everything(sim):
    sim.inject("500", "500")
    raw_post(sim.base_url, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": user("x")})
    assert sim.stats()["faults_queued"] == 1
    sim.reset()
    stats = sim.stats()
    assert stats["requests"] == 0 and stats["by_status"] == {} and stats["prompt_counts"] == {}
    assert stats["faults_queued"] == 0 and stats["peak_in_flight"] == 0
    assert raw_post(sim.base_url, "/v1/messages", {"model": MODEL, "max_tokens": 8, "messages": user("x")})[0] == 200


def test_configure_returns_the_whole_config_and_validates(sim):
    config = sim.configure(rpm=50, ttft=0.0)
    assert config["rpm"] == 50 and set(config) >= {"itpm", "otpm", "burst", "capacity", "tps", "api_key", "max_body"}
    assert sim.config() == config
    with pytest.raises(SimulatorError, match="unknown setting"):
        sim.configure(bogus=1)
    with pytest.raises(SimulatorError, match="probability"):
        sim.configure(fail_500=2)
    with pytest.raises(SimulatorError):
        sim.configure(rpm=-1)
    assert sim.config()["rpm"] == 50  # nothing applied from a rejected change
