"""Dedup within a job (issue 14): identical rendered requests are sent once.

:class:`Dedup` wraps the runner's stream of calls and the engine's stream of
outcomes. The first call of each distinct request (its *leader*) goes to the
engine; a later identical one (a *follower*) is held back, and when the
leader's outcome arrives each follower gets a copy of it: the same answer (or
the same failure, or the same interruption: a cancelled leader puts its
followers back to pending too), with no usage, so nothing is paid twice. A
follower whose leader was already answered in this run gets the answer at once.

Pure asyncio (no Django); the runner turns it on per job (``BatchJob.dedup``).
Memory stays flat on large jobs: answers are kept for the last ``window`` distinct
requests answered (a duplicate further back than that is sent again), and the
runner passes ``digest_of`` so that requests are hashed on its writer thread, not
on the event loop.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any

from .engine import Call, Outcome
from .estimate import request_key

__all__ = ["WINDOW", "Dedup"]

WINDOW = 10_000  # answered requests kept for later duplicates (bounded memory on 100k-item jobs)


class Dedup:
    """One per run: ``calls(...)`` feeds the engine, ``outcomes(...)`` reads it."""

    def __init__(self, digest_of: Callable[[Call], str] | None = None, *, window: int = WINDOW) -> None:
        self._digest_of = digest_of or (lambda call: request_key(call.params))
        self.window = max(1, window)
        self._leader_of: dict[Hashable, str] = {}  # leader's key -> request digest
        self._followers: dict[str, list[Hashable]] = {}  # digest -> followers waiting
        self._answered: OrderedDict[str, Outcome] = OrderedDict()  # digest -> the leader's succeeded outcome
        self._ready: list[Outcome] = []  # copies for followers whose leader was already answered
        self.sent = 0
        self.shared = 0

    async def calls(self, calls: AsyncIterator[Call]) -> AsyncIterator[Call]:
        async for call in calls:
            digest = self._digest_of(call)
            answered = self._answered.get(digest)
            if answered is not None:
                self._answered.move_to_end(digest)
                self._ready.append(self._copy(answered, call.key))
                continue
            if digest in self._followers:
                self._followers[digest].append(call.key)
                continue
            self._followers[digest] = []
            self._leader_of[call.key] = digest
            self.sent += 1
            yield call

    async def outcomes(self, outcomes: AsyncIterator[Outcome]) -> AsyncIterator[Outcome]:
        async for outcome in outcomes:
            yield outcome
            for copy in self._settle(outcome):
                yield copy
            while self._ready:
                yield self._ready.pop(0)
        while self._ready:
            yield self._ready.pop(0)

    def _settle(self, outcome: Outcome) -> list[Outcome]:
        digest = self._leader_of.pop(outcome.key, None)
        if digest is None:
            return []
        followers = self._followers.pop(digest, [])
        if outcome.status == "succeeded":
            self._answered[digest] = outcome
            if len(self._answered) > self.window:
                self._answered.popitem(last=False)  # the least recently used answer
        return [self._copy(outcome, key) for key in followers]

    def _copy(self, outcome: Outcome, key: Any) -> Outcome:
        self.shared += 1
        return dataclasses.replace(outcome, key=key, usage=None, attempts=0, latency=None, ttft=None)
