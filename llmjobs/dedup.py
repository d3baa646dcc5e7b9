"""Dedup within a job (issue 14): identical rendered requests are sent once.

:class:`Dedup` wraps the runner's stream of calls and the engine's stream of
outcomes. The first call of each distinct request (its *leader*) goes to the
engine; a later identical one (a *follower*) is held back, and when the
leader's outcome arrives each follower gets a copy of it: the same answer (or
the same failure, or the same interruption: a cancelled leader puts its
followers back to pending too), with no usage, so nothing is paid twice. A
follower whose leader was already answered in this run gets the answer at once.

Pure asyncio (no Django); the runner turns it on per job (``BatchJob.dedup``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Hashable
from typing import Any

from .engine import Call, Outcome
from .estimate import request_key

__all__ = ["Dedup"]


class Dedup:
    """One per run: ``calls(...)`` feeds the engine, ``outcomes(...)`` reads it."""

    def __init__(self) -> None:
        self._leader_of: dict[Hashable, str] = {}  # leader's key -> request digest
        self._followers: dict[str, list[Hashable]] = {}  # digest -> followers waiting
        self._answered: dict[str, Outcome] = {}  # digest -> the leader's succeeded outcome
        self._ready: list[Outcome] = []  # copies for followers whose leader was already answered
        self.sent = 0
        self.shared = 0

    async def calls(self, calls: AsyncIterator[Call]) -> AsyncIterator[Call]:
        async for call in calls:
            digest = request_key(call.params)
            answered = self._answered.get(digest)
            if answered is not None:
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
        return [self._copy(outcome, key) for key in followers]

    def _copy(self, outcome: Outcome, key: Any) -> Outcome:
        self.shared += 1
        return dataclasses.replace(outcome, key=key, usage=None, attempts=0, latency=None, ttft=None)
