"""The bridge: a job's pending items -> the engine -> persisted outcomes.

``JobRunner(job_id).run()`` is a coroutine. It claims pending items in chunks
with a short lease, streams them into the engine (never loading the whole job),
and writes outcomes in batches. Every database call goes to **one writer
thread** (``sync_to_async(..., thread_sensitive=False, executor=<its own
single-thread executor>)``), so the event loop never waits on the database
while requests are in flight.

The runner is only that bridge: leases are ``ItemQuerySet`` verbs (``claim``,
``renew``, ``release``, ``cancel_running``) and job state changes are
``BatchJob`` methods (``mark_running``, ``mark_interrupted``...).

Crash safety: an item is marked running with a lease of ``LLMJOBS_LEASE_SECONDS`` when
claimed, and the lease is renewed while the runner lives. Outcomes are written
at least every ``FLUSH_EVERY`` seconds or ``FLUSH_BATCH`` outcomes, so a
``kill -9`` loses at most that window of received answers (they are requested
again). A later run takes pending items and items whose lease expired, and
never an item that already succeeded.

Sync code (management commands, tasks, admin actions) goes through the
services ``jobs.job_run`` and ``jobs.job_preview``, which reach the runner
through ``async_to_sync``; never ``asyncio.run`` inside a loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

from asgiref.sync import async_to_sync, sync_to_async
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from .conf import api_target, llmjobs_settings
from .engine import Call, Engine, EngineConfig, EngineStats, Outcome, RunAborted
from .models import BatchJob, Item
from .prompts import build_params
from .structured import make_validator

__all__ = ["JobRunner", "RunReport", "engine_counter", "preview_job", "process_job", "run_job"]

log = logging.getLogger(__name__)

CLAIM_CHUNK = 500  # items claimed per query
FLUSH_BATCH = 200  # outcomes per write
FLUSH_EVERY = 0.25  # seconds: the most a kill -9 can lose of received answers
CANCEL_POLL = 0.5  # seconds between checks that the job was cancelled elsewhere

_ITEM_FIELDS = [*Item.RESULT_FIELDS, "lease_expires_at", "finished_at"]


@dataclass(slots=True)
class RunReport:
    """What one run did. ``status`` is the job's status when the run ended."""

    job_id: int
    status: str
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    released: int = 0
    interrupted: bool = False
    aborted: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)  # previews only


def engine_counter(stats: EngineStats, name: str) -> int:
    """One of the engine's live counters (``rate_limited``, ``retries``...)."""
    return int(getattr(stats, name))


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else max(0, round(seconds * 1000))


class JobRunner:
    """Runs one job to completion (or until stopped). One instance, one run."""

    def __init__(
        self,
        job_id: int,
        *,
        client: Any = None,
        engine_config: EngineConfig | None = None,
        on_progress: Callable[[JobRunner], None] | None = None,
        lease_seconds: float | None = None,
        claim_chunk: int = CLAIM_CHUNK,
        flush_batch: int = FLUSH_BATCH,
        flush_every: float = FLUSH_EVERY,
        limit: int | None = None,
    ) -> None:
        self.job_id = job_id
        self._client = client
        self._engine_config = engine_config
        self._on_progress = on_progress
        if lease_seconds is None:
            lease_seconds = llmjobs_settings().lease_seconds
        self.lease = dt.timedelta(seconds=lease_seconds)
        self.claim_chunk = claim_chunk
        self.flush_batch = flush_batch
        self.flush_every = flush_every
        # A preview: run at most ``limit`` items now and leave the job's status alone.
        self.limit = limit
        if limit is not None:
            self.claim_chunk = min(claim_chunk, limit)

        self.job: BatchJob | None = None
        self.engine: Engine | None = None
        self.report = RunReport(job_id=job_id, status="")
        self.writer_thread_ids: set[int] = set()  # for tests: where the ORM really ran

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llmjobs-writer-{job_id}")
        self._held: set[int] = set()  # claimed by us, outcome not yet written
        self._buffer: list[Outcome] = []
        self._buffer_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._closing = False
        self._written_rate_limited = 0
        self._written_retries = 0
        self._interrupted = False
        self._job_cancelled = False

    # -- the writer ------------------------------------------------------------------
    def _db(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def in_writer(*args: Any, **kwargs: Any) -> Any:
            self.writer_thread_ids.add(threading.get_ident())
            return fn(*args, **kwargs)

        return sync_to_async(in_writer, thread_sensitive=False, executor=self._executor)

    # -- control ---------------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop soon, putting in-flight items back to pending. Safe from any thread
        (a signal handler, for instance)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._interrupted = self._stopping = True
            return
        loop.call_soon_threadsafe(self._stop, True)

    def _stop(self, interrupted: bool) -> None:
        if interrupted:
            self._interrupted = True
        self._stopping = True
        if self.engine is not None:
            self.engine.cancel()
        if self._buffer_event is not None:
            self._buffer_event.set()

    @property
    def stats(self) -> EngineStats | None:
        return self.engine.stats if self.engine is not None else None

    # -- the run ---------------------------------------------------------------------
    async def run(self) -> RunReport:
        # Everything alive now (Django, the SDK, pydantic schemas: a large heap)
        # lives as long as the process. Freezing it keeps the cyclic GC from
        # scanning it again on every full collection, which otherwise stalls
        # the event loop for 100-200 ms at a time.
        gc.freeze()
        self._loop = asyncio.get_running_loop()
        self._buffer_event = asyncio.Event()
        try:
            return await self._run()
        finally:
            await self._db(lambda: connection.close())()  # the writer thread's own connection
            self._executor.shutdown(wait=False)

    async def _run(self) -> RunReport:
        job = await self._db(self._start)()
        if job is None:
            return self.report
        self.job = job
        config = self._engine_config or EngineConfig()
        if job.concurrency:
            config.max_concurrency = job.concurrency
            config.initial_concurrency = min(config.initial_concurrency, job.concurrency)
        if job.rate_limit_rpm:
            config.rpm = float(job.rate_limit_rpm)
        target = api_target()
        self.engine = Engine(
            client=self._client,
            config=config,
            api_key=target.api_key,
            base_url=target.base_url,
            transport=llmjobs_settings().http_transport,
        )
        if self._stopping:  # stopped before the engine existed
            self.engine.cancel()
        helpers: list[asyncio.Task[None]] = []
        try:
            async with self.engine as engine:
                helpers = [
                    asyncio.create_task(self._flush_loop(), name="llmjobs-flush"),
                    asyncio.create_task(self._renew_leases(), name="llmjobs-leases"),
                    asyncio.create_task(self._watch_cancel(), name="llmjobs-cancel-watch"),
                ]
                calls = self._calls()
                try:
                    async for outcome in engine.run(calls):
                        self._buffer.append(outcome)
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
        await self._flush()
        job = await self._db(self._conclude)()
        self.report.status = job.status
        if self.engine is not None:
            self.report.stats = self.engine.stats.as_dict()

    # -- feeding the engine ------------------------------------------------------------
    async def _calls(self) -> AsyncGenerator[Call, None]:
        claim = self._db(self._claim)
        wait_for_leases = self._db(self._next_foreign_lease_expiry)
        claimed = 0
        schema = self.job.output_schema if self.job is not None else None
        validate = make_validator(schema) if schema else None  # structured output: checked, repaired once
        while not self._stopping:
            if self.limit is not None and claimed >= self.limit:
                return
            batch = await claim()
            claimed += len(batch)
            if not batch:
                if self.limit is not None:
                    return
                # Items still leased by a runner that may have died: wait for the
                # lease to expire, then take them (a live runner renews its own).
                expiry = await wait_for_leases()
                if expiry is None or self._stopping:
                    return
                delay = (expiry - timezone.now()).total_seconds() + 0.05
                await asyncio.sleep(min(max(delay, 0.05), self.lease.total_seconds()))
                continue
            for item_id, params in batch:
                if self._stopping:
                    return
                yield Call(key=item_id, params=params, validate=validate)

    def _claim(self) -> list[tuple[int, dict[str, Any]]]:
        job = self.job
        assert job is not None
        rows = Item.objects.filter(job_id=job.pk).claim(limit=self.claim_chunk, lease=self.lease)
        self._held.update(pk for pk, _ in rows)
        return [(pk, build_params(job, fields)) for pk, fields in rows]

    def _next_foreign_lease_expiry(self) -> dt.datetime | None:
        qs = Item.objects.filter(job_id=self.job_id)
        if self._held:
            qs = qs.exclude(pk__in=list(self._held))
        return qs.next_lease_expiry()

    async def _renew_leases(self) -> None:
        renew = self._db(self._renew)
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            await renew()

    def _renew(self) -> None:
        held = list(self._held)
        if held:
            Item.objects.filter(pk__in=held).renew(lease=self.lease)

    async def _watch_cancel(self) -> None:
        status_of = self._db(lambda: BatchJob.objects.status_of(self.job_id))
        while True:
            await asyncio.sleep(CANCEL_POLL)
            if await status_of() == BatchJob.Status.CANCELLED:
                self._job_cancelled = True
                self._stop(interrupted=False)
                return

    # -- writing outcomes ------------------------------------------------------------
    async def _flush_loop(self) -> None:
        event = self._buffer_event
        assert event is not None  # set by run()
        while not self._closing:
            try:
                await asyncio.wait_for(event.wait(), self.flush_every)
            except TimeoutError:
                pass
            event.clear()
            await self._flush()

    async def _flush(self) -> None:
        rate_limited = retries = 0
        stats = self.stats
        if stats is not None:  # engine counters since the last write
            rate_limited = engine_counter(stats, "rate_limited") - self._written_rate_limited
            retries = engine_counter(stats, "retries") - self._written_retries
        if not self._buffer and not rate_limited and not retries:
            return
        batch, self._buffer = self._buffer, []
        self._written_rate_limited += rate_limited
        self._written_retries += retries
        await self._db(self._write)(batch, rate_limited, retries)

    def _write(self, batch: list[Outcome], rate_limited: int = 0, retries: int = 0) -> None:
        now = timezone.now()
        items: list[Item] = []
        released: list[int] = []
        succeeded = failed = cancelled = tokens_in = tokens_out = 0
        for o in batch:
            key = cast(int, o.key)  # the runner's calls are keyed by item id
            if o.status == "cancelled" and not self._job_cancelled:
                released.append(key)  # interrupted, not cancelled: back to pending
                continue
            usage = o.usage or {}
            item = Item(
                pk=key,
                status=o.status,
                output=o.text or "",
                stop_reason=o.stop_reason or "",
                error_type=(o.error_type or "")[:64],
                error_message=o.error_message or "",
                attempts=o.attempts,
                input_tokens=usage.get("input_tokens"),
                output_tokens=usage.get("output_tokens"),
                latency_ms=_ms(o.latency),
                ttft_ms=_ms(o.ttft),
                lease_expires_at=None,
                finished_at=now,
            )
            items.append(item)
            if o.status == "succeeded":
                succeeded += 1
            elif o.status == "failed":
                failed += 1
            else:
                cancelled += 1
            tokens_in += (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
            tokens_out += usage.get("output_tokens") or 0
        with transaction.atomic():
            if items:
                Item.objects.bulk_update(items, _ITEM_FIELDS, batch_size=500)
            if items or rate_limited or retries:
                BatchJob.objects.filter(pk=self.job_id).add_to_counters(
                    succeeded=succeeded,
                    failed=failed,
                    cancelled=cancelled,
                    input_tokens=tokens_in,
                    output_tokens=tokens_out,
                    rate_limited=rate_limited,
                    retries=retries,
                )
            if released:
                self._release(released)
        self._held.difference_update(o.key for o in batch)

    def _release(self, ids: list[int]) -> int:
        count = Item.objects.filter(pk__in=ids).release()
        self.report.released += count
        return count

    # -- start and end -----------------------------------------------------------------
    def _start(self) -> BatchJob | None:
        close_old_connections()
        job = BatchJob.objects.filter(pk=self.job_id).first()
        if job is None:
            raise BatchJob.DoesNotExist(f"job {self.job_id} does not exist")
        self.report.status = job.status
        if job.status == BatchJob.Status.CANCELLED:
            return None
        items = Item.objects.filter(job_id=job.pk)
        if not items.claimable().exists() and not items.running().exists():
            job.mark_finished()
            self.report.status = job.status
            return None
        if self.limit is None:
            job.mark_running()
        return job

    def _conclude(self) -> BatchJob:
        """Release what we still hold, recount, and set the job's final status."""
        held = list(self._held)
        if held:
            if self._job_cancelled:
                Item.objects.filter(pk__in=held).cancel_running()
            else:
                self._release(held)
            self._held.clear()
        job = BatchJob.objects.get(pk=self.job_id)
        if self.limit is not None:  # a preview leaves the job's status as it was
            job.refresh_counters()
            return job
        self.report.interrupted = self._interrupted and not self._job_cancelled
        if self._job_cancelled or job.status == BatchJob.Status.CANCELLED:
            job.refresh_counters()
            if job.status != BatchJob.Status.CANCELLED:
                job.mark_cancelled()
            return job
        if self.report.aborted:
            job.refresh_counters()
            job.mark_failed(f"Stopped: {self.report.aborted}. Unfinished items stay pending; fix and run again.")
            return job
        if self.report.interrupted:
            job.refresh_counters()
            job.mark_interrupted()
            return job
        if (
            Item.objects.filter(job_id=self.job_id).unfinished().exists()
        ):  # e.g. retried items added while we ran: leave it for the next run
            job.refresh_counters()
            return job
        job.mark_finished()
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
