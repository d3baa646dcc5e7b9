"""HTTP plumbing shared by every route: ASGI types, JSON and error responses,
request bodies, authentication and client disconnects."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

__all__ = [
    "BAD_JSON",
    "CT_JSON",
    "TOO_LARGE",
    "ApiError",
    "Headers",
    "Receive",
    "Scope",
    "Send",
    "auth_error",
    "close_connection",
    "error_body",
    "load_json",
    "query",
    "read_body",
    "request_id",
    "send_error",
    "send_json",
    "until_disconnect",
    "wait_or_disconnect",
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

CT_JSON = (b"content-type", b"application/json")
TOO_LARGE = "Request exceeds the maximum allowed number of bytes."
BAD_JSON = "There was an error parsing the body as JSON"

_ids = random.Random()


class ApiError(Exception):
    """An error answer: HTTP status, Anthropic error type and message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def query(scope: Scope) -> dict[str, str]:
    """The query string's ``name=value`` pairs (no percent-decoding)."""
    query_string: bytes = scope.get("query_string", b"")
    return dict(pair.split("=", 1) for pair in query_string.decode().split("&") if "=" in pair)


def request_id() -> str:
    return "req_011C%020x" % _ids.getrandbits(80)


def error_body(kind: str, message: str, req_id: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": req_id})


def load_json(body: bytes | None) -> Any:
    """The parsed request body; ApiError 413 if it was too large (None), 400 if not JSON."""
    if body is None:
        raise ApiError(413, "request_too_large", TOO_LARGE)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_request_error", BAD_JSON) from None


async def send_json(send: Send, status: int, payload: Any, extra: Headers | None = None) -> None:
    body = orjson.dumps(payload)
    headers = [CT_JSON, (b"content-length", b"%d" % len(body)), (b"request-id", request_id().encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, status: int, kind: str, message: str, extra: Headers, req_id: str = "") -> int:
    """An Anthropic-shaped error; a 5xx carries ``x-should-retry: true``
    unless ``extra`` sets it. Returns ``status``."""
    req_id = req_id or request_id()
    body = error_body(kind, message, req_id)
    headers = [CT_JSON, (b"content-length", b"%d" % len(body)), (b"request-id", req_id.encode())]
    if status >= 500 and all(name != b"x-should-retry" for name, _ in extra):
        headers.append((b"x-should-retry", b"true"))
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
    return status


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if it exceeds ``limit`` bytes."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body if len(body) <= limit else None
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def auth_error(scope: Scope, required_key: str | None) -> ApiError | None:
    """The 401/400 a request without a valid API key or ``anthropic-version`` gets, or None."""
    api_key = version = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if value[:7].lower() == b"bearer ":
                api_key = value[7:].strip()
        elif name == b"x-api-key":
            api_key = value
        elif name == b"anthropic-version":
            version = value
    if not api_key:
        return ApiError(401, "authentication_error", "x-api-key header is required")
    if required_key is not None and api_key.decode("latin-1") != required_key:
        return ApiError(401, "authentication_error", "invalid x-api-key")
    if not version:
        return ApiError(400, "invalid_request_error", "anthropic-version: header is required")
    return None


async def close_connection(send: Send, receive: Receive) -> bool:
    """Close the client's connection without a response (a connection-level
    failure: the client sees the server disconnect). Needs the server's
    transport, which uvicorn's ``send`` carries; False if it is not there."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None or not hasattr(transport, "abort"):
        return False
    transport.abort()
    await wait_or_disconnect(receive, 1.0)  # let the server see it, so it sends no 500 of its own
    return True


async def wait_or_disconnect(receive: Receive, timeout: float | None) -> bool:
    """Sleep ``timeout`` seconds (forever if None); True if the client left."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return True
    except TimeoutError:
        return False


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
