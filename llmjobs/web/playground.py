"""The playground: one prompt streamed token by token as SSE, through a shared client.

``playground_events(client, params)`` is the event stream behind the
playground page (``start``, ``ttft``, ``token``..., then ``done`` or
``error``); ``sdk_error`` maps an SDK error to the ``error`` event's payload.

The shared ``AsyncAnthropic``: one per event loop, never one per request.

Async views run on the server's event loop (one per uvicorn worker), so the
playground reuses one client, and its connection pool, for every request on
that loop. ``get_client()`` creates it on first use; ``aclose_client()``
closes it (tests call it, and so does ``lifespan()`` at server shutdown).
The client's target (key, base URL) comes from ``conf.api_target()``; if it
changes (tests switching simulators) the old client is closed and replaced.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anthropic

from ..conf import ApiTarget, api_target, llmjobs_settings
from ..engine import AttemptTimeout, StreamError, TextStream, make_client
from . import sse, userload

__all__ = [
    "aclose_client",
    "client_count",
    "get_client",
    "playground_events",
    "sdk_error",
    "warm_up",
    "with_lifespan",
]

log = logging.getLogger(__name__)

# loop -> (target, client). Weak keys: a loop that is gone takes its entry with it.
_clients: MutableMapping[asyncio.AbstractEventLoop, tuple[ApiTarget, Any]] = weakref.WeakKeyDictionary()


async def get_client() -> Any:
    """The running loop's shared ``AsyncAnthropic`` (SDK retries off, see ``make_client``)."""
    loop = asyncio.get_running_loop()
    target = api_target()
    entry = _clients.get(loop)
    if entry is not None:
        if entry[0] == target:
            return entry[1]
        await aclose_client()
    client = make_client(
        api_key=target.api_key,
        base_url=target.base_url,
        transport=llmjobs_settings().http_transport,
    )
    _clients[loop] = (target, client)
    return client


async def aclose_client() -> None:
    """Close the running loop's client, if there is one (safe to call twice)."""
    entry = _clients.pop(asyncio.get_running_loop(), None)
    if entry is not None:
        await entry[1].close()


def client_count() -> int:
    """How many shared clients exist (tests: one per loop, not one per request)."""
    return len(_clients)


Message = dict[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


def warm_up() -> None:
    """Load now what the first requests would load, then ``gc.freeze()`` everything alive.

    The loaded app is ~200k objects the garbage collector tracks (Django, the SDK, aiohttp,
    the URLconf and views). A full collection walks all of them: tens of milliseconds on a
    quiet machine, hundreds on a busy one, with the event loop (every open stream) stopped.
    Streams allocate fast, so full collections come every few seconds: they were part of the
    playground's p95 time to first token (issue 17, ~8% of the app's CPU under ``perf``).
    Frozen objects sit in the permanent generation: collections walk only what came later.
    Objects frozen here live as long as the process, which they would anyway.
    """
    from django.urls import get_resolver

    get_resolver().url_patterns  # noqa: B018  (imports every view module, as the first request would)
    gc.collect()
    gc.freeze()


def with_lifespan(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI app so that server startup runs ``warm_up()`` and shutdown closes the
    shared client and the user loader's connections.

    Django has no ASGI lifespan support of its own; this answers the
    ``lifespan`` scope (startup/shutdown) and passes everything else through.
    Use it with uvicorn's ``lifespan="on"`` (or ``"auto"``).
    """

    async def wrapped(
        scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    warm_up()
                except Exception:  # an optimisation: log it, start anyway
                    log.exception("warming up the app failed")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:  # jobs queued early whose items this process still inserts (``filling``): finish them
                    from ..filling import join_fills

                    await asyncio.to_thread(join_fills, 60.0)
                except Exception:
                    log.exception("finishing the insertion of items failed")
                try:
                    await aclose_client()
                    await asyncio.to_thread(userload.user_loader.close, 5.0)  # its kept-open connections
                except Exception:  # shutting down: log, never hang
                    log.exception("closing the playground client failed")
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped


# --- the stream ------------------------------------------------------------------------


def sdk_error(exc: anthropic.APIError) -> dict[str, str]:
    """The ``error`` event's payload for an SDK error: the API's own error type and message
    when the response has them (``http_<status>`` otherwise); the exception's class name
    for errors without a response (connection errors and the like)."""
    if isinstance(exc, anthropic.APIStatusError):
        body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
        error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
        return {"type": error.get("type") or f"http_{exc.status_code}", "message": error.get("message") or str(exc)}
    return {"type": type(exc).__name__, "message": str(exc)}


async def playground_events(client: Any, params: dict[str, Any]) -> AsyncIterator[bytes]:
    """One streamed call as SSE: ``start``, ``ttft``, ``token``..., then ``done`` or ``error``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    yield sse.event("start", {"model": params["model"]})
    try:
        async with TextStream(
            client, params, first_token_timeout=60.0, idle_timeout=30.0, total_timeout=600.0
        ) as stream:
            first = True
            async for delta in stream:
                if first:
                    first = False
                    yield sse.event("ttft", {"ms": round((stream.ttft or 0.0) * 1000)})
                yield sse.event("token", {"text": delta})
            usage = stream.usage or {}
            yield sse.event(
                "done",
                {
                    "stop_reason": stream.stop_reason,
                    "ttft_ms": None if stream.ttft is None else round(stream.ttft * 1000),
                    "total_ms": round((loop.time() - started) * 1000),
                    "input_tokens": usage.get("input_tokens"),
                    "output_tokens": usage.get("output_tokens"),
                },
            )
    except (AttemptTimeout, StreamError) as exc:
        yield sse.event("error", {"type": getattr(exc, "error_type", "timeout"), "message": str(exc)})
    except anthropic.APIError as exc:
        yield sse.event("error", sdk_error(exc))
