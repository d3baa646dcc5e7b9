"""Automatic prompt caching (issue 14).

When every rendered request of a job shares its system prompt (it does: the
system prompt is the job's) and that prompt is at least the model's minimum
cacheable length, the runner marks it with ``cache_control``: the first request
writes the cache (1.25x input for 5 minutes, 2x for 1 hour), every later one
reads it at 0.1x. The 1-hour TTL is chosen for batch jobs and long jobs (Anthropic's
advice), else 5 minutes (each read refreshes it). Cache reads do not count against
ITPM; cache writes do (the governor counts input + cache writes).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .engine import Call, Outcome

__all__ = ["LONG_JOB_ITEMS", "CacheMarker", "CachePlan", "CacheWarmer", "cache_minimum", "mark_cacheable", "plan"]

log = logging.getLogger(__name__)

LONG_JOB_ITEMS = 5000  # jobs this large run for longer than a 5-minute cache is worth: 1 h TTL
AUTO_CACHE = True  # automatic caching on (bench/cost.py turns it off for its baseline row)

# Minimum cacheable prefix, in tokens, from Anthropic's prompt-caching docs.
_CACHE_MINIMUM = {
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-sonnet-4-6": 2048,
    "claude-sonnet-4-5": 1024,
    "claude-opus-4-1": 1024,
    "claude-opus-4": 1024,
    "claude-sonnet-4": 1024,
    "claude-3-7-sonnet": 1024,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}
_CACHE_MINIMUM_FAMILY = {"opus": 4096, "sonnet": 2048, "haiku": 4096}


def cache_minimum(model: str) -> int:
    """The shortest prefix (tokens) ``model`` caches."""
    for prefix, tokens in sorted(_CACHE_MINIMUM.items(), key=lambda kv: -len(kv[0])):
        if model.startswith(prefix):
            return tokens
    family = next((f for f in _CACHE_MINIMUM_FAMILY if f in model), None)
    return _CACHE_MINIMUM_FAMILY[family] if family else 4096


@dataclass(frozen=True, slots=True)
class CachePlan:
    prefix_tokens: int  # the system prompt's tokens
    ttl: str  # "5m" or "1h"


def _count(client: Any, params: dict[str, Any]) -> int:
    fields = {k: params[k] for k in ("model", "messages", "system", "tools", "tool_choice") if k in params}
    return int(client.messages.count_tokens(**fields).input_tokens)


def plan(job: Any, params: dict[str, Any], *, client: Any) -> CachePlan | None:
    """Whether (and how) to cache ``job``'s shared system prompt; ``params`` is one rendered request.
    The prompt's length is measured with ``count_tokens`` (free): with and without it."""
    if not AUTO_CACHE or not isinstance(params.get("system"), str) or not params["system"]:
        return None
    try:
        without = {k: v for k, v in params.items() if k != "system"}
        tokens = _count(client, params) - _count(client, without)
    except Exception as exc:  # count_tokens unreachable: estimate from characters (conservatively)
        log.warning("count_tokens failed (%s): estimating the system prompt's length", exc)
        tokens = len(params["system"]) // 5
    if tokens < cache_minimum(str(params.get("model") or job.model)):
        return None
    long_job = job.mode == "batch" or (job.total or 0) >= LONG_JOB_ITEMS
    return CachePlan(prefix_tokens=tokens, ttl="1h" if long_job else "5m")


def mark_cacheable(params: dict[str, Any], cache: CachePlan) -> dict[str, Any]:
    """``params`` with the system prompt as a text block marked ``cache_control``."""
    system = params.get("system")
    if not isinstance(system, str) or not system:
        return params
    marked = copy.copy(params)
    control: dict[str, Any] = {"type": "ephemeral"}
    if cache.ttl == "1h":
        control["ttl"] = "1h"
    marked["system"] = [{"type": "text", "text": system, "cache_control": control}]
    return marked


class CacheMarker:
    """The runner's automatic caching, decided once per run from its first rendered request
    (on the writer thread: ``count_tokens`` is a blocking call) and applied to every request."""

    def __init__(self, job: Any, *, client: Any = None) -> None:
        self.job = job
        self.client = client
        self.decided = False
        self.plan: CachePlan | None = None

    def mark(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self.decided:
            self.decided = True
            try:
                system = AUTO_CACHE and isinstance(params.get("system"), str) and bool(params["system"])
                # no system prompt, nothing to cache: no client made (~30 ms before the first call)
                client = self.client or (_sync_client() if system else None)
                self.plan = plan(self.job, params, client=client)
            except Exception as exc:  # never stop a job for an optimisation
                log.warning("job %s: no automatic caching (%s)", getattr(self.job, "pk", "?"), exc)
                self.plan = None
        return mark_cacheable(params, self.plan) if self.plan is not None else params


def _sync_client() -> Any:
    from .estimate import _client

    return _client()


class CacheWarmer:
    """Send the first request alone, and the rest once it has written the cache, so that the
    first wave does not pay for a cache write each."""

    def __init__(self, marker: CacheMarker) -> None:
        self.marker = marker
        self._first: Any = None
        self._warm = asyncio.Event()

    async def calls(self, calls: AsyncIterator[Call]) -> AsyncIterator[Call]:
        async for call in calls:
            first = self._first is None
            if first:
                self._first = call.key  # before yielding: its answer may come back at once
            yield call
            if first and self.marker.plan is not None:
                await self._warm.wait()  # every call ends in an outcome (answer, failure or cancel)

    async def outcomes(self, outcomes: AsyncIterator[Outcome]) -> AsyncIterator[Outcome]:
        async for outcome in outcomes:
            if outcome.key == self._first:
                self._warm.set()
            yield outcome
