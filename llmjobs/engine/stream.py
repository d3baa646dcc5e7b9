"""Streaming: a small SSE reader and a text-delta iterator for one call.

``TextStream`` is what the playground and the CLI use: an async iterator of
text deltas with a first-token timeout and an idle timeout between content
events (``ping`` events do not count as activity, so a stalled stream that
only pings times out). It records the time to first token and, at the end,
the stop reason, usage and message id. Leaving it early closes the HTTP
response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import httpx2

from ._json import loads
from .retry import AttemptTimeout, StreamError

__all__ = ["TextStream", "iter_sse", "open_stream", "stream_text"]


async def iter_sse(response: httpx2.Response) -> AsyncGenerator[tuple[str | None, bytes]]:
    """Yield ``(event, data)`` for each server-sent event of ``response`` (pings included)."""
    buf = b""
    async for chunk in response.aiter_bytes():
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        buf = buf + chunk if buf else chunk
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            event = None
            data = b""
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    part = line[5:]
                    if part[:1] == b" ":
                        part = part[1:]
                    data = data + b"\n" + part if data else part
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode()
            if event is not None or data:
                yield event, data
        buf = buf[start:] if start else buf


async def open_stream(client: Any, params: Mapping[str, Any]) -> httpx2.Response:
    """POST a streaming Messages request; returns the open response (status errors raise typed SDK errors)."""
    body = dict(params)
    body["stream"] = True
    response: httpx2.Response = await client.post("/v1/messages", body=body, cast_to=httpx2.Response, stream=True)
    return response


def _stream_error(data: bytes) -> StreamError:
    try:
        err = loads(data).get("error") or {}
        return StreamError(str(err.get("type") or "api_error"), str(err.get("message") or data[:200]))
    except Exception:
        return StreamError("api_error", data[:200].decode(errors="replace"))


class StreamState:
    """What a stream told us so far (shared by the engine and :class:`TextStream`)."""

    __slots__ = ("finished", "message_id", "model", "parts", "started", "stop_reason", "tool_parts", "ttft", "usage")

    def __init__(self, started: float) -> None:
        self.message_id: str | None = None
        self.model: str | None = None
        self.parts: list[str] = []
        self.tool_parts: list[str] = []  # input_json_delta of a tool call (a forced tool's answer)
        self.stop_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.started = started
        self.ttft: float | None = None
        self.finished = False

    def feed(self, event: str | None, data: bytes, now: float) -> str | None:
        """Apply one non-ping event; returns a text delta if it carried one."""
        if event == "content_block_delta":
            d = loads(data).get("delta") or {}
            text: str | None = d.get("text")
            if text is not None:
                if self.ttft is None:
                    self.ttft = now - self.started
                self.parts.append(text)
                return text
            partial = d.get("partial_json")
            if partial is not None:
                self.tool_parts.append(partial)
            if self.ttft is None:
                self.ttft = now - self.started
            return None
        if event == "message_start":
            msg = loads(data).get("message") or {}
            self.message_id = msg.get("id")
            self.model = msg.get("model")
            self.usage = dict(msg.get("usage") or {})
        elif event == "message_delta":
            obj = loads(data)
            delta = obj.get("delta") or {}
            if "stop_reason" in delta:
                self.stop_reason = delta.get("stop_reason")
            usage = obj.get("usage")
            if usage:
                if self.usage is None:
                    self.usage = {}
                for k, v in usage.items():
                    if v is not None:
                        self.usage[k] = v
        elif event == "message_stop":
            self.finished = True
        elif event == "error":
            raise _stream_error(data)
        return None

    @property
    def text(self) -> str:
        """The answer's text; with no text at all, the JSON a tool call streamed (structured output)."""
        return "".join(self.parts) if self.parts or not self.tool_parts else "".join(self.tool_parts)


class TextStream:
    """Async iterator of the text deltas of one streamed call.

    Use as ``async with TextStream(client, params) as s: async for delta in s: ...``
    (or ``stream_text``). ``first_token_timeout`` bounds the wait for the first
    text; ``idle_timeout`` the wait between content events; ``total_timeout``
    the whole call. A timeout raises :class:`AttemptTimeout`; an ``error`` event
    raises :class:`StreamError`; HTTP errors raise the SDK's typed errors.
    """

    __slots__ = (
        "_cancelling",
        "_client",
        "_deadline",
        "_events",
        "_expired",
        "_first",
        "_idle",
        "_loop",
        "_params",
        "_reader",
        "_response",
        "_since",
        "_state",
        "_timer",
        "_timer_at",
        "_total",
    )

    def __init__(
        self,
        client: Any,
        params: Mapping[str, Any],
        *,
        first_token_timeout: float = 60.0,
        idle_timeout: float = 30.0,
        total_timeout: float | None = None,
    ) -> None:
        self._client = client
        self._params = params
        self._first = first_token_timeout
        self._idle = idle_timeout
        self._total = total_timeout
        self._response: httpx2.Response | None = None
        self._events: AsyncIterator[tuple[str | None, bytes]] | None = None
        self._state: StreamState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline = float("inf")
        # The limits are kept by ONE timer per stream, not a timeout per token (a timer
        # scheduled and cancelled for every token of every stream: issue 17). ``_since`` is
        # when the current wait began (the call to ``__anext__``, or the last event); the
        # timer fires at the limit it knew of, looks at ``_since`` and moves on if an event
        # came meanwhile, else cancels ``_reader`` (the task waiting in ``__anext__``).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._since = 0.0
        self._reader: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._expired = False

    # results ---------------------------------------------------------------
    @property
    def ttft(self) -> float | None:
        return self._state.ttft if self._state else None

    @property
    def text(self) -> str:
        return self._state.text if self._state else ""

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._state.usage if self._state else None

    @property
    def stop_reason(self) -> str | None:
        return self._state.stop_reason if self._state else None

    @property
    def message_id(self) -> str | None:
        return self._state.message_id if self._state else None

    @property
    def finished(self) -> bool:
        return bool(self._state and self._state.finished)

    # protocol ----------------------------------------------------------------
    async def __aenter__(self) -> TextStream:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> TextStream:
        return self

    def _limit(self, since: float) -> float:
        """When a wait that began at ``since`` times out: the first-token or the idle limit,
        and never after the whole stream's deadline."""
        wait = self._first if self._state is None or self._state.ttft is None else self._idle
        limit = since + wait
        return limit if limit < self._deadline else self._deadline

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        reader = self._reader
        if reader is None:  # nobody waits for an event: the next __anext__ arms it again
            return
        limit = self._limit(self._since)
        assert self._loop is not None
        if self._loop.time() < limit:  # an event came since this was set: wait for the new limit
            self._arm(limit)
            return
        self._expired = True
        reader.cancel()

    async def _open(self) -> None:
        if self._state is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        self._state = StreamState(now)
        if self._total is not None:
            self._deadline = now + self._total
        try:
            async with asyncio.timeout_at(self._limit(now)):
                self._response = await open_stream(self._client, self._params)
        except TimeoutError:
            raise AttemptTimeout(f"no response within {self._first:g}s") from None
        self._events = iter_sse(self._response)

    async def __anext__(self) -> str:
        if self._state is None:
            await self._open()
        state = self._state
        assert state is not None and self._loop is not None
        if self._events is None or state.finished:
            raise StopAsyncIteration
        loop = self._loop
        reader = asyncio.current_task()
        assert reader is not None
        self._since = now = loop.time()
        limit = self._limit(now)
        if self._timer is None or self._timer_at > limit:
            self._arm(limit)
        self._reader = reader
        self._cancelling = reader.cancelling()
        try:
            async for event, data in self._events:
                if event == "ping":
                    continue
                now = loop.time()
                text = state.feed(event, data, now)
                if text is not None:
                    return text
                if state.finished:
                    break
                self._since = now
        except asyncio.CancelledError:
            if not self._expired or reader.uncancel() > self._cancelling:
                await self.aclose()
                raise  # cancelled from outside (the client went away), not by the limit
            await self.aclose()
            what = "first token" if state.ttft is None else "next event"
            raise AttemptTimeout(
                f"stream stalled: no {what} within {self._first if state.ttft is None else self._idle:g}s"
            ) from None
        except BaseException:
            await self.aclose()
            raise
        finally:
            self._reader = None
        await self.aclose()
        if not state.finished:
            raise StreamError("connection_error", "stream ended before message_stop")
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop reading and close the HTTP response (safe to call twice)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        events, self._events = self._events, None
        if events is not None:
            await events.aclose()  # type: ignore[attr-defined]
        response, self._response = self._response, None
        if response is not None:
            await response.aclose()


def stream_text(
    client: Any,
    params: Mapping[str, Any],
    *,
    first_token_timeout: float = 60.0,
    idle_timeout: float = 30.0,
    total_timeout: float | None = None,
) -> TextStream:
    """Stream one call's text: ``async with stream_text(client, params) as s: async for delta in s``."""
    return TextStream(
        client, params, first_token_timeout=first_token_timeout, idle_timeout=idle_timeout, total_timeout=total_timeout
    )
