"""Faults for a durable client: outages, x-should-retry, retry-after-ms,
streams cut without message_stop, 200s whose body is not JSON. Real server,
real SDK over TCP (the outage's expiry also in process with a fake clock)."""

from __future__ import annotations

import asyncio
import json

import anthropic
import pytest

from llmjobs.simulator.app import SimulatorApp
from llmjobs.simulator.config import SimConfig
from llmjobs.simulator.server import SimulatorError

from .conftest import HEADERS, MODEL, aclient, parse_sse, raw_post, user
from .test_buckets import FakeClock
from .test_remaining_at import asgi_call


async def ask(client: anthropic.AsyncAnthropic, fault: str | None = None, **kwargs):
    headers = {"x-sim-fault": fault} if fault else {}
    kwargs.setdefault("max_tokens", 64)
    return await client.messages.create(model=MODEL, messages=user("fault test"), extra_headers=headers, **kwargs)


# ------------------------------------------------------------------ outage
@pytest.mark.asyncio
async def test_outage_closes_connections_then_ends(sim):
    state = sim.outage(30)
    assert state["active"] and state["mode"] == "close" and 0 < state["seconds_left"] <= 30
    async with aclient(sim) as client:
        for _ in range(2):
            with pytest.raises(anthropic.APIConnectionError):
                await ask(client)
        with pytest.raises(anthropic.APIConnectionError):
            await client.messages.count_tokens(model=MODEL, messages=user("x"))
        stats = sim.stats(brief=True)  # the control plane keeps answering
        assert stats["by_status"] == {"444": 2} and stats["outage"]["active"]
        assert stats["prompts"]["distinct"] == 0  # nothing was read, nothing paid
        assert not sim.outage(0)["active"]
        message = await ask(client)
    assert message.content[0].text
    assert sim.stats(brief=True)["by_status"] == {"200": 1, "444": 2}


@pytest.mark.asyncio
@pytest.mark.parametrize(("mode", "status", "kind"), [("503", 503, "api_error"), ("529", 529, "overloaded_error")])
async def test_outage_status_modes(sim, mode, status, kind):
    sim.outage(30, mode)
    async with aclient(sim) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await ask(client)
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == kind
    assert caught.value.response.headers["x-should-retry"] == "true"
    assert sim.stats(brief=True)["by_status"] == {str(status): 1}


def test_outage_is_validated_and_reset_ends_it(sim):
    with pytest.raises(SimulatorError, match="mode must be one of"):
        sim.outage(5, "explode")
    with pytest.raises(SimulatorError, match="seconds"):
        sim._call("POST", "/_sim/outage?seconds=soon", {})
    sim.outage(60)
    sim.reset()
    assert not sim._call("GET", "/_sim/outage")["active"]
    assert raw_post(sim.base_url, "/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": user("x")})[0] == 200


def test_outage_ends_after_its_seconds():
    clock = FakeClock()
    app = SimulatorApp(SimConfig(), clock=clock)
    app.outage(10, "529")
    payload = {"model": MODEL, "max_tokens": 5, "messages": user("x")}
    assert asyncio.run(asgi_call(app, payload, clock, advance=0))[0] == 529
    clock.advance(9.9)
    assert asyncio.run(asgi_call(app, payload, clock, advance=0))[0] == 529
    clock.advance(0.1)
    assert asyncio.run(asgi_call(app, payload, clock, advance=0))[0] == 200
    assert not app.outage_state()["active"]


# ------------------------------------------------------------------ retry headers
@pytest.mark.asyncio
async def test_should_retry_false_stops_the_sdk_retrying(sim):
    sim.inject("should_retry_false", "should_retry_false")
    async with aclient(sim, max_retries=3) as client:
        with pytest.raises(anthropic.InternalServerError) as caught:
            await ask(client)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert sim.stats(brief=True)["by_status"] == {"500": 1}  # one attempt, not four


@pytest.mark.asyncio
async def test_should_retry_true_makes_the_sdk_retry_a_400(sim):
    sim.inject("should_retry_true")
    async with aclient(sim, max_retries=1) as client:
        message = await ask(client)
    assert message.content[0].text
    assert sim.stats(brief=True)["by_status"] == {"200": 1, "400": 1}


def test_retry_after_ms(sim):
    headers = {**HEADERS, "x-sim-fault": "429_retry_after_ms"}
    status, got, body = raw_post(
        sim.base_url, "/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": user("x")}, headers
    )
    assert status == 429 and json.loads(body)["error"]["type"] == "rate_limit_error"
    assert (got["retry-after-ms"], got["retry-after"]) == ("1500", "2")


# ------------------------------------------------------------------ broken answers
@pytest.mark.asyncio
async def test_cut_stream_ends_without_message_stop_or_error(sim):
    sim.configure(answer_tokens=200)
    sim.inject("cut_stream")
    async with aclient(sim) as client:
        stream = await ask(client, stream=True, max_tokens=500)
        events = [event.type async for event in stream]  # no exception: the stream just ends
    assert events[:2] == ["message_start", "content_block_start"]
    assert "content_block_delta" in events
    assert "message_stop" not in events and "message_delta" not in events
    stats = sim.stats()
    assert stats["stream_errors"] == 1 and stats["by_status"] == {"200": 1}
    assert 0 < stats["output_tokens"] < 200  # billed for what was sent
    payload = {"model": MODEL, "max_tokens": 500, "messages": user("raw cut"), "stream": True}
    _, _, raw = raw_post(sim.base_url, "/v1/messages", payload, {**HEADERS, "x-sim-fault": "cut_stream"})
    names = [event for event, _ in parse_sse(raw)]
    assert names[-1] == "content_block_delta" and "error" not in names


@pytest.mark.asyncio
async def test_cut_plain_request_and_close_are_connection_errors(sim):
    async with aclient(sim) as client:
        for fault in ("cut_stream", "close"):
            with pytest.raises(anthropic.APIConnectionError):
                await ask(client, fault)
    stats = sim.stats(brief=True)
    assert stats["by_status"] == {"444": 2} and stats["output_tokens"] == 0


@pytest.mark.asyncio
async def test_bad_json_is_a_billed_200_the_sdk_cannot_parse(sim):
    async with aclient(sim) as client:
        with pytest.raises(ValueError):  # json.JSONDecodeError from the SDK
            await ask(client, "bad_json")
        stream = await ask(client, "bad_json", stream=True)
        with pytest.raises(ValueError):
            async for _ in stream:
                pass
    stats = sim.stats()
    assert stats["by_status"] == {"200": 2}
    assert stats["prompts"]["distinct"] == 1 and stats["output_tokens"] > 0  # the plain one was paid
    status, _, body = raw_post(
        sim.base_url, "/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": user("x")},
        {**HEADERS, "x-sim-fault": "bad_json"},
    )  # fmt: skip
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(body)


# ------------------------------------------------------------------ random rates
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("setting", "check"),
    [
        ("fail_should_retry_false", lambda exc: exc.response.headers["x-should-retry"] == "false"),
        ("cut_stream", lambda exc: isinstance(exc, anthropic.APIConnectionError)),
        ("bad_json", lambda exc: isinstance(exc, ValueError)),
    ],
)
async def test_random_rates_of_the_new_faults(sim, setting, check):
    sim.configure(**{setting: 1.0})
    async with aclient(sim) as client:
        with pytest.raises(Exception) as caught:
            await ask(client)
    assert check(caught.value)


@pytest.mark.asyncio
async def test_random_cut_stream_rate(sim):
    sim.configure(cut_stream=1.0)
    async with aclient(sim) as client:
        stream = await ask(client, stream=True)
        events = [event.type async for event in stream]
    assert "message_stop" not in events


def test_the_new_faults_can_be_queued(sim):
    names = ["429_retry_after_ms", "should_retry_false", "should_retry_true", "cut_stream", "bad_json", "close"]
    sim.inject(*names)
    assert sim._call("GET", "/_sim/faults")["faults"] == names
