"""One HTTP attempt of a call, plain or streamed: the request, its timeouts, and the parsed answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import httpx2

from ._job import Job, Latency
from ._json import loads
from ._types import SUCCEEDED, EngineConfig, Outcome
from .repair import tool_answer
from .retry import AttemptTimeout, InvalidResponse, StreamError
from .stream import StreamState, iter_sse, open_stream

__all__ = ["messages_url", "plain_attempt", "stream_attempt"]

_PATH = "/v1/messages"


def messages_url(client: Any) -> str:
    """The Messages API's absolute URL on ``client``'s ``base_url``, merged as the SDK merges a
    relative path (``base_url``'s path + ``v1/messages``). Posting to it sends the same request
    as posting to ``/v1/messages``, without parsing and merging the base URL at every call
    (about 40 us of the ~0.6 ms a start costs). The relative path if the client has no
    ``base_url`` of its own (a test double)."""
    base = getattr(client, "base_url", None)
    if not isinstance(base, httpx2.URL):
        return _PATH
    return str(base.copy_with(raw_path=base.raw_path + _PATH.lstrip("/").encode()))


async def plain_attempt(
    client: Any, job: Job, timeout: float, latencies: Latency, url: str = _PATH
) -> tuple[Outcome, Any]:
    """One non-streamed request (to ``url``: see :func:`messages_url`); a body that is not a
    message raises ``InvalidResponse``."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        async with asyncio.timeout(timeout):
            response = await client.post(url, body=job.params, cast_to=httpx2.Response)
    except TimeoutError:
        raise AttemptTimeout(f"no response within {timeout:g}s") from None
    latency = loop.time() - t0
    latencies.add(latency)
    try:
        data = loads(response.content)
        parts = [b.get("text", "") for b in data["content"] if b.get("type") == "text"]
        if not parts:  # a forced tool (structured output's fallback): its input is the answer
            parts = tool_answer(data["content"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InvalidResponse(
            f"the API answered {response.status_code} with a body that is not a message: {response.content[:80]!r}"
        ) from None
    outcome = Outcome(
        job.call.key,
        SUCCEEDED,
        "".join(parts),
        data.get("stop_reason"),
        data.get("usage"),
        job.attempts,
        latency,
        None,
        None,
        None,
        data.get("id"),
    )
    return outcome, response.headers


async def stream_attempt(
    client: Any, job: Job, cfg: EngineConfig, on_open: Callable[[Any], object] | None = None
) -> tuple[Outcome, Any]:
    """One streamed request, guarded by first-token and idle timeouts; a stream cut
    before ``message_stop`` raises (its truncated text is never kept). ``on_open`` is
    called with the response headers as soon as they arrive (a 200), before the answer."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    first, idle = cfg.first_token_timeout, cfg.idle_timeout
    hard = t0 + (cfg.max_attempt_timeout * (2**job.timeouts))
    state = StreamState(t0)
    response = None
    try:
        async with asyncio.timeout_at(min(t0 + first, hard)) as cm:
            response = await open_stream(client, job.params)
            if on_open is not None:
                on_open(response.headers)
            async with contextlib.aclosing(iter_sse(response)) as events:
                async for event, data in events:
                    if event == "ping":
                        continue
                    now = loop.time()
                    try:
                        state.feed(event, data, now)
                    except (ValueError, KeyError, TypeError, AttributeError):
                        raise InvalidResponse(f"unreadable {event} event in the stream: {data[:80]!r}") from None
                    if state.finished:
                        break
                    if state.ttft is not None:
                        cm.reschedule(min(now + idle, hard))
    except TimeoutError:
        if state.ttft is None:
            raise AttemptTimeout(f"stream stalled: no first token within {first:g}s") from None
        raise AttemptTimeout(f"stream stalled: idle for {idle:g}s") from None
    finally:
        if response is not None:
            await response.aclose()
    if not state.finished:
        # a truncated answer is never kept: the whole call is tried again
        raise StreamError("incomplete_stream", "the stream ended before message_stop")
    latency = loop.time() - t0
    outcome = Outcome(
        job.call.key,
        SUCCEEDED,
        state.text,
        state.stop_reason,
        state.usage,
        job.attempts,
        latency,
        state.ttft if job.stream else None,  # a first-wave call streamed for its headers: as asked
        None,
        None,
        state.message_id,
    )
    return outcome, response.headers
