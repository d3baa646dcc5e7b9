"""The runner: pending items -> engine -> persisted outcomes, against the real simulator.

These tests run the runner in-process (the writer thread has its own database
connection, hence ``transaction=True``).
"""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from django.db import connection

from llmjobs.jobs import job_cancel, job_create
from llmjobs.models import BatchJob, Item
from llmjobs.runner import JobRunner, preview_job, process_job

pytestmark = pytest.mark.django_db(transaction=True)


def make_job(n: int = 20, **kw) -> BatchJob:
    texts = [f"Doc {i:04d}: the quick brown fox number {i} jumps over the lazy dog." for i in range(n)]
    return job_create(
        name="t", template=kw.pop("template", "Summarize: {text}"), model="claude-haiku-4-5", texts=texts, **kw
    )


def test_process_job_runs_every_item_and_keeps_counters_right(api):
    job = make_job(50, max_tokens=64)
    report = process_job(job.pk)  # the sync entry point, through async_to_sync
    job.refresh_from_db()
    assert report.status == job.status == BatchJob.Status.SUCCEEDED
    assert (job.succeeded_count, job.failed_count, job.cancelled_count, job.total) == (50, 0, 0, 50)
    items = list(job.items.order_by("position"))
    assert all(i.status == Item.Status.SUCCEEDED and i.output for i in items)
    assert [i.position for i in items] == list(range(50))
    assert items[7].output.startswith("Doc 0007")  # the answer belongs to its own input
    assert job.input_tokens == sum(i.input_tokens for i in items) > 0
    assert job.output_tokens == sum(i.output_tokens for i in items) > 0
    assert job.cost_estimate > 0
    assert not job.items.filter(lease_expires_at__isnull=False).exists()
    stats = api.stats()
    assert stats["by_status"] == {"200": 50}
    assert stats["prompts"]["requested_more_than_once"] == 0


def test_orm_writes_run_on_one_writer_thread_off_the_loop(api):
    job = make_job(30)
    loop_threads: set[int] = set()
    runner = JobRunner(job.pk, on_progress=lambda r: loop_threads.add(threading.get_ident()), claim_chunk=7)
    async_to_sync(runner.run)()
    assert len(loop_threads) == 1
    assert len(runner.writer_thread_ids) == 1
    assert not (runner.writer_thread_ids & loop_threads)
    assert threading.get_ident() not in runner.writer_thread_ids
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED


def test_bad_requests_fail_with_a_reason_and_the_rest_succeed(api):
    job = make_job(10)
    # Two requests answered 400-style by the API: items fail with the API's reason, others go on.
    api.inject("500", "500")
    report = process_job(job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED  # 500s are retried
    assert report.succeeded == 10
    assert job.items.filter(attempts__gte=2).count() == 2


def test_unknown_model_fails_items_with_the_api_error(api):
    job = job_create(name="t", template="{text}", model="claude-nonexistent-9", texts=["a", "b"])
    process_job(job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.FAILED
    errors = set(job.items.values_list("error_type", flat=True))
    assert errors == {"not_found_error"}
    assert all("claude-nonexistent-9" in m for m in job.items.values_list("error_message", flat=True))


def test_authentication_error_stops_the_job_and_leaves_items_pending(api):
    api.configure(api_key="the-right-key")
    job = make_job(10)
    report = process_job(job.pk)
    job.refresh_from_db()
    assert report.aborted.startswith("authentication_error")
    assert job.status == BatchJob.Status.FAILED
    assert "authentication_error" in job.last_error
    assert job.items.filter(status=Item.Status.PENDING).count() == 10  # undone, not failed
    # With the key fixed, the same job resumes and finishes.
    api.configure(api_key="")
    process_job(job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED


def test_cancel_while_running_cancels_the_rest(api):
    api.configure(ttft=0.5)
    job = make_job(1000)
    cancelled = threading.Event()

    def cancel_after_some(runner: JobRunner) -> None:
        if runner.report.succeeded >= 5 and not cancelled.is_set():
            cancelled.set()
            threading.Thread(target=cancel_from_another_thread).start()

    def cancel_from_another_thread() -> None:  # as a web request or the admin would
        try:
            job_cancel(job=BatchJob.objects.get(pk=job.pk))
        finally:
            connection.close()  # this thread's own connection

    report = async_to_sync(JobRunner(job.pk, on_progress=cancel_after_some).run)()
    job.refresh_from_db()
    assert report.status == BatchJob.Status.CANCELLED == job.status
    counts = {s: job.items.filter(status=s).count() for s in Item.Status.values}
    assert counts["pending"] == counts["running"] == 0
    assert counts["succeeded"] >= 5 and counts["cancelled"] > 0
    assert counts["succeeded"] + counts["cancelled"] + counts["failed"] == 1000
    assert job.succeeded_count == counts["succeeded"] and job.cancelled_count == counts["cancelled"]


def test_stop_request_puts_in_flight_items_back_to_pending_and_a_rerun_resumes(api):
    api.configure(ttft=0.2)
    job = make_job(120)
    runner = JobRunner(job.pk)
    runner._on_progress = lambda r: r.request_stop() if r.report.succeeded >= 10 else None
    report = async_to_sync(runner.run)()
    job.refresh_from_db()
    assert report.interrupted
    assert job.status == BatchJob.Status.DRAFT and "resume" in job.last_error
    done_first = set(job.items.filter(status=Item.Status.SUCCEEDED).values_list("pk", flat=True))
    assert len(done_first) >= 10
    assert not job.items.filter(status=Item.Status.RUNNING).exists()
    assert job.items.filter(status=Item.Status.PENDING).count() == 120 - len(done_first)
    api.reset()
    api.configure(ttft=0.0)
    process_job(job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED
    # The rerun asked only for what was left.
    assert api.stats()["requests"] == 120 - len(done_first)


def test_expired_leases_of_a_dead_runner_are_taken_over(api):
    from datetime import timedelta

    from django.utils import timezone

    job = make_job(20)
    # A runner died holding items 0-9: running, lease expired a moment ago.
    Item.objects.filter(job=job, position__lt=10).update(
        status=Item.Status.RUNNING, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    BatchJob.objects.filter(pk=job.pk).update(status=BatchJob.Status.RUNNING)
    process_job(job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED and job.succeeded_count == 20


def test_preview_runs_five_items_saves_them_and_leaves_the_job_as_it_was(api):
    job = make_job(40, template="Classify as one of: positive, negative, neutral. Text: {text}")
    results = preview_job(job.pk, count=5)
    assert [item.position for item, _ in results] == [0, 1, 2, 3, 4] or len(results) == 5
    assert all(o.status == "succeeded" and o.text in {"positive", "negative", "neutral"} for _, o in results)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.DRAFT
    assert job.succeeded_count == 5
    # Running the job afterwards does not pay for the previewed items again.
    process_job(job.pk)
    stats = api.stats()
    assert stats["requests"] == 40
    assert stats["prompts"]["paid_more_than_once"] == 0


def test_a_finished_job_is_not_run_again(api):
    job = make_job(5)
    process_job(job.pk)
    process_job(job.pk)
    assert api.stats()["requests"] == 5


def test_429s_and_retries_are_counted_on_the_job_not_as_failures(api):
    job = make_job(10)
    api.inject("429", "529")
    process_job(job.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED and job.failed_count == 0
    assert job.rate_limited_count == 1
    assert job.retries_count >= 2


def test_request_stop_drains_in_flight_calls_and_keeps_what_was_paid_for(api):
    api.configure(ttft=0.3)
    job = make_job(200, concurrency=10)
    asked = threading.Event()

    def stop_after_some(runner: JobRunner) -> None:
        if runner.report.succeeded >= 10 and not asked.is_set():
            asked.set()
            runner.request_stop()  # as a first SIGTERM/SIGINT would

    report = async_to_sync(JobRunner(job.pk, on_progress=stop_after_some).run)()
    job.refresh_from_db()
    assert report.interrupted and job.status == BatchJob.Status.DRAFT
    counts = {s: job.items.filter(status=s).count() for s in Item.Status.values}
    assert counts["running"] == counts["cancelled"] == counts["failed"] == 0
    assert counts["succeeded"] + counts["pending"] == 200 and counts["pending"] > 0
    paid = sum(entry["paid"] for entry in api.stats()["prompt_counts"].values())
    assert paid == counts["succeeded"]  # every answer that was paid for is stored
    assert counts["succeeded"] >= 11  # the calls in flight when asked finished and were kept


def test_an_item_that_cannot_be_rendered_fails_and_the_job_goes_on(api):
    job = make_job(5)
    Item.objects.filter(job=job, position=2).update(input={"other": 1})
    report = process_job(job.pk)
    job.refresh_from_db()
    assert (report.succeeded, report.failed) == (4, 1)
    item = job.items.get(position=2)
    assert item.status == Item.Status.FAILED and item.error_type == "prompt_error"
    assert "text" in item.error_message
    assert job.status == BatchJob.Status.PARTIALLY_FAILED and job.failed_count == 1


def _recording_claims(runner: JobRunner) -> list[tuple[int | None, int, int]]:
    """Record each claim of ``runner`` as (most, rows, calls handed to the engine when it began)."""
    claims: list[tuple[int | None, int, int]] = []
    handed = [0]
    calls, claim = runner._calls, runner._claim

    async def counting_calls():
        async for call in calls():
            handed[0] += 1
            yield call

    def recording_claim(most=None):
        before = handed[0]
        rows = claim(most)
        claims.append((most, len(rows), before))
        return rows

    runner._calls = counting_calls  # type: ignore[method-assign]
    runner._claim = recording_claim  # type: ignore[method-assign]
    return claims


def test_the_first_claim_is_small_later_claims_are_full_and_the_next_is_claimed_ahead(api, monkeypatch):
    from llmjobs.claiming import FIRST_CLAIM
    from llmjobs.workers import ChunkSizer

    monkeypatch.setattr(ChunkSizer, "for_claim", lambda self, *, done: self.max_chunk)  # as on SQLite
    job = make_job(FIRST_CLAIM + 250, max_tokens=16)
    runner = JobRunner(job.pk, claim_chunk=100)
    claims = _recording_claims(runner)
    report = async_to_sync(runner.run)()
    assert report.succeeded == FIRST_CLAIM + 250
    assert [rows for _, rows, _ in claims] == [FIRST_CLAIM, 100, 100, 50, 0]
    assert claims[0][0] == FIRST_CLAIM and all(most is None for most, _, _ in claims[1:])
    # each next chunk was claimed while the one before was still being handed out, but
    # only in its last quarter (or last FIRST_CLAIM items): a worker holds little more
    # than one chunk, so other workers sharing the job get the rest
    assert claims[1][2] < FIRST_CLAIM
    assert FIRST_CLAIM + 100 - max(100 // 4, FIRST_CLAIM) <= claims[2][2] < FIRST_CLAIM + 100
    job.refresh_from_db()
    assert job.status == BatchJob.Status.SUCCEEDED and not job.items.exclude(lease_expires_at=None).exists()
    assert api.stats()["prompts"]["requested_more_than_once"] == 0


def test_a_preview_never_claims_past_its_count(api):
    job = make_job(30)
    runner = JobRunner(job.pk, limit=7)
    claims = _recording_claims(runner)
    report = async_to_sync(runner.run)()
    assert len(report.outcomes) == 7 and [rows for _, rows, _ in claims] == [7]
    assert job.items.filter(status=Item.Status.PENDING).count() == 23


@pytest.mark.parametrize("how", ["cancel", "stop"])
def test_a_chunk_claimed_ahead_ends_cancelled_with_the_job_or_back_to_pending_on_a_stop(api, how):
    api.configure(ttft=0.3)
    job = make_job(300, concurrency=5)
    asked = threading.Event()
    held_when_asked: list[int] = []

    def cancel() -> None:  # as a web request or the admin would
        try:
            job_cancel(job=BatchJob.objects.get(pk=job.pk))
        finally:
            connection.close()

    def on_progress(runner: JobRunner) -> None:
        if runner.report.succeeded >= 5 and not asked.is_set():
            asked.set()
            held_when_asked.append(len(runner.leases.held))
            threading.Thread(target=cancel).start() if how == "cancel" else runner.request_stop()

    runner = JobRunner(job.pk, claim_chunk=40, on_progress=on_progress)
    report = async_to_sync(runner.run)()
    # two chunks were held (the one being sent, the next claimed ahead): far more than in flight
    assert held_when_asked[0] > 40
    job.refresh_from_db()
    counts = {s: job.items.filter(status=s).count() for s in Item.Status.values}
    assert counts["running"] == counts["failed"] == 0 and not runner.leases.held
    assert not job.items.exclude(lease_expires_at=None).exists()
    paid = sum(entry["paid"] for entry in api.stats()["prompt_counts"].values())
    assert paid == counts["succeeded"] >= 5  # every answer paid for is stored, none twice
    if how == "cancel":
        assert report.status == job.status == BatchJob.Status.CANCELLED
        assert counts["pending"] == 0 and counts["succeeded"] + counts["cancelled"] == 300
        assert job.cancelled_count == counts["cancelled"] and job.succeeded_count == counts["succeeded"]
    else:
        assert report.interrupted and job.status == BatchJob.Status.DRAFT
        assert counts["cancelled"] == 0 and counts["succeeded"] + counts["pending"] == 300
