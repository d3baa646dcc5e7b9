"""Start early (issue 17): a job runs while its items are still being inserted (``llmjobs.filling``).

The real runner against the real simulator, in-process (the filler and the writer
have their own connections: ``transaction=True``), and ``submit_job --run`` in a real
subprocess killed with -9 mid-insert. SQLite, or the PostgreSQL of DATABASE_URL.
Batch sizes are made small so that a few thousand items take many transactions.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from llmjobs import filling
from llmjobs.jobs import job_cancel, job_create, job_run, recover_stalled_jobs
from llmjobs.models import BatchJob, Item
from llmjobs.runner import JobRunner

from .test_commands import Site

pytestmark = pytest.mark.django_db(transaction=True)

TEXTS = [f"Doc {i:05d}: the quick brown fox number {i} jumps over the lazy dog." for i in range(3000)]


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(filling, "FIRST_BATCH", 100)
    monkeypatch.setattr(filling, "FILL_BATCH", 50)


def _create(n: int, start=None, **kw) -> BatchJob:
    return job_create(
        name="fill", template="Summarize: {text}", model="claude-haiku-4-5", texts=TEXTS[:n], start=start, **kw
    )


def _statuses(job_id: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in Item.objects.filter(job_id=job_id).values_list("status", flat=True):
        counts[status] = counts.get(status, 0) + 1
    return counts


def _retry_locked(fn):
    """``fn()``, retried while SQLite's in-memory test database (shared cache) answers
    "table is locked" at once (it has no busy timeout) because the runner's thread holds it."""
    for _ in range(1200):  # bounded: ~60 s
        try:
            return fn()
        except OperationalError:
            connection.close()
            time.sleep(0.05)
    return fn()


def _close_the_set(job_id: int) -> None:
    with transaction.atomic():  # what the submitter's last batch does
        filling.insert_items(job_id, [({"text": t}, "") for t in TEXTS[10:30]], 10)
        BatchJob.objects.filter(pk=job_id).update(filling_until=None)


def _paid_once(sim, n: int) -> None:
    paid = [entry["paid"] for entry in sim.stats()["prompt_counts"].values()]
    assert len(paid) == n and set(paid) == {1}  # every item's request paid for exactly once


def test_items_inserted_while_the_runner_runs_all_succeed_once(api, small_batches):
    seen: dict[str, object] = {}

    def start(job: BatchJob) -> None:
        seen["open"] = BatchJob.objects.get(pk=job.pk).filling_until is not None
        seen["total"] = job.total
        seen["report"] = job_run(job=job)

    job = _create(2000, start=start, head_start=True)  # the rest is inserted once the runner has claimed
    job.refresh_from_db()
    assert seen["open"] is True  # the runner started before the last rows were in
    assert seen["total"] == 2000  # the whole input's count from the start: progress is right
    assert seen["report"].status == BatchJob.Status.SUCCEEDED  # type: ignore[attr-defined]
    assert job.status == BatchJob.Status.SUCCEEDED and job.filling_until is None
    assert (job.total, job.succeeded_count, job.failed_count, job.cancelled_count) == (2000, 2000, 0, 0)
    assert _statuses(job.pk) == {"succeeded": 2000}
    assert sorted(job.items.values_list("position", flat=True)) == list(range(2000))
    assert set(job.items.values_list("attempts", flat=True)) == {1}
    _paid_once(api, 2000)


def test_a_runner_does_not_finish_an_open_job_early(api):
    """Every item there is has succeeded, but the set is open: the runner waits for the rest."""
    job = _create(10)
    BatchJob.objects.filter(pk=job.pk).update(filling_until=timezone.now() + dt.timedelta(minutes=5), total=30)
    runner = JobRunner(job.pk)
    result: dict[str, object] = {}
    thread = threading.Thread(target=lambda: result.update(report=job_run(job=job, runner=runner)))
    thread.start()
    try:
        succeeded = job.items.filter(status=Item.Status.SUCCEEDED)
        for _ in range(600):  # bounded: ~60 s
            if _retry_locked(succeeded.count) == 10:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the first items never succeeded")
        time.sleep(3 * 0.1 + 0.5)  # a few claims find nothing; an early finish would happen now
        assert thread.is_alive()
        assert _retry_locked(lambda: BatchJob.objects.get(pk=job.pk).status) == BatchJob.Status.RUNNING
        _retry_locked(lambda: _close_the_set(job.pk))
    finally:
        thread.join(timeout=60)
    connection.close()
    job.refresh_from_db()
    assert result["report"].status == job.status == BatchJob.Status.SUCCEEDED  # type: ignore[attr-defined]
    assert (job.total, job.succeeded_count) == (30, 30)
    _paid_once(api, 30)


def test_cancel_during_insert_stops_the_submitter_and_the_runner(api, small_batches, monkeypatch):
    cancelled = threading.Event()
    real_batch = filling._insert_batch

    def insert_batch(job_id, batch, done, total):  # past item 500 the submitter waits for the cancel
        if done >= 500:
            cancelled.wait(timeout=60)
        real_batch(job_id, batch, done, total)

    monkeypatch.setattr(filling, "_insert_batch", insert_batch)

    def cancel_once_running(job: BatchJob) -> None:
        # Retried: SQLite's in-memory test database (shared cache) says "table is locked" at once.
        for _ in range(1200):  # bounded: ~60 s
            try:
                if Item.objects.filter(job_id=job.pk, status=Item.Status.SUCCEEDED).exists():
                    job_cancel(job=BatchJob.objects.get(pk=job.pk))
                    cancelled.set()
                    break
            except OperationalError:
                connection.close()
            time.sleep(0.05)
        cancelled.set()
        connection.close()

    reports = []

    def start(job: BatchJob) -> None:
        canceller = threading.Thread(target=cancel_once_running, args=(job,))
        canceller.start()
        try:
            reports.append(job_run(job=job))
        finally:
            canceller.join()

    job = _create(3000, start=start)  # returns: the submitter stopped too
    job.refresh_from_db()
    counts = _statuses(job.pk)
    inserted = sum(counts.values())
    assert reports[0].status == job.status == BatchJob.Status.CANCELLED
    assert job.filling_until is None
    assert 100 <= inserted <= 500  # the insertion stopped with the cancel
    assert set(counts) <= {"succeeded", "cancelled"} and counts.get("succeeded", 0) >= 1
    # (on a fast machine every inserted item may have been answered before the cancel landed)
    assert (job.total, job.succeeded_count, job.cancelled_count) == (
        inserted,
        counts["succeeded"],
        counts.get("cancelled", 0),
    )
    paid = [entry["paid"] for entry in api.stats()["prompt_counts"].values()]
    assert set(paid) <= {1} and len(paid) >= counts["succeeded"]  # nothing paid twice


def test_a_lapsed_fill_is_cut_short_with_a_reason(api):
    job = _create(5)
    expired = timezone.now() - dt.timedelta(seconds=1)
    BatchJob.objects.filter(pk=job.pk).update(filling_until=expired, total=50)
    assert recover_stalled_jobs() == []
    job.refresh_from_db()
    assert job.status == BatchJob.Status.CANCELLED and job.filling_until is None
    assert job.last_error.startswith("Submission cut short: only 5 of 50 item(s) were inserted")
    assert (job.total, job.cancelled_count) == (5, 5)
    assert not filling.cut_short(job.pk, expired=expired)  # once


def test_a_failed_batch_cuts_the_job_short_and_raises(api, small_batches, monkeypatch):
    real = filling.insert_items

    def insert(job_id, rows, start=0):
        if start >= 300:
            raise RuntimeError("disk full")
        real(job_id, rows, start)

    monkeypatch.setattr(filling, "insert_items", insert)
    jobs: list[BatchJob] = []
    with pytest.raises(RuntimeError, match="disk full"):
        _create(1000, start=jobs.append)
    job = BatchJob.objects.get(pk=jobs[0].pk)
    assert job.status == BatchJob.Status.CANCELLED and job.filling_until is None
    assert "only 300 of 1000" in job.last_error and "RuntimeError: disk full" in job.last_error
    assert _statuses(job.pk) == {"cancelled": 300}


def test_inside_a_transaction_all_items_come_first(db, small_batches):
    seen = []
    with transaction.atomic():
        job = _create(500, start=lambda job: seen.append(Item.objects.filter(job_id=job.pk).count()))
    assert seen == [500]
    job.refresh_from_db()
    assert job.filling_until is None and job.total == 500


SUBMITTER = """
import sys, django
django.setup()
from llmjobs import filling
filling.FIRST_BATCH, filling.FILL_BATCH = 20, 10
from django.core.management import call_command
call_command("submit_job", sys.argv[1], "--template", "Summarize: {text}", "--max-tokens", "16", "--no-estimate", "--run")
"""


def test_a_submitter_killed_mid_insert_leaves_a_job_that_ends_with_a_reason(sim, tmp_path):
    site = Site(tmp_path, sim)
    try:
        proc = _start_submitter(SUBMITTER, tmp_path, site.env)
        try:
            for _ in range(1200):  # bounded: ~60 s
                line = proc.stdout.readline() if proc.stdout else ""
                if line.strip().isdigit() or proc.poll() is not None:
                    break
            job_id = int(line)
            time.sleep(0.3)  # the runner and the filler at work
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        # A new runner runs what was inserted, waits for the rest, sees the lease lapse (4 s): cancelled.
        _runs_cut_short(site, job_id, at_least=20)
    finally:
        site.close()


WEB_SUBMITTER = """
import sys, time, django
django.setup()
from llmjobs import filling
filling.FIRST_BATCH, filling.FILL_BATCH, filling.HEAD_START = 20, 10, 0.0
real = filling._insert_batch
filling._insert_batch = lambda *args: (time.sleep(0.02), real(*args))  # a slow database
from django.contrib.auth import get_user_model
from django.test import Client
client = Client(HTTP_HOST="localhost")
client.force_login(get_user_model().objects.create_user("web"))
data = {"source": "paste", "texts": open(sys.argv[1]).read(), "prompt_template": "Summarize: {text}",
        "model": "claude-haiku-4-5", "max_tokens": "16", "mode": "online", "action": "run"}
response = client.post("/jobs/new/", data)
print(response.status_code, response["Location"], flush=True)
time.sleep(120)  # the filler thread at work, until the process is killed
"""


def test_a_web_process_killed_mid_insert_leaves_a_job_that_ends_with_a_reason(sim, tmp_path):
    """The form's Run: the job is queued and the response sent with the first items in; the web
    process is killed (-9) while inserting the rest. A worker runs what is there, sees the lease
    lapse, and the job ends cancelled with the reason; nothing stays pending."""
    site = Site(tmp_path, sim)
    try:
        proc = _start_submitter(WEB_SUBMITTER, tmp_path, {**site.env, "ALLOWED_HOSTS": "localhost"})
        try:
            line = proc.stdout.readline() if proc.stdout else ""  # the response: 302 to the job page
            status, location = line.split()
            assert status == "302", line
            job_id = int(location.strip("/").rsplit("/", 1)[-1])
            for _ in range(600):  # bounded: ~60 s
                if _inserted(site, job_id) >= 40:  # the filler is at work (no worker runs yet)
                    break
                time.sleep(0.1)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        status = site.status(job_id)
        assert "status:    queued" in status and " of 3000" in status  # queued with items still arriving
        status = _runs_cut_short(site, job_id, at_least=40)
        assert "the submitting process stopped" in status
    finally:
        site.close()


def _start_submitter(script: str, tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """``script`` in a fresh interpreter, submitting a file of 3,000 documents (its argv[1])."""
    docs = Path(tmp_path, "docs.txt")
    docs.write_text("".join(f"Doc {i:05d} says hello\n" for i in range(3000)))
    return subprocess.Popen(
        [sys.executable, "-c", script, str(docs)],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _runs_cut_short(site: Site, job_id: int, *, at_least: int) -> str:
    """``process_job`` on a job whose submitter died mid-insert: it runs what is there and ends
    the job cancelled, cut short with the reason; no item stays pending or running. Returns
    ``job_status``'s text."""
    result = site.manage("process_job", str(job_id), "--no-progress", check=False)
    assert result.returncode == 0, result.stderr
    assert f"job {job_id}: cancelled" in result.stdout
    status = site.status(job_id)
    assert "last error: Submission cut short: only " in status and " of 3000 item(s) were inserted" in status
    rows = site.export(job_id)
    assert at_least <= len(rows) < 3000
    assert {r["status"] for r in rows} <= {"succeeded", "cancelled"}  # none pending or running: nothing hangs
    assert f"items:     {len(rows)} total" in status
    return status


def _inserted(site: Site, job_id: int) -> int:
    sql = "SELECT COUNT(*) FROM llmjobs_item WHERE job_id = %s"
    if site.db_name:
        import psycopg

        with psycopg.connect(site.env["DATABASE_URL"], autocommit=True) as conn:
            [(n,)] = conn.execute(sql, (job_id,)).fetchall()
        return int(n)
    import sqlite3

    conn = sqlite3.connect(site.tmp / "db.sqlite3", timeout=30)
    try:
        [(n,)] = conn.execute(sql.replace("%s", "?"), (job_id,)).fetchall()
    finally:
        conn.close()
    return int(n)


def test_a_server_shutting_down_finishes_inserting_first(monkeypatch):
    """``fill(wait=False)`` (the web form, the API): the server's ASGI lifespan shutdown waits
    for the insertion (uvicorn re-raises SIGTERM once shut down: a thread would not be waited for)."""
    import asyncio

    from llmjobs.web.playground import with_lifespan

    from .fill_helpers import HeldFill

    held = HeldFill(monkeypatch)
    job = _create(1000, start=lambda job: None, wait=False)
    held.wait_until_held()
    assert _statuses(job.pk) == {"pending": 200}

    async def receive():
        held.released.set()  # the filler goes on only once the server is shutting down
        return {"type": "lifespan.shutdown"}

    sent = []

    def count() -> int:
        try:
            return _retry_locked(Item.objects.filter(job_id=job.pk).count)
        finally:
            connection.close()  # this thread's own

    async def send(message):
        sent.append((message["type"], await asyncio.to_thread(count)))

    async def inner(scope, receive, send):  # the Django app: not reached for a lifespan scope
        raise AssertionError

    asyncio.run(with_lifespan(inner)({"type": "lifespan"}, receive, send))
    assert sent == [("lifespan.shutdown.complete", 1000)]  # every item was in before it said so
    job.refresh_from_db()
    assert job.filling_until is None and job.total == 1000
    assert filling.join_fills(timeout=0)
