"""The playground's shared ``AsyncAnthropic``: one per event loop, never one per request.

Async views run on the server's event loop (one per uvicorn worker), so the
playground reuses one client, and its connection pool, for every request on
that loop. ``get_client()`` creates it on first use; ``aclose_client()``
closes it (tests call it, and so does ``lifespan()`` at server shutdown).
The client's target (key, base URL) comes from ``conf.api_target()``; if it
changes (tests switching simulators) the old client is closed and replaced.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

from .conf import ApiTarget, api_target
from .engine import make_client

__all__ = ["aclose_client", "client_count", "get_client", "with_lifespan"]

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
        transport=getattr(settings, "LLMJOBS_HTTP_TRANSPORT", "aiohttp"),
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


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def with_lifespan(app: ASGIApp) -> ASGIApp:
    """Wrap an ASGI app so that server shutdown closes the shared client.

    Django has no ASGI lifespan support of its own; this answers the
    ``lifespan`` scope (startup/shutdown) and passes everything else through.
    Use it with uvicorn's ``lifespan="on"`` (or ``"auto"``).
    """

    async def wrapped(
        scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]
    ) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await aclose_client()
                except Exception:  # shutting down: log, never hang
                    log.exception("closing the playground client failed")
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped
