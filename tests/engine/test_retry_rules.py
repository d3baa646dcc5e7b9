"""The SDK's retry rules, over a real TCP server that answers badly on purpose.

A tiny asyncio HTTP server plays a scripted sequence of raw responses (one per
request) so each rule is seen exactly as the wire carries it: ``x-should-retry``,
a 200 whose body is not JSON, a stream cut before ``message_stop``.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from llmjobs.engine import Call, Engine, EngineConfig
from llmjobs.engine._job import needs_streaming
from llmjobs.engine.retry import ABORT, FAIL, RETRY, classify

from .test_retry import status_error

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "fine"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 1},
}


def http(status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}.get(status, "X")
    head = [f"HTTP/1.1 {status} {reason}", f"content-type: {content_type}", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def error(status: int, etype: str, headers: dict | None = None) -> bytes:
    body = json.dumps({"type": "error", "error": {"type": etype, "message": f"scripted {status}"}}).encode()
    return http(status, body, headers=headers)


def sse(*events: tuple[str, dict]) -> bytes:
    return b"".join(f"event: {e}\ndata: {json.dumps(d)}\n\n".encode() for e, d in events)


STREAM_HEAD = (
    ("message_start", {"type": "message_start", "message": {**MESSAGE, "content": [], "usage": {"input_tokens": 5}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "half"}},
    ),
)
STREAM_TAIL = (
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
    ("message_stop", {"type": "message_stop"}),
)


def stream_response(body: bytes) -> bytes:
    """A streamed 200 without content-length: the connection closes at the end of ``body``."""
    head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"
    return head.encode() + body


class ScriptedServer:
    """Answers request k with ``script[k]`` (raw bytes), then closes the connection."""

    def __init__(self, script: list[bytes]) -> None:
        self.script = list(script)
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return "http://127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            k = self.requests
            self.requests += 1
            writer.write(self.script[min(k, len(self.script) - 1)])
            await writer.drain()
        finally:
            writer.close()


def one_call(*, stream: bool = False, max_tokens: int = 16) -> list[Call]:
    params = {"model": "claude-haiku-4-5", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "x"}]}
    return [Call("k", params, stream=stream)]


CFG = EngineConfig(max_attempts=4, backoff_base=0.01, backoff_max=0.02)


async def run_one(script: list[bytes], **kw) -> tuple[object, int]:
    async with ScriptedServer(script) as server, Engine(base_url=server.base_url, config=CFG) as engine:
        [outcome] = await engine.run_ordered(one_call(**kw))
        return outcome, server.requests


@pytest.mark.asyncio
async def test_x_should_retry_false_is_obeyed_even_on_a_500():
    outcome, requests = await run_one([error(500, "api_error", {"x-should-retry": "false"}), http(200, b"{}")])
    assert outcome.status == "failed" and requests == 1
    assert outcome.error_type == "api_error" and "not to retry" in outcome.error_message


@pytest.mark.asyncio
async def test_x_should_retry_true_retries_even_a_400():
    ok = http(200, json.dumps(MESSAGE).encode())
    outcome, requests = await run_one([error(400, "invalid_request_error", {"x-should-retry": "true"}), ok])
    assert outcome.status == "succeeded" and outcome.text == "fine" and requests == 2


@pytest.mark.asyncio
async def test_a_200_that_is_not_json_is_retried():
    ok = http(200, json.dumps(MESSAGE).encode())
    outcome, requests = await run_one([http(200, b"<html>proxy error</html>", "text/html"), ok])
    assert outcome.status == "succeeded" and outcome.text == "fine" and requests == 2


@pytest.mark.asyncio
async def test_a_200_that_never_parses_fails_with_a_clear_reason():
    outcome, requests = await run_one([http(200, b"not json")])
    assert outcome.status == "failed" and requests == CFG.max_attempts
    assert outcome.error_type == "invalid_response" and "not a message" in outcome.error_message


@pytest.mark.asyncio
async def test_a_stream_cut_before_message_stop_is_retried_and_the_half_text_is_never_kept():
    cut = stream_response(sse(*STREAM_HEAD))
    whole = stream_response(sse(*STREAM_HEAD, *STREAM_TAIL))
    outcome, requests = await run_one([cut, whole], stream=True)
    assert outcome.status == "succeeded" and requests == 2
    assert outcome.text == "half" and outcome.stop_reason == "end_turn"  # the whole second answer, not "halfhalf"


@pytest.mark.asyncio
async def test_a_stream_that_is_always_cut_fails_as_incomplete():
    outcome, requests = await run_one([stream_response(sse(*STREAM_HEAD))], stream=True)
    assert outcome.status == "failed" and requests == CFG.max_attempts
    assert outcome.error_type == "incomplete_stream" and outcome.text is None


def test_large_max_tokens_are_sent_as_streams_like_the_sdk_requires():
    small = {"model": "claude-haiku-4-5", "max_tokens": 4096, "messages": []}
    assert not needs_streaming(small)
    assert needs_streaming({**small, "max_tokens": 32_000})  # past the SDK's 10-minute estimate
    assert needs_streaming({**small, "model": "claude-opus-4-0", "max_tokens": 9000})  # its non-streaming cap


@pytest.mark.asyncio
async def test_a_large_max_tokens_call_goes_out_as_a_stream(sim):
    calls = [
        Call(1, {"model": "claude-haiku-4-5", "max_tokens": 32_000, "messages": [{"role": "user", "content": "hi"}]})
    ]
    async with Engine(base_url=sim.base_url) as engine:
        [outcome] = await engine.run_ordered(calls)
    assert outcome.status == "succeeded" and outcome.ttft is not None  # ttft is only measured on streams


def test_a_spend_limit_429_stops_the_run_instead_of_retrying():
    by_code = classify(status_error(429, "rate_limit_error", code="enforced_spend_limit_reached"))
    by_text = classify(status_error(429, "rate_limit_error", "Your organization has reached its monthly spend limit"))
    plain = classify(status_error(429, "rate_limit_error", "Number of requests has exceeded your rate limit"))
    assert by_code.action == ABORT and by_text.action == ABORT
    assert plain.action == RETRY


def test_should_retry_header_in_unit_form():
    assert classify(status_error(503, "api_error", headers={"x-should-retry": "false"})).action == FAIL
    assert classify(status_error(400, "invalid_request_error", headers={"x-should-retry": "true"})).action == RETRY
