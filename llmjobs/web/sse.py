"""Server-Sent Events: formatting and a response that nothing buffers.

``EventStreamResponse`` is a ``StreamingHttpResponse`` over an async
generator of already-formatted events. Its headers keep every layer from
buffering the stream: ``Cache-Control: no-cache``, ``X-Accel-Buffering: no``
(nginx) and ``Content-Encoding: identity``, which makes Django's
``GZipMiddleware`` leave it alone (it skips any response that already has a
content encoding).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from django.http import StreamingHttpResponse

__all__ = ["EventStreamResponse", "comment", "event", "retry"]


def event(name: str, data: Any) -> bytes:
    """One SSE event; ``data`` is sent as JSON on a single ``data:`` line."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"event: {name}\ndata: {payload}\n\n".encode()


def comment(text: str = "") -> bytes:
    """A comment line: keeps proxies from timing out an idle stream."""
    return f": {text}\n\n".encode()


def retry(milliseconds: int) -> bytes:
    """Tell ``EventSource`` how long to wait before reconnecting after a drop."""
    return f"retry: {int(milliseconds)}\n\n".encode()


class EventStreamResponse(StreamingHttpResponse):
    def __init__(self, events: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(events, content_type="text/event-stream; charset=utf-8", **kwargs)
        self["Cache-Control"] = "no-cache, no-transform"
        self["X-Accel-Buffering"] = "no"
        self["Content-Encoding"] = "identity"
