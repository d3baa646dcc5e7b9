"""Server-sent events for ``stream: true``: ``message_start``,
``content_block_start``, ``ping``, ``content_block_delta``...,
``content_block_stop``, ``message_delta``, ``message_stop``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from .answers import count_tokens
from .buckets import Admission
from .prompt import Answer, Prompt
from .respond import Headers, Receive, Send, request_id, until_disconnect
from .stats import DISCONNECTED, PromptStat

if TYPE_CHECKING:
    from .app import SimulatorApp

__all__ = ["split", "stream"]

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_EV_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_EV_BLOCK_START = (
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
)
_EV_BLOCK_STOP = b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
_EV_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_EV_DROPPED = b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"stream interrupted"}}\n\n'


def _sse(event: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + event + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _message_start(req_id: str, prompt: Prompt) -> bytes:
    message: dict[str, Any] = {
        "id": "msg_01" + req_id[8:],
        "type": "message",
        "role": "assistant",
        "model": prompt.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**prompt.usage(), "output_tokens": 1, "service_tier": "standard"},
    }
    return _sse(b"message_start", {"type": "message_start", "message": message})


def _tail(prompt: Prompt, answer: Answer) -> bytes:
    """``content_block_stop``, ``message_delta`` with the final usage, ``message_stop``."""
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence},
        "usage": {**prompt.usage(), "output_tokens": answer.output_tokens},
    }
    return _EV_BLOCK_STOP + _sse(b"message_delta", delta) + _EV_MESSAGE_STOP


async def stream(
    app: SimulatorApp,
    send: Send,
    receive: Receive,
    prompt: Prompt,
    stat: PromptStat,
    admission: Admission,
    answer: Answer,
    fault: str | None,
    snapshot: Headers | None,
) -> int:
    """Send ``answer`` as a stream, paced by ttft/tps; apply a stream fault.
    Returns the status for the stats (499 if the client left)."""
    cfg = app.config
    limiter = app.limiter
    req_id = request_id()
    headers = [*_SSE_HEADERS, (b"request-id", req_id.encode())]
    # The headers go out before the answer is produced, so under every
    # remaining_at convention they report this call's reservation held.
    if snapshot is not None:
        headers.extend(snapshot)
    elif limiter.enabled:
        headers.extend(limiter.headers())
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    tool = answer.tool_name is not None
    head = _message_start(req_id, prompt) + _block_start(answer, req_id) + _EV_PING
    if fault == "bad_json":  # a message_start event whose data is cut short: nothing produced, nothing billed
        start = _message_start(req_id, prompt).rstrip(b"\n")
        await send({"type": "http.response.body", "body": start[: len(start) // 2] + b"\n\n"})
        limiter.settle(admission.output_reserved, 0)
        return 200
    text = answer.text
    stall = fault in ("stall_stream", "hang")

    if not (cfg.ttft or cfg.tps or stall or fault):
        # Instant: the whole stream in one write.
        body = head + b"".join(_delta(piece, tool) for piece in split(text, 48)) + _tail(prompt, answer)
        await send({"type": "http.response.body", "body": body})
        limiter.settle(admission.output_reserved, answer.output_tokens)
        app.counters.bill(prompt, stat, answer.output_tokens)
        return 200

    loop = asyncio.get_running_loop()
    disconnect = asyncio.ensure_future(until_disconnect(receive))
    ping_every = cfg.ping_interval
    sent_chars = 0
    try:
        await send({"type": "http.response.body", "body": head, "more_body": True})

        async def pause(until: float) -> bool:
            """Wait until loop time ``until`` sending pings; False if the client left."""
            while True:
                now = loop.time()
                if disconnect.done():
                    return False
                if until <= now:
                    return True
                step = min(until - now, ping_every)
                await asyncio.wait((disconnect,), timeout=step)
                if disconnect.done():
                    return False
                if loop.time() < until - 1e-3:
                    await send({"type": "http.response.body", "body": _EV_PING, "more_body": True})

        if stall:
            await pause(float("inf"))
            return DISCONNECTED

        t0 = loop.time() + app.ttft()
        if not await pause(t0):
            return DISCONNECTED
        tps = cfg.tps
        chunk_chars = min(256, max(4, int(tps * 0.1))) if tps else 48  # ~40 deltas/s at most
        pieces = split(text, chunk_chars)
        cut = fault in ("drop_stream", "cut_stream")
        if cut and len(pieces) == 1 and len(text) > 1:
            pieces = [text[: len(text) // 2], text[len(text) // 2 :]]
        drop_after = max(1, len(pieces) // 2) if cut else -1
        for index, piece in enumerate(pieces):
            if index == drop_after:
                break
            sent_chars += len(piece)
            if tps and not await pause(t0 + count_tokens(text[:sent_chars]) / tps):
                sent_chars -= len(piece)
                return DISCONNECTED
            await send({"type": "http.response.body", "body": _delta(piece, tool), "more_body": True})
        if cut:  # drop_stream: an error event; cut_stream: just EOF, no message_stop
            app.counters.stream_errors += 1
            body = _EV_DROPPED if fault == "drop_stream" else b""
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return 200
        await send({"type": "http.response.body", "body": _tail(prompt, answer), "more_body": False})
        sent_chars = -1
        return 200
    finally:
        disconnect.cancel()
        if sent_chars == -1:
            limiter.settle(admission.output_reserved, answer.output_tokens)
            app.counters.bill(prompt, stat, answer.output_tokens)
        elif sent_chars > 0:  # dropped or abandoned after content: billed for what was sent
            billed = count_tokens(text[:sent_chars])
            limiter.settle(admission.output_reserved, billed)
            app.counters.bill(prompt, stat, billed)
        else:
            limiter.settle(admission.output_reserved, 0)


def split(text: str, chunk_chars: int) -> list[str]:
    """Split ``text`` into pieces of about ``chunk_chars`` at word boundaries;
    the pieces concatenate back to ``text`` exactly."""
    if len(text) <= chunk_chars:
        return [text] if text else []
    pieces: list[str] = []
    start = 0
    n = len(text)
    while start < n:
        end = start + chunk_chars
        if end >= n:
            pieces.append(text[start:])
            break
        space = text.find(" ", end)
        if space < 0 or space - start > chunk_chars * 3:
            space = end
        pieces.append(text[start:space])
        start = space
    return pieces


def _block_start(answer: Answer, req_id: str) -> bytes:
    """``content_block_start``: an empty text block, or a tool_use block with empty input."""
    if answer.tool_name is None:
        return _EV_BLOCK_START
    block = {**answer.content(req_id), "input": {}}
    return _sse(b"content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})


def _delta(piece: str, tool: bool = False) -> bytes:
    if tool:
        delta = {"type": "input_json_delta", "partial_json": piece}
        return _sse(b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
        + orjson.dumps(piece)
        + b"}}\n\n"
    )
