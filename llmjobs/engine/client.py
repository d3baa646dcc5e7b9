"""One shared ``AsyncAnthropic`` per run, with the SDK's own retries off."""

from __future__ import annotations

import functools
import os
import ssl
from typing import Any, Literal

import anthropic
import httpx2

__all__ = ["make_client"]

# Keep every connection alive: the engine may hold hundreds in flight.
_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=1000, keepalive_expiry=30.0)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """The default TLS context (system CAs, ``SSL_CERT_FILE``/``SSL_CERT_DIR``), made once per
    process: making one loads the CA bundle, 20-40 ms of CPU that every new client (one per
    job) spent on the event loop. One context serves any number of clients."""
    return httpx2.create_ssl_context()


def make_client(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    transport: Literal["aiohttp", "httpx"] = "aiohttp",
    **kwargs: Any,
) -> anthropic.AsyncAnthropic:
    """An ``AsyncAnthropic`` for the engine: ``max_retries=0`` (the governor retries).

    ``transport="aiohttp"`` (default) uses the SDK's aiohttp client, which costs
    about half the CPU per call of httpx. With no key given and none in the
    environment, pass the simulator's ``base_url``; a placeholder key is used.
    """
    if api_key is None:
        api_key = os.environ.get("ANTHROPIC_API_KEY") or ("sk-simulator" if base_url else None)
    if transport == "aiohttp":
        http_client = anthropic.DefaultAioHttpClient(limits=_LIMITS, verify=_ssl_context())
    elif transport == "httpx":
        http_client = anthropic.DefaultAsyncHttpxClient(limits=_LIMITS, verify=_ssl_context())
    else:
        raise ValueError(f"unknown transport {transport!r}")
    kwargs.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, http_client=http_client, **kwargs)
