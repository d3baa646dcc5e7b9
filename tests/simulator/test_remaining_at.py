"""When the ``-remaining`` headers are computed (``remaining_at``), the tier
presets, and the API's bucket semantics, in process with a fake clock and over
TCP with the real SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from llmjobs.simulator.app import SimulatorApp
from llmjobs.simulator.buckets import rfc3339
from llmjobs.simulator.config import TIERS, ConfigError, SimConfig
from llmjobs.simulator.server import SimulatorProcess

from .conftest import MODEL, aclient, raw_post, user
from .test_buckets import FakeClock

OUT = "anthropic-ratelimit-output-tokens-remaining"
WALL = 1_700_000_000.0


async def asgi_call(app: SimulatorApp, payload: dict[str, Any], clock: FakeClock, advance: float):
    """One request straight into the ASGI app. The fake clock moves ``advance``
    seconds while the request waits for its answer (the simulator listens for
    a disconnect while it waits); returns (status, headers, body)."""
    body = json.dumps(payload).encode()
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        if calls == 2:
            clock.advance(advance)
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/messages",
        "query_string": b"",
        "headers": [(b"x-api-key", b"k"), (b"anthropic-version", b"2023-06-01")],
    }
    await app(scope, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return sent[0]["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


def fake_app(remaining_at: str, clock: FakeClock) -> SimulatorApp:
    # 6,000 output tokens per minute: capacity 6,000, refill 100 per second.
    # ttft is a real (tiny) sleep, only so the request waits for its answer.
    config = SimConfig(otpm=6000, ttft=0.002, remaining_at=remaining_at)
    return SimulatorApp(config, clock=clock, wall=lambda: WALL)


@pytest.mark.parametrize(
    ("remaining_at", "expected"),
    [
        ("admission", lambda out: 5000),  # 6000 - the 1000 reserved, before any refill
        ("answer", lambda out: 5010),  # + 0.1 s of refill, the reservation still held
        ("refund", lambda out: 5010 + 1000 - out),  # + the unused reservation given back
    ],
)
def test_plain_answer_headers_follow_remaining_at(remaining_at, expected):
    clock = FakeClock()
    app = fake_app(remaining_at, clock)
    payload = {"model": MODEL, "max_tokens": 1000, "messages": user("convention")}
    status, headers, body = asyncio.run(asgi_call(app, payload, clock, advance=0.1))
    assert status == 200
    out = json.loads(body)["usage"]["output_tokens"]
    assert 10 < out < 1000
    assert int(headers[OUT]) == expected(out)
    # Whatever the header said, the bucket itself was refunded at the end.
    assert app.limiter.output_tokens.level == pytest.approx(6000 - out + 10)


@pytest.mark.parametrize("remaining_at", ["admission", "answer", "refund"])
def test_stream_headers_hold_the_reservation_under_every_convention(remaining_at):
    clock = FakeClock()
    app = fake_app(remaining_at, clock)
    payload = {"model": MODEL, "max_tokens": 1000, "messages": user("convention"), "stream": True}
    status, headers, body = asyncio.run(asgi_call(app, payload, clock, advance=0.1))
    assert status == 200 and body.rstrip().endswith(b'{"type":"message_stop"}')
    assert int(headers[OUT]) == 5000  # sent at the start: nothing produced, nothing refunded yet
    delta = next(line for line in body.decode().split("\n") if '"message_delta"' in line)
    out = json.loads(delta.removeprefix("data: "))["usage"]["output_tokens"]
    assert app.limiter.output_tokens.level == pytest.approx(6000 - out + 10)


def test_reset_is_rfc3339_time_to_full_and_429_carries_retry_after():
    clock = FakeClock()
    app = SimulatorApp(SimConfig(rpm=60, otpm=6000), clock=clock, wall=lambda: WALL)
    payload = {"model": MODEL, "max_tokens": 5000, "messages": user("reset")}
    status, headers, body = asyncio.run(asgi_call(app, payload, clock, advance=0))
    out = json.loads(body)["usage"]["output_tokens"]
    assert status == 200
    assert headers["anthropic-ratelimit-requests-limit"] == "60"
    assert headers["anthropic-ratelimit-requests-remaining"] == "59"
    assert headers["anthropic-ratelimit-requests-reset"] == rfc3339(WALL + 1)  # one request refills in 1 s
    assert headers["anthropic-ratelimit-output-tokens-reset"] == rfc3339(WALL + out / 100)
    # max_tokens above the capacity reserves the whole bucket: it waits until the bucket is full.
    big = {**payload, "max_tokens": 8000}
    status, headers, body = asyncio.run(asgi_call(app, big, clock, advance=0))
    assert status == 429
    assert headers["retry-after"] == "%d" % -(-out // 100)  # whole seconds, rounded up
    assert headers[OUT] == "%d" % (6000 - out)
    assert json.loads(body)["error"]["type"] == "rate_limit_error"


def test_itpm_counts_cache_writes_but_not_cache_reads():
    clock = FakeClock()
    app = SimulatorApp(SimConfig(itpm=60_000), clock=clock, wall=lambda: WALL)
    system = [{"type": "text", "text": "s" * 8000, "cache_control": {"type": "ephemeral"}}]  # 2,000 tokens
    payload = {"model": MODEL, "max_tokens": 10, "system": system, "messages": user("q" * 400)}  # + 100
    _, first, body = asyncio.run(asgi_call(app, payload, clock, advance=0))
    usage = json.loads(body)["usage"]
    assert (usage["input_tokens"], usage["cache_creation_input_tokens"]) == (100, 2000)
    assert first["anthropic-ratelimit-input-tokens-remaining"] == "57900"  # the cache write counts
    _, second, body = asyncio.run(asgi_call(app, payload, clock, advance=0))
    assert json.loads(body)["usage"]["cache_read_input_tokens"] == 2000
    assert second["anthropic-ratelimit-input-tokens-remaining"] == "57800"  # the cache read does not


# ------------------------------------------------------------------ over TCP, real SDK
@pytest.mark.asyncio
@pytest.mark.parametrize("remaining_at", ["admission", "answer", "refund"])
async def test_conventions_over_tcp_with_the_sdk(sim, remaining_at):
    sim.configure(otpm=1000, remaining_at=remaining_at)  # refill ~17 tokens/s: negligible here
    async with aclient(sim) as client:
        raw = await client.messages.with_raw_response.create(model=MODEL, max_tokens=800, messages=user("tcp"))
        message = await raw.parse()
        remaining = int(raw.headers[OUT])
        if remaining_at == "refund":
            assert 1000 - message.usage.output_tokens <= remaining <= 1000
        else:
            assert 200 <= remaining < 1000 - message.usage.output_tokens  # the 800 still held
        sim.reset()
        async with client.messages.with_streaming_response.create(
            model=MODEL, max_tokens=800, messages=user("tcp"), stream=True
        ) as response:
            assert 200 <= int(response.headers[OUT]) < 500  # a stream's headers come first
            async for _ in response.iter_lines():
                pass


def test_remaining_at_is_validated(sim):
    with pytest.raises(ConfigError):
        SimConfig().update({"remaining_at": "later"})
    assert sim.configure(remaining_at="answer")["remaining_at"] == "answer"


# ------------------------------------------------------------------ tiers
def test_tier_presets_are_the_published_limits():
    assert TIERS[4] == (4_000, 2_000_000, 400_000)
    for tier, (rpm, itpm, otpm) in TIERS.items():
        config = SimConfig(burst=5.0)
        config.update({"tier": tier})
        assert (config.rpm, config.itpm, config.otpm, config.burst) == (rpm, itpm, otpm, 60.0)


def test_explicit_limits_override_the_tier():
    config = SimConfig()
    config.update({"tier": 2, "rpm": 7, "burst": 5})
    assert (config.rpm, config.itpm, config.otpm, config.burst) == (7, 450_000, 90_000, 5.0)
    with pytest.raises(ConfigError):
        config.update({"tier": 5})


def test_tier_over_config_endpoint(sim):
    config = sim.configure(tier=1)
    assert (config["rpm"], config["itpm"], config["otpm"]) == (50, 30_000, 8_000)
    payload = {"model": MODEL, "max_tokens": 100, "messages": user("tier")}
    status, headers, _ = raw_post(sim.base_url, "/v1/messages", payload)
    assert status == 200
    assert headers["anthropic-ratelimit-input-tokens-limit"] == "30000"
    assert headers["anthropic-ratelimit-requests-remaining"] == "49"


def test_tier_flag_with_an_explicit_override():
    with SimulatorProcess("--tier", "4", "--rpm", "7", "--ttft", "0", "--tps", "0") as server:
        config = server.config()
        assert (config["tier"], config["rpm"], config["itpm"], config["otpm"], config["burst"]) == (
            4, 7, 2_000_000, 400_000, 60.0,
        )  # fmt: skip


def test_bad_tier_flag_exits_with_an_error():
    result = subprocess.run([sys.executable, "-m", "llmjobs.simulator", "--tier", "9"], capture_output=True, text=True)
    assert result.returncode != 0 and "tier" in result.stderr
