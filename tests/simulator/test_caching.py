"""Prompt caching as the API does it: the minimum cacheable prefix per model,
5 m and 1 h TTLs (refreshed on use), several breakpoints, and the
``cache_creation`` split in usage. In process with a fake clock, and over TCP
with the real SDK."""

from __future__ import annotations

import asyncio
import json

import pytest

from llmjobs.simulator.app import SimulatorApp
from llmjobs.simulator.catalog import KNOWN_MODELS, cache_minimum
from llmjobs.simulator.config import SimConfig

from .conftest import MODEL, aclient, raw_post, user
from .test_buckets import FakeClock
from .test_remaining_at import asgi_call

FIVE_K = "s" * 20_000  # 5,000 tokens


def block(text: str, ttl: str | None = None) -> dict:
    control = {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}
    return {"type": "text", "text": text, "cache_control": control}


def payload(system: list, question: str = "q" * 40, model: str = MODEL) -> dict:
    return {"model": model, "max_tokens": 10, "system": system, "messages": user(question)}


class Fake:
    def __init__(self, **config) -> None:
        self.clock = FakeClock()
        self.app = SimulatorApp(SimConfig(**config), clock=self.clock)

    def usage(self, body: dict) -> dict:
        status, _, raw = asyncio.run(asgi_call(self.app, body, self.clock, advance=0))
        assert status == 200, raw
        return json.loads(raw)["usage"]


def split(usage: dict) -> tuple[int, int, int, int]:
    """(5 m writes, 1 h writes, reads, uncached input)."""
    creation = usage["cache_creation"]
    assert (
        usage["cache_creation_input_tokens"]
        == creation["ephemeral_5m_input_tokens"] + creation["ephemeral_1h_input_tokens"]
    )
    return (
        creation["ephemeral_5m_input_tokens"], creation["ephemeral_1h_input_tokens"],
        usage["cache_read_input_tokens"], usage["input_tokens"],
    )  # fmt: skip


def test_published_minimums():
    assert cache_minimum("claude-haiku-4-5") == cache_minimum("claude-haiku-4-5-20251001") == 4096
    assert cache_minimum("claude-opus-4-5-20251101") == cache_minimum("claude-opus-4-6") == 4096
    assert cache_minimum("claude-sonnet-4-6") == 2048
    assert cache_minimum("claude-sonnet-4-5-20250929") == cache_minimum("claude-opus-4-1") == 1024
    assert all(cache_minimum(model) in (1024, 2048, 4096) for model in KNOWN_MODELS)


def test_a_prefix_below_the_model_minimum_is_not_cached():
    fake = Fake()
    short = [block("s" * 8000)]  # 2,000 tokens: under haiku-4-5's 4,096, over sonnet-4-5's 1,024
    for _ in range(2):
        assert split(fake.usage(payload(short))) == (0, 0, 0, 2010)
    assert split(fake.usage(payload(short, model="claude-sonnet-4-5"))) == (2000, 0, 0, 10)
    assert split(fake.usage(payload(short, model="claude-sonnet-4-5"))) == (0, 0, 2000, 10)
    anything = Fake(cache_min_tokens=0)
    anything.usage(payload(short))
    assert split(anything.usage(payload(short))) == (0, 0, 2000, 10)


def test_five_minute_ttl_is_refreshed_by_each_read():
    fake = Fake()
    system = [block(FIVE_K)]
    assert split(fake.usage(payload(system))) == (5000, 0, 0, 10)
    fake.clock.advance(299)
    assert split(fake.usage(payload(system))) == (0, 0, 5000, 10)  # and lives 5 m from now
    fake.clock.advance(299)
    assert split(fake.usage(payload(system))) == (0, 0, 5000, 10)
    fake.clock.advance(300)
    assert split(fake.usage(payload(system))) == (5000, 0, 0, 10)  # expired: written again


def test_one_hour_ttl():
    fake = Fake()
    system = [block(FIVE_K, "1h")]
    assert split(fake.usage(payload(system))) == (0, 5000, 0, 10)
    fake.clock.advance(3599)
    assert split(fake.usage(payload(system))) == (0, 0, 5000, 10)
    fake.clock.advance(3600)
    assert split(fake.usage(payload(system))) == (0, 5000, 0, 10)


def test_several_breakpoints_read_the_longest_cached_prefix_and_write_the_rest():
    fake = Fake()
    first = [block(FIVE_K, "1h"), block("t" * 20_000, "5m")]
    assert split(fake.usage(payload(first))) == (5000, 5000, 0, 10)  # each segment at its own TTL
    assert split(fake.usage(payload(first))) == (0, 0, 10_000, 10)
    other = [block(FIVE_K, "1h"), block("u" * 20_000, "5m")]
    assert split(fake.usage(payload(other))) == (5000, 0, 5000, 10)  # the shared 1 h prefix is read
    fake.clock.advance(301)  # the 5 m entries expired, the 1 h one was refreshed 301 s ago
    assert split(fake.usage(payload(first))) == (5000, 0, 5000, 10)


def test_cache_identity_ignores_the_cache_control_itself():
    fake = Fake()
    fake.usage(payload([block(FIVE_K, "5m")]))
    assert split(fake.usage(payload([block(FIVE_K)])))[2] == 5000  # "5m" is the default ttl


@pytest.mark.parametrize(
    ("system", "message"),
    [
        ([block("a" * 40, "5m"), block("b" * 40, "1h")], "must not come after"),
        ([block("a" * 40, "2h")], "ttl"),
        ([{"type": "text", "text": "a", "cache_control": {"type": "forever"}}], "ephemeral"),
        ([block(f"{i}" * 40) for i in range(5)], "A maximum of 4 blocks with cache_control"),
    ],
)
def test_invalid_cache_control_is_a_400(sim, system, message):
    status, _, body = raw_post(sim.base_url, "/v1/messages", payload(system))
    assert status == 400
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]


@pytest.mark.asyncio
async def test_the_sdk_sees_the_split_plain_streamed_and_in_stats(sim):
    system = [block(FIVE_K, "1h"), block("t" * 20_000)]
    async with aclient(sim) as client:
        first = await client.messages.create(model=MODEL, max_tokens=10, system=system, messages=user("q"))
        async with client.messages.stream(model=MODEL, max_tokens=10, system=system, messages=user("q")) as stream:
            start = None
            async for event in stream:
                if event.type == "message_start":
                    start = event.message.usage
            final = await stream.get_final_message()
    assert first.usage.cache_creation.ephemeral_1h_input_tokens == 5000
    assert first.usage.cache_creation.ephemeral_5m_input_tokens == 5000
    assert start.cache_read_input_tokens == final.usage.cache_read_input_tokens == 10_000
    assert start.cache_creation.ephemeral_1h_input_tokens == 0
    stats = sim.stats(brief=True)
    assert stats["cache_creation_input_tokens"] == 10_000
    assert (stats["cache_creation_1h_input_tokens"], stats["cache_creation_5m_input_tokens"]) == (5000, 5000)
    assert stats["cache_read_input_tokens"] == 10_000


def test_batch_requests_share_the_cache(sim):
    params = payload([block(FIVE_K, "1h")])
    requests = [{"custom_id": f"r{i}", "params": params} for i in range(3)]
    status, _, _ = raw_post(sim.base_url, "/v1/messages/batches", {"requests": requests})
    assert status == 200
    batch = sim.stats(brief=True)["batch"]
    assert (batch["cache_creation_1h_input_tokens"], batch["cache_read_input_tokens"]) == (5000, 10_000)
