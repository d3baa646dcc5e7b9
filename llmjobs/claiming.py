"""Feeding the engine: a job's items claimed in chunks (with a lease), rendered, handed out as calls.

:class:`Feeding` is the part of :class:`~llmjobs.runner.JobRunner` that claims: ``_calls``
is the async generator the engine pulls its calls from; ``_claim`` runs on the runner's
writer thread (the ORM, rendering and hashing never run on the event loop). The state
it reads and sets (``_stopping``, ``_filling``, ``leases``...) is the runner's own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncGenerator, Callable
from typing import Any

from django.utils import timezone

from .budget import BudgetGuard
from .caching import CacheMarker
from .db_retry import DatabaseUnavailable, DbRetry
from .engine import Call
from .estimate import request_key
from .fairness import FairSlice
from .filling import fill_open
from .leases import Leases
from .models import BatchJob
from .prompts import render_chunk
from .reports import RunReport
from .structured import make_validator
from .writer import fail_items

__all__ = ["FIRST_CLAIM", "STALL_SECONDS", "Feeding"]

log = logging.getLogger(__name__)

STALL_SECONDS = 0.35  # answers unwritten this long: stop dispatching until they are stored
FIRST_CLAIM = 50  # items in a run's first claim (the engine's first wave and initial ceiling fit in it)


class Feeding:
    """Claims and dispatch of a :class:`~llmjobs.runner.JobRunner` (its base class)."""

    # the runner's state, set in JobRunner.__init__
    job_id: int
    job: BatchJob | None
    limit: int | None
    lease: dt.timedelta
    leases: Leases
    report: RunReport
    fair: FairSlice | None
    _stopping: bool
    _filling: bool
    _budget: BudgetGuard | None
    _cache: CacheMarker
    _digests: dict[int, str]
    _retry: DbRetry
    _unwritten_since: float | None
    _on_dispatch: Callable[[], None] | None

    def _db(self, fn: Callable[..., Any], *, budget: float | None = None) -> Callable[..., Any]:
        raise NotImplementedError  # JobRunner's

    def _give_up(self, exc: DatabaseUnavailable) -> None:
        raise NotImplementedError  # JobRunner's

    async def _calls(self) -> AsyncGenerator[Call, None]:
        """The calls of the items claimed, chunk by chunk. The first claim is small
        (``FIRST_CLAIM``: the first calls start sooner); while the last quarter of a chunk is
        handed out, the next one is already claimed on the writer thread (one claim ahead),
        so the engine never waits for a claim, and a worker holds little more than one
        chunk (on PostgreSQL, other workers share the job). A chunk claimed ahead and never sent is held like any other:
        released (or cancelled with the job) when the run ends, or taken over once its
        lease lapses after a crash."""
        claim = self._db(self._claim)
        wait_for_leases = self._db(self.leases.next_foreign_expiry)
        claimed = 0
        ahead: asyncio.Future[list[tuple[int, dict[str, Any]]]] | None = None
        schema = self.job.output_schema if self.job is not None else None
        validate = make_validator(schema) if schema else None  # structured output: checked, repaired once
        try:
            while not self._stopping:
                if self.limit is not None and claimed >= self.limit:
                    return
                if ahead is None:
                    ahead = asyncio.ensure_future(claim(self._claim_most(claimed)))
                batch = await ahead
                ahead = None
                claimed += len(batch)
                if not batch:
                    if self.limit is not None or (self.fair is not None and self.fair.yielded):
                        return  # a preview, or our slice is over: the items we hold finish, no more
                    if self._filling:  # more items are on their way (``filling``): claim again soon
                        await asyncio.sleep(0.1)
                        continue
                    # Items still leased by a runner that may have died: wait for the
                    # lease to expire, then take them (a live runner renews its own).
                    expiry = await wait_for_leases()
                    if expiry is None or self._stopping:
                        return
                    delay = (expiry - timezone.now()).total_seconds() + 0.05
                    await asyncio.sleep(min(max(delay, 0.05), self.lease.total_seconds()))
                    continue
                more = self.limit is None or claimed < self.limit
                # the next chunk is claimed while this one is sent, once a quarter of it (or
                # FIRST_CLAIM items) is left: the engine never waits for a claim, and a worker
                # holds little more than a chunk (the others sharing the job get the rest)
                ahead_at = max(len(batch) // 4, min(FIRST_CLAIM, len(batch)))
                for sent, (item_id, params) in enumerate(batch):
                    if more and ahead is None and len(batch) - sent <= ahead_at:
                        ahead = asyncio.ensure_future(claim(self._claim_most(claimed)))
                    while self._writes_stalled() and not self._stopping:
                        await asyncio.sleep(0.05)  # backpressure: nothing new while answers can't be stored
                    if self._stopping or not await self._within_budget(item_id, params):
                        return
                    yield Call(key=item_id, params=params, validate=validate)
                    if self._on_dispatch is not None:  # the engine took the first call
                        self._dispatched()
        except DatabaseUnavailable as exc:
            self._give_up(exc)
        finally:
            if ahead is not None:  # its rows are held (``leases.held``): the run's end releases them
                ahead.add_done_callback(_quiet)

    def _dispatched(self) -> None:
        """Call ``on_dispatch`` once; its failure is logged, never the run's (it is a caller's extra)."""
        on_dispatch, self._on_dispatch = self._on_dispatch, None
        try:
            if on_dispatch is not None:
                on_dispatch()
        except Exception:
            log.exception("job %s: the on_dispatch callback failed", self.job_id)

    def _claim_most(self, claimed: int) -> int | None:
        """The most items the next claim may take: ``FIRST_CLAIM`` first, what a preview has left."""
        most = FIRST_CLAIM if not claimed else None
        if self.limit is not None:
            most = min(most or self.limit, self.limit - claimed)
        return most

    async def _within_budget(self, key: int, params: dict[str, Any]) -> bool:
        """Admit this call under the budget, waiting for in-flight calls to settle; ``False``:
        the budget is reached (or the run stops), dispatch nothing more."""
        guard = self._budget
        while guard is not None and not guard.admit(key, params):
            if guard.reached or self._stopping:
                return False
            await asyncio.sleep(0.02)
        return True

    def _writes_stalled(self) -> bool:
        """The database is failing, or answers have waited past ``STALL_SECONDS`` (a write
        blocked on a lock): hold new calls back until they are stored."""
        since = self._unwritten_since
        late = since is not None and asyncio.get_running_loop().time() - since > STALL_SECONDS
        return late or self._retry.down_since is not None

    def _claim(self, most: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        """The next chunk (at most ``most`` items), rendered here on the writer thread (never
        on the loop); an item that can't be rendered fails at once and the job goes on."""
        job = self.job
        assert job is not None
        if self.fair is not None and self.fair.should_yield():
            return []  # fair shares: another user's (or job's) turn
        self._filling = self._filling and fill_open(self.job_id)  # before the claim: once closed, it sees all
        rows = self.leases.claim(done=self.report.succeeded + self.report.failed, most=most)
        calls, broken = render_chunk(job, rows, self._cache.mark)
        if job.dedup:  # the digest is JSON + SHA-256: done here, not on the event loop
            self._digests.update((pk, request_key(params)) for pk, params in calls)
        if broken:
            fail_items(self.job_id, broken, error_type="prompt_error")
            self.leases.written(pk for pk, _ in broken)
            self.report.failed += len(broken)
        return calls

    def _digest_of(self, call: Call) -> str:
        digest = self._digests.pop(call.key, None)  # type: ignore[call-overload]
        return digest if digest is not None else request_key(call.params)


def _quiet(future: asyncio.Future[Any]) -> None:
    """A claim made ahead and no longer awaited: its error (if any) was reported by the run already."""
    if not future.cancelled():
        future.exception()
