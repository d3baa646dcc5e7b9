"""The bridge: a job's pending items -> the engine -> persisted outcomes.

``JobRunner(job_id).run()`` is a coroutine. It claims pending items in chunks
with a lease (``ItemQuerySet.claim``), streams them into the engine, and writes
outcomes in batches from **one writer thread** (``sync_to_async(...,
thread_sensitive=False, executor=<its own single-thread executor>)``), so the
event loop never waits on the database. Every database call is retried over a
fresh connection (``writer.DbRetry``); while answers can't be written nothing
new is dispatched; a stop drains in-flight calls and keeps their answers.
The guarantees and the settings behind them: README, "Crash safety and
resuming", and docs/architecture.md. Sync callers: ``jobs.job_run``/``job_preview``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.db import close_old_connections, connection, transaction

from .batch_mode import run_batch_job
from .budget import BudgetGuard
from .caching import CacheMarker, CacheWarmer
from .claiming import Feeding
from .conf import api_target, llmjobs_settings
from .costs import budget_guard, stop_for_budget
from .dedup import Dedup
from .engine import Engine, EngineConfig, EngineStats, Outcome, RunAborted
from .fairness import FairSlice
from .filling import still_filling
from .gil import short_gil_slices
from .leases import Leases
from .models import BatchJob, Item
from .org_governor import key_in_use, share_limits
from .reports import RunReport, engine_counter
from .stopping import stop_on_signals
from .workers import others_hold_leases
from .writer import (
    FINAL_DB_BUDGET,
    DatabaseUnavailable,
    DbRetry,
    outcome_rows,
    update_items,
)

__all__ = [
    "DatabaseUnavailable",  # re-exported from .writer
    "JobRunner",
    "RunReport",
    "engine_counter",
    "preview_job",
    "process_job",
    "run_job",
    "stop_on_signals",  # re-exported from .stopping
]

log = logging.getLogger(__name__)

CLAIM_CHUNK = 500  # most items claimed per query (the size adapts: ``workers.ChunkSizer``)
FLUSH_BATCH = 100  # outcomes waiting that trigger a write at once
FLUSH_EVERY = 0.2  # seconds the oldest unwritten answer may wait (kill -9 loses at most about this)
MAX_BUFFER = 2000  # answers held in memory while the database can't be written (backpressure)
FLUSH_IDLE = 1.0  # seconds between writes of the engine's counters (429s, retries) while no answer waits
CANCEL_POLL = 0.5  # seconds between checks that the job was cancelled elsewhere


class JobRunner(Feeding):
    """Runs one job to completion (or until stopped). One instance, one run."""

    def __init__(
        self,
        job_id: int,
        *,
        client: Any = None,
        engine_config: EngineConfig | None = None,
        on_progress: Callable[[JobRunner], None] | None = None,
        on_dispatch: Callable[[], None] | None = None,
        lease_seconds: float | None = None,
        claim_chunk: int = CLAIM_CHUNK,
        flush_batch: int = FLUSH_BATCH,
        flush_every: float = FLUSH_EVERY,
        max_buffer: int = MAX_BUFFER,
        limit: int | None = None,
        db_outage_seconds: float | None = None,
        drain_seconds: float | None = None,
    ) -> None:
        self.job_id = job_id
        self._client = client
        self._engine_config = engine_config
        self._on_progress = on_progress
        self._on_dispatch = on_dispatch  # called once, on the loop, when the first call goes to the engine
        if lease_seconds is None:
            lease_seconds = llmjobs_settings().lease_seconds
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.claim_chunk = claim_chunk
        self.flush_batch = flush_batch
        self.flush_every = flush_every
        self.max_buffer = max(max_buffer, flush_batch)
        conf = llmjobs_settings()
        self.db_outage_seconds = conf.db_outage_seconds if db_outage_seconds is None else db_outage_seconds
        self.drain_seconds = conf.drain_seconds if drain_seconds is None else drain_seconds
        # A preview: run at most ``limit`` items now and leave the job's status alone.
        self.limit = limit
        if limit is not None:
            self.claim_chunk = min(claim_chunk, limit)

        self.job: BatchJob | None = None
        self.engine: Engine | None = None
        self.report = RunReport(job_id=job_id, status="")
        self.writer_thread_ids: set[int] = set()  # for tests: where the ORM really ran

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llmjobs-writer-{job_id}")
        self._buffer: list[Outcome] = []
        self._buffer_since = 0.0  # loop time of the oldest outcome in the buffer
        self._unwritten_since: float | None = None  # ... of the oldest not yet committed (buffer or write)
        self._buffer_event: asyncio.Event | None = None
        self._space: asyncio.Event | None = None  # set when the buffer has room again
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._closing = False
        self._written_rate_limited = 0
        self._written_retries = 0
        self._interrupted = False
        self._job_cancelled = False
        self._draining = False
        self._hard_stop = threading.Event()  # a second stop: no more waiting, on the loop or the database
        self._retry = DbRetry(
            label=f"job {job_id}", outage_seconds=self.db_outage_seconds, stop=self._hard_stop, report=self.report
        )
        self._digests: dict[int, str] = {}  # dedup digests of the claimed chunk, until dispatched
        self.leases = Leases(job_id, lease=self.lease, max_chunk=self.claim_chunk, report=self.report)
        self._budget: BudgetGuard | None = None  # the job's budget cap (issue 14), see budget.py
        self._cache = CacheMarker(None)  # automatic prompt caching (issue 14), see caching.py
        self.fair: FairSlice | None = None  # a job task's slice on shared workers (``fairness``)
        self._filling = False  # the job's items are still being inserted: never finish it (``filling``)

    # -- the writer ------------------------------------------------------------------
    def _db(self, fn: Callable[..., Any], *, budget: float | None = None) -> Callable[..., Any]:
        """``fn`` as a coroutine run on the writer thread, retried while the database is down."""

        def in_writer(*args: Any, **kwargs: Any) -> Any:
            self.writer_thread_ids.add(threading.get_ident())
            return self._retry.call(fn, *args, budget=budget, **kwargs)

        return sync_to_async(in_writer, thread_sensitive=False, executor=self._executor)

    # -- control ---------------------------------------------------------------------
    def request_stop(self, *, now: bool = False) -> None:
        """Stop soon: send nothing new, let in-flight calls finish (up to ``drain_seconds``)
        and store their answers, put the rest back to pending. With ``now`` (or on a
        second call), cancel in-flight calls at once; leases are still released. Safe from
        any thread (a signal handler, for instance)."""
        hard = now or self._draining
        self._draining = True
        if hard:
            self._hard_stop.set()
        loop = self._loop
        if loop is None or loop.is_closed():
            self._interrupted = self._stopping = True
            return
        loop.call_soon_threadsafe(self._stop, True, hard)

    def _stop(self, interrupted: bool, hard: bool = False) -> None:
        if interrupted:
            self._interrupted = True
        self._stopping = True
        if self.engine is not None:
            self.engine.cancel() if hard else self.engine.drain(self.drain_seconds)
        self._wake_flusher()
        if self._space is not None:
            self._space.set()

    @property
    def stats(self) -> EngineStats | None:
        return self.engine.stats if self.engine is not None else None

    # -- the run ---------------------------------------------------------------------
    async def run(self) -> RunReport:
        self._loop = asyncio.get_running_loop()
        self._buffer_event = asyncio.Event()
        self._space = asyncio.Event()
        try:
            with short_gil_slices():  # the loop waits less for the GIL while the writer works
                return await self._run()
        finally:
            try:
                await self._db(lambda: connection.close(), budget=0)()  # the writer thread's own connection
            except Exception:
                log.debug("closing the writer's connection failed", exc_info=True)
            self._executor.shutdown(wait=False)

    async def _run(self) -> RunReport:
        try:
            job = await self._db(self._start)()
        except DatabaseUnavailable as exc:
            self.report.aborted = str(exc)
            return self.report
        if job is None:
            return self.report
        self.job = job
        if job.mode == BatchJob.Mode.BATCH and self.limit is None:  # Message Batches (issue 14)
            batch = sync_to_async(run_batch_job, thread_sensitive=False)
            try:
                self.report.status = (await batch(job.pk, report=self.report, stop=self._hard_stop)).status
            except DatabaseUnavailable as exc:  # its batches are stored: the next run polls them
                self.report.aborted = str(exc)
            return self.report
        config = self._engine_config or EngineConfig()
        if job.concurrency:
            config.max_concurrency = job.concurrency
            config.initial_concurrency = min(config.initial_concurrency, job.concurrency)
        if job.rate_limit_rpm:
            config.rpm = float(job.rate_limit_rpm)
        if llmjobs_settings().shared_governor and await self._db(key_in_use)(job.model):
            config.first_wave = 1  # other runs may be spending the limits now: one call learns them
        target = api_target()
        self.engine = Engine(
            client=self._client,
            config=config,
            api_key=target.api_key,
            base_url=target.base_url,
            transport=llmjobs_settings().http_transport,
        )
        self._budget = budget_guard(job)
        self._cache.job = job
        if self._stopping:  # stopped before the engine existed
            self._stop(self._interrupted, self._hard_stop.is_set())
        helpers: list[asyncio.Task[None]] = []
        try:
            async with self.engine as engine:
                helpers = [
                    asyncio.create_task(self._flush_loop(), name="llmjobs-flush"),
                    asyncio.create_task(self._renew_leases(), name="llmjobs-leases"),
                    asyncio.create_task(self._watch_cancel(), name="llmjobs-cancel-watch"),
                    asyncio.create_task(share_limits(engine.governor, model=job.model, job_id=job.pk)),
                ]
                calls = self._calls()
                # identical requests sent once (issue 14); hashed on the writer thread (``_claim``)
                dedup = Dedup(self._digest_of) if job.dedup else None
                warm = CacheWarmer(self._cache)  # the first request writes the cache alone
                sent = dedup.calls(warm.calls(calls)) if dedup else warm.calls(calls)
                outcomes = warm.outcomes(engine.run(sent))
                outcomes = dedup.outcomes(outcomes) if dedup else outcomes
                try:
                    async for outcome in outcomes:
                        if not self._buffer:
                            self._buffer_since = asyncio.get_running_loop().time()
                            if self._unwritten_since is None:
                                self._unwritten_since = self._buffer_since
                            self._wake_flusher()  # it sleeps while nothing waits (``FLUSH_IDLE``)
                        self._buffer.append(outcome)
                        if self._budget is not None:
                            self._budget.settle(outcome.key, outcome.usage)
                        if self.limit is not None:
                            self.report.outcomes.append(outcome)
                        if outcome.status == "succeeded":
                            self.report.succeeded += 1
                        elif outcome.status == "failed":
                            self.report.failed += 1
                        if len(self._buffer) >= self.flush_batch:
                            self._wake_flusher()
                        if self._on_progress is not None:
                            self._on_progress(self)
                        if len(self._buffer) >= self.max_buffer:
                            await self._wait_for_room()
                except RunAborted as exc:
                    self.report.aborted = f"{exc.error_type}: {exc.message}"
                    log.error("job %s stopped: %s", self.job_id, self.report.aborted)
                finally:
                    self._stopping = True
                    await calls.aclose()
        except asyncio.CancelledError:
            # The task running us was cancelled (Ctrl-C through asyncio, shutdown):
            # release what we hold, then let the cancellation continue.
            self._interrupted = True
            await asyncio.shield(self._finish(helpers))
            raise
        await self._finish(helpers)
        return self.report

    async def _wait_for_room(self) -> None:
        """Backpressure: answers can't be written. Stop consuming outcomes (the engine then
        stops dispatching; calls in flight finish) until the writer catches up."""
        space = self._space
        assert space is not None
        self._wake_flusher()
        while len(self._buffer) >= self.max_buffer and not self._retry.gave_up and not self._hard_stop.is_set():
            space.clear()
            await space.wait()

    def _wake_flusher(self) -> None:
        if self._buffer_event is not None:
            self._buffer_event.set()

    async def _finish(self, helpers: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        flusher, others = (helpers[0], helpers[1:]) if helpers else (None, [])
        for task in others:
            task.cancel()
        if flusher is not None:
            # Never cancel the flusher mid-write (a batch taken from the buffer
            # would be lost): ask it to stop after its current write.
            self._closing = True
            self._wake_flusher()
            await asyncio.gather(flusher, return_exceptions=True)
        await asyncio.gather(*others, return_exceptions=True)
        budget = FINAL_DB_BUDGET if (self._retry.gave_up or self._hard_stop.is_set()) else None
        try:
            await self._flush(budget=budget)
        except DatabaseUnavailable as exc:
            self._give_up(exc)
        if self.engine is not None:
            self.report.stats = self.engine.stats.as_dict()
            if self.job is not None:
                self.report.advice = self.engine.max_tokens_advice(self.job.max_tokens) or ""
        try:
            job = await self._db(self._conclude, budget=budget)()
        except DatabaseUnavailable as exc:
            self._give_up(exc)
            self.report.status = BatchJob.Status.RUNNING  # as the database last knew it; never "succeeded"
            log.error("job %s: %d item(s) still leased until their lease expires", self.job_id, len(self.leases.held))
            return
        self.report.status = job.status

    def _give_up(self, exc: DatabaseUnavailable) -> None:
        if not self.report.aborted:
            unsaved = len(self._buffer)
            self.report.aborted = f"{exc}; {unsaved} answer(s) not stored" if unsaved else str(exc)
            log.error("job %s stopped: %s", self.job_id, self.report.aborted)
        self._retry.gave_up = True
        self._interrupted = True
        self._stopping = True
        if self.engine is not None:
            self.engine.cancel()  # nothing more can be stored: stop paying
        if self._space is not None:
            self._space.set()

    async def _renew_leases(self) -> None:
        renew = self._db(self.leases.renew)
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                await renew()
            except DatabaseUnavailable as exc:
                self._give_up(exc)
                return

    async def _watch_cancel(self) -> None:
        status_of = self._db(lambda: BatchJob.objects.status_of(self.job_id))
        while True:
            await asyncio.sleep(CANCEL_POLL)
            try:
                status = await status_of()
                turn_over = self.fair is not None and not self._stopping and await self._db(self.fair.should_yield)()
            except DatabaseUnavailable as exc:
                self._give_up(exc)
                return
            if status == BatchJob.Status.CANCELLED:
                # Cancelled elsewhere: send nothing new; answers already on their way
                # (paid for) are stored; what is left is cancelled.
                self._job_cancelled = True
                self._stop(interrupted=False)
                return
            if turn_over:
                self._stopping = True  # our slice is over (fairness): calls in flight finish, items not sent go back

    # -- writing outcomes ------------------------------------------------------------
    async def _flush_loop(self) -> None:
        """Write outcomes when ``flush_batch`` of them wait or the oldest has waited
        ``flush_every`` seconds, whichever comes first."""
        event = self._buffer_event
        loop = self._loop
        assert event is not None and loop is not None  # set by run()
        while not self._closing:
            if len(self._buffer) < self.flush_batch and not self._due(loop):
                wait = max(FLUSH_IDLE, self.flush_every)  # idle: only the engine's counters may be due
                if self._buffer:
                    wait = self._buffer_since + self.flush_every - loop.time()
                try:
                    await asyncio.wait_for(event.wait(), max(wait, 0.001))
                except TimeoutError:
                    pass
                event.clear()
                continue
            try:
                await self._flush()
            except DatabaseUnavailable as exc:
                self._give_up(exc)
                return
            if self._space is not None and len(self._buffer) < self.max_buffer:
                self._space.set()

    def _due(self, loop: asyncio.AbstractEventLoop) -> bool:
        return bool(self._buffer) and loop.time() - self._buffer_since >= self.flush_every * 0.99

    async def _flush(self, budget: float | None = None) -> None:
        rate_limited = retries = 0
        stats = self.stats
        if stats is not None:  # engine counters since the last write
            rate_limited = engine_counter(stats, "rate_limited") - self._written_rate_limited
            retries = engine_counter(stats, "retries") - self._written_retries
        if not self._buffer and not rate_limited and not retries:
            return
        batch, self._buffer = self._buffer, []
        if self._loop is not None:
            self._buffer_since = self._loop.time()
        try:
            await self._db(self._write, budget=budget)(batch, rate_limited, retries)
        except BaseException:
            # Not written: keep the answers, oldest first, for the next try (or the report).
            self._buffer[:0] = batch
            self._buffer_since = self._unwritten_since or self._buffer_since
            raise
        self._unwritten_since = self._buffer_since if self._buffer else None
        self._written_rate_limited += rate_limited
        self._written_retries += retries

    def _write(self, batch: list[Outcome], rate_limited: int = 0, retries: int = 0) -> None:
        job = self.job
        rows = outcome_rows(
            batch,
            cancel=self._job_cancelled,
            model=job.model if job else "",
            batch_price=bool(job and job.mode == BatchJob.Mode.BATCH),
        )
        # counters that moved only: each F() term costs ORM time (half the UPDATE's CPU at 2-3 answers a write)
        deltas = {k: v for k, v in (*rows.counters.items(), ("rate_limited", rate_limited), ("retries", retries)) if v}
        with transaction.atomic():
            if rows.values:
                update_items(rows.values)
            BatchJob.objects.filter(pk=self.job_id).add_to_counters(**deltas)
            if rows.released:
                self.leases.release(rows.released)
        self.leases.written(o.key for o in batch)

    # -- start and end -----------------------------------------------------------------
    def _start(self) -> BatchJob | None:
        close_old_connections()
        job = BatchJob.objects.filter(pk=self.job_id).first()
        if job is None:
            raise BatchJob.DoesNotExist(f"job {self.job_id} does not exist")
        self._filling = still_filling(job)  # its items are still being inserted
        self.report.status = job.status
        if job.status == BatchJob.Status.CANCELLED:
            if Item.objects.filter(job_id=job.pk).cancel_pending():  # what a dead runner left behind
                job.refresh_counters()
            return None
        items = Item.objects.filter(job_id=job.pk)
        if not self._filling and not items.claimable().exists() and not items.running().exists():
            job.mark_finished()
            self.report.status = job.status
            return None
        if self.limit is None:
            job.mark_running()
        return job

    def _conclude(self) -> BatchJob:
        """Release what we still hold, recount, and set the job's final status."""
        self.leases.let_go(cancelled=self._job_cancelled)
        job = BatchJob.objects.get(pk=self.job_id)
        if self.limit is None and self.engine is not None and job.advice != self.report.advice:
            job.advice = self.report.advice  # the job page and the clone form show it
            job.save(update_fields=["advice"])
        self.report.interrupted = self.limit is None and self._interrupted and not self._job_cancelled
        cancelled = self._job_cancelled or job.status == BatchJob.Status.CANCELLED
        budget = self._budget is not None and self._budget.reached
        stopped = self._retry.gave_up or cancelled or bool(self.report.aborted) or budget or self.report.interrupted
        if self.limit is None and not stopped and not Item.objects.filter(job_id=self.job_id).unfinished().exists():
            job.mark_finished()
            return job
        job.refresh_counters()  # a preview, a stop, or items retried while we ran: recount only
        if self.limit is not None:  # a preview leaves the job's status as it was
            return job
        if self._retry.gave_up:  # resumable: the unwritten items go back to pending (or their lease expires)
            job.mark_interrupted()
        elif cancelled:
            if job.status != BatchJob.Status.CANCELLED:
                job.mark_cancelled()
        elif self.report.aborted:
            job.mark_failed(f"Stopped: {self.report.aborted}. Unfinished items stay pending; fix and run again.")
        elif budget:  # "stopped: budget reached", resumable with a higher budget
            assert self._budget is not None
            stop_for_budget(job, self._budget)
        elif self.report.interrupted and not others_hold_leases(self.job_id):
            job.mark_interrupted()  # (while other workers still hold leases the job stays running)
        return job


async def run_job(job_id: int, **options: Any) -> RunReport:
    """Run a job from async code (see ``JobRunner`` for the options)."""
    return await JobRunner(job_id, **options).run()


def process_job(job_id: int, **options: Any) -> RunReport:
    """Run a job from sync code (commands, tasks, admin actions) via ``async_to_sync``."""
    return async_to_sync(run_job)(job_id, **options)


def preview_job(job_id: int, *, count: int = 5, **options: Any) -> list[tuple[Item, Outcome]]:
    """Run the first ``count`` pending items now and return them with their outcomes.

    For checking a prompt before paying for the whole job. The answers are
    saved on the items (so they are not paid for again when the job runs), and
    the job's status is left as it was. Sync: for admin actions and views.
    """
    report = async_to_sync(run_job)(job_id, limit=count, **options)
    if report.aborted and not report.outcomes:  # e.g. a 401: say so, not "nothing to preview"
        from .api_errors import PreviewError, plain_api_error

        error_type, _, message = report.aborted.partition(": ")
        raise PreviewError(plain_api_error(error_type, message))
    items = Item.objects.in_bulk([o.key for o in report.outcomes])
    return [(items[o.key], o) for o in report.outcomes if o.key in items]
