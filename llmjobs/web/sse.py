"""Server-Sent Events: formatting and a response that nothing buffers.

``EventStreamResponse`` is a ``StreamingHttpResponse`` over an async
generator of already-formatted events. Its headers keep every layer from
buffering the stream: ``Cache-Control: no-cache``, ``X-Accel-Buffering: no``
(nginx) and ``Content-Encoding: identity``, which makes Django's
``GZipMiddleware`` leave it alone (it skips any response that already has a
content encoding).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import orjson
from django.http import HttpResponse, StreamingHttpResponse

__all__ = [
    "EventStreamResponse",
    "StreamSlots",
    "coalesced",
    "comment",
    "event",
    "retry",
    "slots",
    "too_many_streams",
]


def event(name: str, data: Any) -> bytes:
    """One SSE event; ``data`` is sent as compact UTF-8 JSON on a single ``data:`` line
    (orjson: this runs once per streamed token; anything it cannot encode goes as ``str``)."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data, default=str) + b"\n\n"


def comment(text: str = "") -> bytes:
    """A comment line: keeps proxies from timing out an idle stream."""
    return f": {text}\n\n".encode()


def retry(milliseconds: int) -> bytes:
    """Tell ``EventSource`` how long to wait before reconnecting after a drop."""
    return f"retry: {int(milliseconds)}\n\n".encode()


async def coalesced(events: AsyncIterator[bytes], *, direct: int, interval: float) -> AsyncIterator[bytes]:
    """``events`` with fewer writes: the first ``direct`` chunks as they come (the time to
    first token is not delayed), then at most one chunk per ``interval`` seconds holding
    every event that arrived meanwhile. Each chunk is one ASGI message and one socket
    write: per token of every stream, that was the app's largest cost at 100 streams
    (issue 17). The events themselves are unchanged; a client sees them up to ``interval``
    later. Closing this generator (the client went away) cancels the reading of
    ``events``, which closes them (and the upstream call under them).
    """
    source = aiter(events)
    pump: asyncio.Task[None] | None = None
    try:
        for _ in range(direct):
            try:
                first = await anext(source)
            except StopAsyncIteration:
                return
            yield first
        pending: list[bytes] = []
        arrived = asyncio.Event()

        async def read() -> None:
            try:
                async for chunk in source:
                    pending.append(chunk)
                    arrived.set()
            finally:
                arrived.set()

        pump = asyncio.create_task(read())
        while True:
            await arrived.wait()
            arrived.clear()
            if pending:
                chunk = b"".join(pending)
                pending.clear()
                yield chunk
            if pump.done():
                if pending:
                    yield b"".join(pending)
                pump.result()  # the reader's error, if any, is this generator's
                return
            await asyncio.sleep(interval)  # let the next events gather
    finally:
        if pump is None:
            await source.aclose()  # type: ignore[attr-defined]  # an async generator
        elif not pump.done():
            pump.cancel()
            await asyncio.wait({pump})


class EventStreamResponse(StreamingHttpResponse):
    """``on_close`` runs once when the server closes the response: after the last event, or
    when the client went away (even before the stream started). Django may call it from a
    thread, so it must be thread-safe (``StreamSlots.release`` is)."""

    def __init__(
        self, events: AsyncIterator[bytes], *, on_close: Callable[[], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(events, content_type="text/event-stream; charset=utf-8", **kwargs)
        self["Cache-Control"] = "no-cache, no-transform"
        self["X-Accel-Buffering"] = "no"
        self["Content-Encoding"] = "identity"
        self._on_close = on_close

    def __aiter__(self) -> AsyncIterator[bytes]:
        """The events as they come (already bytes): Django's own ``__aiter__`` wraps them in two
        more async generators and a ``make_bytes`` per event, for every token of every stream."""
        if self.is_async:
            return cast(AsyncIterator[bytes], self._iterator)  # type: ignore[attr-defined]  # set by Django
        return super().__aiter__()  # a middleware swapped in a sync iterator: Django's way

    def close(self) -> None:
        try:
            super().close()
        finally:
            on_close, self._on_close = self._on_close, None
            if on_close is not None:
                on_close()


class StreamSlots:
    """Open streams per user in this server process, capped (``LLMJOBS_STREAMS_PER_USER``).

    ``acquire`` is called on the loop when a stream view answers; ``release`` when the
    response is closed, possibly from Django's sync thread: hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[Any, int] = {}

    def acquire(self, user_id: Any, limit: int) -> Callable[[], None] | None:
        """A release callback (call it once), or None when ``user_id`` already holds ``limit``
        streams (``limit`` 0: no cap)."""
        with self._lock:
            held = self._open.get(user_id, 0)
            if limit and held >= limit:
                return None
            self._open[user_id] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._open.get(user_id, 0) - 1
                if left > 0:
                    self._open[user_id] = left
                else:
                    self._open.pop(user_id, None)

        return release

    def held(self, user_id: Any) -> int:
        with self._lock:
            return self._open.get(user_id, 0)


slots = StreamSlots()


def too_many_streams(limit: int) -> HttpResponse:
    """429 for one stream too many: says why and what to do."""
    return HttpResponse(
        f"Too many open live streams: at most {limit} per user at a time. "
        "Close another tab (or wait for a stream to end) and try again.\n",
        status=429,
        content_type="text/plain; charset=utf-8",
        headers={"Retry-After": "5"},
    )
