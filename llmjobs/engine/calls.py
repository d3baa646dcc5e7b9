"""``run_calls``: the engine as one awaitable call, each outcome handed to a callback."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any

from ._types import Call, EngineConfig, Outcome
from .run import Engine, _Run
from .stats import EngineStats

__all__ = ["run_calls"]


async def run_calls(
    calls: Iterable[Call] | AsyncIterable[Call],
    *,
    client: Any = None,
    config: EngineConfig | None = None,
    on_outcome: Callable[[Outcome], Awaitable[None] | None] | None = None,
    engine: Engine | None = None,
) -> EngineStats:
    """Run ``calls`` and hand each outcome to ``on_outcome`` (sync or async). Returns the stats.

    If the task running this is cancelled, in-flight calls are cancelled and
    still reported to ``on_outcome`` as ``cancelled`` before the cancellation
    propagates.
    """
    own = engine is None
    if engine is None:
        engine = Engine(client=client, config=config)
    is_async = on_outcome is not None and inspect.iscoroutinefunction(on_outcome)
    try:
        async with engine._client_scope():
            r = _Run(engine, calls)
            gen = r.outcomes()
            try:
                async for _i, outcome in gen:
                    if on_outcome is not None:
                        res = on_outcome(outcome)
                        if is_async or inspect.isawaitable(res):
                            await res  # type: ignore[misc]
            except asyncio.CancelledError:
                await gen.aclose()
                if on_outcome is not None:
                    while r._out:
                        res = on_outcome(r._out.popleft()[1])
                        if is_async or inspect.isawaitable(res):
                            await res  # type: ignore[misc]
                raise
    finally:
        if own:
            await engine.aclose()
    return engine.stats
