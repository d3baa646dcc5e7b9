"""The runner at scale (issue 17): items stream from the database in bounded chunks, outcomes
are stored with one ``executemany`` UPDATE per batch, dedup keeps a bounded window."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from llmjobs.claiming import FIRST_CLAIM
from llmjobs.dedup import Dedup
from llmjobs.engine import Call, Outcome
from llmjobs.jobs import job_create
from llmjobs.leases import Leases
from llmjobs.models import BatchJob, Item, ItemQuerySet
from llmjobs.runner import JobRunner
from llmjobs.writer import ITEM_FIELDS, outcome_rows, update_items

pytestmark = pytest.mark.django_db(transaction=True)


def make_job(n: int, **kw) -> BatchJob:
    texts = [f"Doc {i:04d}: the quick brown fox number {i} jumps over the lazy dog." for i in range(n)]
    return job_create(name="t", template="Summarize: {text}", model="claude-haiku-4-5", texts=texts, **kw)


def test_items_stream_in_chunks_and_the_runner_never_holds_the_whole_job(api, monkeypatch):
    n, chunk, concurrency, flush, buffer = 240, 16, 6, 8, 16
    job = make_job(n, max_tokens=16, concurrency=concurrency)
    fetched: list[int] = []  # rows materialised by each Item query, on any thread
    held: list[int] = []
    lock = threading.Lock()
    fetch_all = ItemQuerySet._fetch_all

    def counting_fetch_all(self):
        fetch_all(self)
        if self.model is Item:
            with lock:
                fetched.append(len(self._result_cache))

    claim = Leases.claim

    def counting_claim(self, *, done, most=None):
        rows = claim(self, done=done, most=most)
        held.append(len(self.held))
        return rows

    monkeypatch.setattr(ItemQuerySet, "_fetch_all", counting_fetch_all)
    monkeypatch.setattr(Leases, "claim", counting_claim)
    runner = JobRunner(job.pk, claim_chunk=chunk, flush_batch=flush, max_buffer=buffer)
    report = async_to_sync(runner.run)()
    assert report.succeeded == n
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED and job.succeeded_count == n
    assert len(held) >= n // chunk  # many claims, ...
    assert max(fetched) <= chunk  # ... no query loaded more than one chunk of items
    # what is held: the next chunk (claimed ahead), the last quarter (or FIRST_CLAIM items)
    # of the one being sent, calls in flight and answers waiting to be written
    assert max(held) <= chunk + max(chunk // 4, FIRST_CLAIM) + concurrency + buffer < n
    assert not runner.leases.held


def test_update_items_stores_what_bulk_update_would(api):
    job = make_job(3)
    ids = list(job.items.order_by("position").values_list("pk", flat=True))
    now = timezone.now()
    usage = {"input_tokens": 120, "output_tokens": 7, "cache_read_input_tokens": 5}
    batch = [
        Outcome(
            key=ids[0], status="succeeded", text="ok", stop_reason="end_turn", usage=usage, attempts=2, latency=0.25
        ),
        Outcome(key=ids[1], status="failed", error_type="invalid_request_error", error_message="bad", attempts=1),
        Outcome(key=ids[2], status="cancelled"),
    ]
    rows = outcome_rows(batch, cancel=False, now=now, model=job.model)
    assert rows.released == [ids[2]] and len(rows.values) == 2
    assert [len(v) for v in rows.values] == [len(ITEM_FIELDS) + 1] * 2
    update_items(rows.values)
    first, second, third = job.items.order_by("position")
    assert (first.status, first.output, first.stop_reason, first.attempts) == ("succeeded", "ok", "end_turn", 2)
    assert (first.input_tokens, first.output_tokens, first.cache_read_input_tokens) == (120, 7, 5)
    assert first.latency_ms == 250 and first.ttft_ms is None
    assert isinstance(first.cost_usd, Decimal) and first.cost_usd > 0
    assert first.cost_usd == rows.items[0].cost_usd
    assert abs(first.finished_at - now) < dt.timedelta(milliseconds=1) and first.lease_expires_at is None
    assert (second.status, second.error_type, second.error_message, second.cost_usd) == (
        "failed",
        "invalid_request_error",
        "bad",
        Decimal(0),
    )
    assert third.status == Item.Status.PENDING  # released rows are not in the UPDATE
    assert rows.counters["succeeded"] == 1 and rows.counters["failed"] == 1 and rows.counters["input_tokens"] == 120


def _dedup_run(dedup: Dedup, params: list[str]) -> tuple[list[int], list[Outcome]]:
    """Feed ``params`` (one call each, keyed by index) through ``dedup`` one at a time;
    each sent call is answered before the next is read. Returns the keys sent and all outcomes."""
    sent: list[int] = []

    async def calls():
        for i, p in enumerate(params):
            yield Call(key=i, params={"p": p})

    async def main() -> list[Outcome]:
        out: list[Outcome] = []
        queue: asyncio.Queue[Outcome | None] = asyncio.Queue()

        async def engine():
            async for call in dedup.calls(calls()):
                sent.append(call.key)
                await queue.put(Outcome(key=call.key, status="succeeded", text=call.params["p"], usage={}))
                for _ in range(10):  # let the reader take it (and settle it) before the next call
                    await asyncio.sleep(0)
            await queue.put(None)

        async def answers():
            while (o := await queue.get()) is not None:
                yield o

        task = asyncio.create_task(engine())
        async for o in dedup.outcomes(answers()):
            out.append(o)
        await task
        return out

    return sent, asyncio.run(main())


def test_dedup_keeps_a_bounded_window_of_answers_and_uses_the_given_digest():
    digests: list[int] = []

    def digest_of(call: Call) -> str:
        digests.append(call.key)
        return call.params["p"]

    dedup = Dedup(digest_of, window=2)
    sent, outcomes = _dedup_run(dedup, ["a", "b", "a", "c", "d", "a"])
    assert digests == [0, 1, 2, 3, 4, 5]  # the runner's digests (computed on its writer thread)
    # "a" answered, shared with item 2; after "c" and "d" it left the window: sent again
    assert sent == [0, 1, 3, 4, 5]
    assert sorted(o.key for o in outcomes) == list(range(6))
    assert {o.key: o.text for o in outcomes}[2] == "a" and dedup.shared == 1
    assert len(dedup._answered) == 2


def test_short_gil_slices_nest_and_restore_the_interval():
    import sys

    from llmjobs.gil import short_gil_slices

    before = sys.getswitchinterval()
    with short_gil_slices(0.0005):
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        with short_gil_slices(0.0005):
            assert sys.getswitchinterval() == pytest.approx(0.0005)
        assert sys.getswitchinterval() == pytest.approx(0.0005)  # the outer block still runs
    assert sys.getswitchinterval() == pytest.approx(before)


def test_a_write_updates_only_the_job_counters_that_moved(api):
    """Issue 17 (idle CPU): each ``F()`` term of the counters UPDATE is ORM time; a write of
    a few answers touches only the counters those answers moved, and the totals stay exact."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    job = make_job(3, max_tokens=16)
    a, b, c = job.items.order_by("position").values_list("pk", flat=True)
    runner = JobRunner(job.pk)
    runner.job = job
    usage = {"input_tokens": 10, "output_tokens": 3}
    with CaptureQueriesContext(connection) as queries:
        runner._write([Outcome(key=a, status="succeeded", text="ok", usage=usage)])
    (update,) = [q["sql"] for q in queries if "UPDATE" in q["sql"] and "llmjobs_batchjob" in q["sql"]]
    assert "succeeded_count" in update and "output_tokens" in update
    for untouched in ("failed_count", "cancelled_count", "retries_count", "rate_limited_count", "cache_read"):
        assert untouched not in update
    runner._write([Outcome(key=b, status="failed", error_type="x", error_message="bad")], rate_limited=2, retries=1)
    with CaptureQueriesContext(connection) as queries:
        runner._write([], 0, 0)  # nothing moved: no counters UPDATE at all
    assert not [q for q in queries if "llmjobs_batchjob" in q["sql"]]
    job.refresh_from_db()
    assert (job.succeeded_count, job.failed_count, job.cancelled_count) == (1, 1, 0)
    assert (job.rate_limited_count, job.retries_count, job.input_tokens, job.output_tokens) == (2, 1, 10, 3)
    assert c  # the third item was never written
