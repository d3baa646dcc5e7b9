"""Server-sent events: exact order, event lines, mid-stream errors, stalls."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from urllib.parse import urlsplit

import anthropic
import pytest

from .conftest import HEADERS, MODEL, aclient, parse_sse, raw_post, user, wait_until

ORDER_HEAD = ["message_start", "content_block_start", "ping"]
ORDER_TAIL = ["content_block_stop", "message_delta", "message_stop"]


def check_stream(raw: bytes) -> list[tuple[str, dict]]:
    events = parse_sse(raw)
    for event, data in events:
        assert event is not None, f"data without an event line: {data}"
        assert data is not None, f"event {event} without data"
        assert json.loads(data)["type"] == event
    names = [event for event, _ in events]
    assert names[:3] == ORDER_HEAD
    assert names[-3:] == ORDER_TAIL
    assert set(names[3:-3]) == {"content_block_delta"}
    return [(event, json.loads(data)) for event, data in events]


@pytest.mark.parametrize("tps", [0.0, 20_000.0])  # instant (one write) and paced paths
def test_raw_sse_event_order(sim, tps):
    sim.configure(tps=tps, answer_tokens=300)
    payload = {"model": MODEL, "max_tokens": 1000, "messages": user("stream order"), "stream": True}
    status, headers, body = raw_post(sim.base_url, "/v1/messages", payload)
    assert status == 200
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_")
    events = check_stream(body)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith("msg_")
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert all(delta["type"] == "text_delta" for delta in deltas)
    assert len(deltas) > 3
    text = "".join(delta["text"] for delta in deltas)
    message_delta = events[-2][1]
    assert message_delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert message_delta["usage"]["output_tokens"] == (len(text) + 3) // 4
    plain = json.loads(raw_post(sim.base_url, "/v1/messages", {**payload, "stream": False})[2])
    assert plain["content"][0]["text"] == text


def test_raw_stream_with_rate_limit_headers(sim):
    sim.configure(rpm=100, itpm=10_000, otpm=10_000)
    payload = {"model": MODEL, "max_tokens": 100, "messages": user("hello"), "stream": True}
    status, headers, body = raw_post(sim.base_url, "/v1/messages", payload)
    assert status == 200
    for kind in ("requests", "input-tokens", "output-tokens"):
        for field in ("limit", "remaining", "reset"):
            assert f"anthropic-ratelimit-{kind}-{field}" in headers
    check_stream(body)


@pytest.mark.asyncio
async def test_drop_stream_raises_mid_stream_in_the_sdk(sim):
    sim.configure(answer_tokens=100)
    sim.inject("drop_stream")
    received = []
    async with aclient(sim) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with client.messages.stream(model=MODEL, max_tokens=1000, messages=user("drop me")) as stream:
                async for text in stream.text_stream:
                    received.append(text)
        full = await client.messages.create(model=MODEL, max_tokens=1000, messages=user("drop me"))
    assert caught.value.body == {"type": "error", "error": {"type": "api_error", "message": "stream interrupted"}}
    assert received and len("".join(received)) < len(full.content[0].text)
    assert full.content[0].text.startswith("".join(received))
    stats = sim.stats()
    assert stats["stream_errors"] == 1
    (entry,) = stats["prompt_counts"].values()
    assert entry == {"requests": 2, "paid": 2, "preview": "drop me"}  # a dropped stream with content is billed


def test_drop_stream_raw_ends_with_an_error_event(sim):
    sim.configure(drop_stream=1.0, answer_tokens=60)
    payload = {"model": MODEL, "max_tokens": 1000, "messages": user("raw drop"), "stream": True}
    status, _, body = raw_post(sim.base_url, "/v1/messages", payload)
    assert status == 200
    events = parse_sse(body)
    names = [event for event, _ in events]
    assert names[:3] == ORDER_HEAD
    assert names[-1] == "error" and "content_block_delta" in names
    assert "message_stop" not in names
    assert all(event is not None for event, _ in events)
    # drop_stream applies to streams only: a plain request is unaffected by the rate
    assert raw_post(sim.base_url, "/v1/messages", {**payload, "stream": False})[0] == 200


def _read_events(sock_file, count: int) -> list[str]:
    names = []
    while len(names) < count:
        line = sock_file.readline()
        assert line, "connection closed"
        if line.startswith(b"event: "):
            names.append(line[7:].strip().decode())
        else:
            assert not line.startswith(b"data: ") or names, "data before any event line"
    return names


@pytest.mark.parametrize("fault", ["stall_stream", "hang"])
def test_stalled_stream_sends_only_pings_until_the_client_leaves(sim, fault):
    sim.configure(ping_interval=0.02)
    parts = urlsplit(sim.base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        payload = {"model": MODEL, "max_tokens": 100, "messages": user("stall"), "stream": True}
        conn.request("POST", "/v1/messages", body=json.dumps(payload), headers={**HEADERS, "x-sim-fault": fault})
        response = conn.getresponse()
        assert response.status == 200
        names = _read_events(response, 8)
        assert names[:3] == ORDER_HEAD
        assert set(names[3:]) == {"ping"}
        assert sim.stats(brief=True)["in_flight"] == 1
    finally:
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    wait_until(lambda: sim.stats(brief=True)["in_flight"] == 0, what="the stalled stream to end")
    stats = sim.stats()
    assert stats["by_status"] == {"499": 1}
    assert stats["prompts"]["extra_paid_calls"] == 0
    assert stats["output_tokens"] == 0


@pytest.mark.asyncio
async def test_sdk_sees_no_text_from_a_stalled_stream(sim):
    """Pings keep the socket busy, so only a whole-stream deadline ends the wait."""
    sim.configure(ping_interval=0.01)
    sim.inject("stall_stream")
    async with aclient(sim, timeout=0.2) as client:  # per-read timeout, reset by every ping
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=user("stall")) as stream:

            async def collect() -> list[str]:
                return [text async for text in stream.text_stream]

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(collect(), timeout=0.6)
    await asyncio.to_thread(wait_until, lambda: sim.stats(brief=True)["in_flight"] == 0)


@pytest.mark.asyncio
async def test_ttft_pings_while_waiting(sim):
    sim.configure(ttft=0.1, ping_interval=0.01, answer_tokens=10)
    payload = {"model": MODEL, "max_tokens": 100, "messages": user("slow start"), "stream": True}
    status, _, body = await asyncio.to_thread(raw_post, sim.base_url, "/v1/messages", payload)
    assert status == 200
    names = [event for event, _ in parse_sse(body)]
    assert names.count("ping") > 1  # the standard ping plus pings while waiting for the first token
    first_delta = names.index("content_block_delta")
    assert set(names[2:first_delta]) == {"ping"}
    assert names[-3:] == ORDER_TAIL
