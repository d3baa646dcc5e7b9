"""Faults: drawn at random at the configured rates, injected (``POST
/_sim/faults`` for the next requests, or an ``x-sim-fault`` request header),
or an outage of the whole API (``POST /_sim/outage``)."""

from __future__ import annotations

import random

from .config import SimConfig
from .respond import Receive, Send, close_connection, send_error

__all__ = ["CLOSED", "FAULTS", "OUTAGE_MODES", "draw", "fail_outage"]

#: Fault names accepted by /_sim/faults and the ``x-sim-fault`` header:
#:
#: * ``500``, ``529``: an api_error / overloaded_error (``x-should-retry: true``);
#: * ``429``: a rate_limit_error with ``retry-after: 1``;
#: * ``429_retry_after_ms``: a rate_limit_error with ``retry-after-ms: 1500`` and ``retry-after: 2``;
#: * ``should_retry_false``: a 500 api_error with ``x-should-retry: false``;
#: * ``should_retry_true``: a 400 invalid_request_error with ``x-should-retry: true``;
#: * ``hang``: never answers (a stream sends only pings); ``stall_stream`` likewise;
#: * ``drop_stream``: a stream cut mid-way with ``event: error`` (a plain request: 500);
#: * ``cut_stream``: a stream that stops mid-way without ``message_stop`` or an error
#:   event, just EOF (a plain request: the connection closes without a response);
#: * ``bad_json``: a 200 whose body is not JSON;
#: * ``close``: the connection closes without a response;
#: * ``invalid_output``: a structured answer (output_config.format or a tool call) that breaks
#:   its schema: a field of the wrong type, a missing required field, or prose before the JSON
#:   (a plain request is answered normally).
FAULTS = frozenset(
    {
        "500",
        "529",
        "429",
        "429_retry_after_ms",
        "should_retry_false",
        "should_retry_true",
        "hang",
        "drop_stream",
        "stall_stream",
        "cut_stream",
        "bad_json",
        "close",
        "invalid_output",
    }
)

#: What every request gets during an outage: ``close`` (the connection closes
#: without a response, a connection error for the client), ``503`` or ``529``.
OUTAGE_MODES = ("close", "503", "529")

#: ``by_status`` key of a request whose connection was closed without a response
#: (nginx's convention).
CLOSED = 444


def draw(cfg: SimConfig, rng: random.Random, stream: bool, structured: bool = False) -> str | None:
    """One seeded draw for an admitted request: a fault name or None
    (``invalid_output`` only for a ``structured`` request)."""
    rates = (
        ("529", cfg.fail_529),
        ("500", cfg.fail_500),
        ("hang", cfg.hang),
        ("drop_stream", cfg.drop_stream if stream else 0.0),
        ("should_retry_false", cfg.fail_should_retry_false),
        ("cut_stream", cfg.cut_stream),
        ("bad_json", cfg.bad_json),
        ("invalid_output", cfg.invalid_output if structured else 0.0),
    )
    return pick(rates, rng)


def pick(rates: tuple[tuple[str, float], ...], rng: random.Random) -> str | None:
    """One seeded draw among outcomes with these probabilities: a name, or None."""
    if not any(rate for _, rate in rates):
        return None
    value = rng.random()
    edge = 0.0
    for name, rate in rates:
        edge += rate
        if value < edge:
            return name
    return None


async def fail_outage(send: Send, receive: Receive, mode: str) -> int:
    """Answer one request during an outage; returns the status for the stats."""
    if mode == "529":
        return await send_error(send, 529, "overloaded_error", "Overloaded", [])
    if mode == "close" and await close_connection(send, receive):
        return CLOSED
    return await send_error(send, 503, "api_error", "Service Unavailable", [])
