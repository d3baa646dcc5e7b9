"""``TextStream``'s limits (first token, idle between events, whole stream), kept by one timer
per stream: against a scripted SSE server over TCP (the simulator cannot stall mid-stream),
through the real SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from aiohttp import web

from llmjobs.engine import AttemptTimeout, TextStream, make_client

PARAMS = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


def ev(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


START = ev("message_start", {"message": {"id": "msg_1", "model": "claude-haiku-4-5", "usage": {"input_tokens": 3}}})
BLOCK = ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
PING = ev("ping", {})
END = (
    ev("content_block_stop", {"index": 0})
    + ev("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})
    + ev("message_stop", {})
)


def delta(text: str) -> bytes:
    return ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})


Script = Callable[[], AsyncIterator[bytes]]


class ScriptedServer:
    """Answers POST /v1/messages with the chunks of ``script`` (set per test); records how
    each response ended: ``done`` or ``closed`` (the client went away)."""

    def __init__(self) -> None:
        self.script: Script | None = None
        self.ended: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        assert self.script is not None
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            async for chunk in self.script():
                await response.write(chunk)
            await response.write_eof()
            self.ended.append("done")
        except (ConnectionResetError, asyncio.CancelledError):
            self.ended.append("closed")
            raise
        return response

    async def wait_ended(self, n: int) -> None:
        async with asyncio.timeout(10):
            while len(self.ended) < n:
                await asyncio.sleep(0.01)


@pytest_asyncio.fixture
async def server():
    scripted = ScriptedServer()
    app = web.Application()
    app.router.add_post("/v1/messages", scripted.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scripted.url = f"http://127.0.0.1:{port}"
    yield scripted
    await runner.cleanup()


async def pinging(every: float) -> AsyncIterator[bytes]:
    while True:
        await asyncio.sleep(every)
        yield PING


@pytest.mark.asyncio
async def test_a_stream_that_stalls_after_its_first_token_times_out_and_is_closed(server):
    async def script():
        yield START + BLOCK + delta("Hello")
        async for ping in pinging(0.02):  # pings are no activity
            yield ping

    server.script = script
    async with make_client(base_url=server.url) as client:
        got = []
        with pytest.raises(AttemptTimeout, match=r"no next event within 0\.2s"):
            async with TextStream(client, PARAMS, first_token_timeout=5.0, idle_timeout=0.2) as stream:
                async for text in stream:
                    got.append(text)
        assert got == ["Hello"] and stream.ttft is not None
    await server.wait_ended(1)
    assert server.ended == ["closed"]  # the upstream request was closed


@pytest.mark.asyncio
async def test_a_stream_that_never_starts_times_out_on_the_first_token_limit(server):
    async def script():
        yield START + BLOCK
        async for ping in pinging(0.02):
            yield ping

    server.script = script
    async with make_client(base_url=server.url) as client:
        with pytest.raises(AttemptTimeout, match=r"no first token within 0\.2s"):
            async with TextStream(client, PARAMS, first_token_timeout=0.2, idle_timeout=5.0) as stream:
                async for _ in stream:
                    pass
    await server.wait_ended(1)
    assert server.ended == ["closed"]


@pytest.mark.asyncio
async def test_the_whole_stream_limit_ends_a_stream_that_keeps_streaming(server):
    async def script():
        yield START + BLOCK
        while True:
            yield delta("word ")
            await asyncio.sleep(0.02)

    server.script = script
    async with make_client(base_url=server.url) as client:
        got = []
        with pytest.raises(AttemptTimeout):
            async with TextStream(
                client, PARAMS, first_token_timeout=5.0, idle_timeout=5.0, total_timeout=0.3
            ) as stream:
                async for text in stream:
                    got.append(text)
        assert len(got) > 1  # it streamed, then the whole-stream limit ended it
    await server.wait_ended(1)
    assert server.ended == ["closed"]


@pytest.mark.asyncio
async def test_steady_tokens_and_a_slow_reader_never_time_out(server):
    """The idle limit counts only while the reader waits for an event: tokens that keep
    coming within it, or a reader slower than it, are no stall."""

    async def script():
        yield START + BLOCK
        for k in range(10):  # ten tokens, 0.05 s apart: 0.5 s in all, over an idle limit of 0.15 s
            await asyncio.sleep(0.05)
            yield delta(f"t{k} ")
        yield END

    server.script = script
    async with make_client(base_url=server.url) as client:
        async with TextStream(client, PARAMS, first_token_timeout=5.0, idle_timeout=0.15) as stream:
            got = [text async for text in stream]
        assert "".join(got) == "".join(f"t{k} " for k in range(10))
        assert stream.finished and stream.stop_reason == "end_turn"

        async with TextStream(client, PARAMS, first_token_timeout=5.0, idle_timeout=0.15) as stream:
            slow = []
            async for text in stream:
                slow.append(text)
                await asyncio.sleep(0.2)  # longer than the idle limit, between reads
        assert slow == got and stream.finished
    await server.wait_ended(2)
    assert server.ended == ["done", "done"]


@pytest.mark.asyncio
async def test_a_reader_cancelled_from_outside_is_cancelled_not_timed_out(server):
    async def script():
        yield START + BLOCK + delta("Hello")
        async for ping in pinging(0.02):
            yield ping

    server.script = script
    async with make_client(base_url=server.url) as client:
        stream = TextStream(client, PARAMS, first_token_timeout=5.0, idle_timeout=5.0)
        await stream.__aenter__()
        assert await anext(stream) == "Hello"
        reader = asyncio.create_task(anext(stream))
        await asyncio.sleep(0.1)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert reader.cancelled()
        await stream.aclose()
    await server.wait_ended(1)
    assert server.ended == ["closed"]  # the client went away: the upstream request was closed
