"""Issue 12: one job on every worker. Real `db_worker` subprocesses on a real
PostgreSQL (skipped on SQLite: one process is the SQLite story), the real simulator."""

from __future__ import annotations

import signal

import pytest
from django.core.management import call_command

from llmjobs.models import Item
from llmjobs.workers import ChunkSizer, worker_identity, workers_on_job
from tests.fault_site import FaultSite, postgres_url

postgres_only = pytest.mark.skipif(postgres_url() is None, reason="needs DATABASE_URL=postgres://...")


# -- unit: the chunk size adapts to the runner's throughput ---------------------------------
def test_chunk_size_starts_small_then_lasts_about_target_seconds():
    sizer = ChunkSizer(max_chunk=500, initial=50, min_chunk=5, target_seconds=3.0)
    assert sizer.next(now=100.0, done=0) == 50  # nothing known yet
    assert sizer.next(now=102.0, done=40) == 60  # 20 items/s * 3 s
    assert sizer.next(now=110.0, done=2000) == 500  # capped
    assert sizer.next(now=200.0, done=1) == 5  # slow: never below the floor


def test_chunk_size_respects_a_small_maximum():
    sizer = ChunkSizer(max_chunk=3, initial=50)
    assert sizer.next(now=0.0, done=0) == 3
    assert sizer.next(now=10.0, done=100) == 3


def test_worker_identity_names_host_and_pid():
    import os
    import socket

    me = worker_identity()
    assert me["worker_pid"] == os.getpid()
    assert me["worker_host"] == socket.gethostname()[:200]
    assert str(os.getpid()) in me["worker_id"]
    assert worker_identity() == me  # stable in one process


@pytest.mark.django_db
def test_claim_records_the_worker_and_job_status_lists_it(capsys):
    import datetime as dt

    from tests.test_runner import make_job

    job = make_job(4)
    rows = Item.objects.filter(job_id=job.pk).claim(limit=3, lease=dt.timedelta(seconds=30), worker=worker_identity())
    assert len(rows) == 3
    [worker] = workers_on_job(job.pk)
    assert (worker.items, worker.running, worker.pid) == (3, 3, worker_identity()["worker_pid"])
    call_command("job_status", str(job.pk))
    out = capsys.readouterr().out
    assert "worker:" in out and "3 running" in out


# -- PostgreSQL, real workers ---------------------------------------------------------------
@pytest.fixture
def site(tmp_path, sim):
    s = FaultSite(tmp_path, sim, LLMJOBS_RUNNERS_PER_JOB="3")
    yield s
    s.close()


def _start_workers(site: FaultSite, count: int) -> list:
    return [site.popen("db_worker", "--no-startup-delay", "--no-reload", "--interval", "0.1") for _ in range(count)]


def _stop(site: FaultSite, procs: list) -> list[tuple[int, str, str]]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return [site.finish(proc) for proc in procs]


@postgres_only
def test_three_db_workers_share_one_job(site):
    site.sim.configure(ttft=0.3)
    job_id = site.submit(600, "--concurrency", "10")
    procs = _start_workers(site, 3)
    try:
        site.shell(
            "from llmjobs.jobs import job_enqueue; from llmjobs.models import BatchJob; "
            f"job_enqueue(job=BatchJob.objects.get(pk={job_id}))"
        )
        site.wait_for(lambda: site.job_status(job_id)[0] == "succeeded")
    finally:
        results = _stop(site, procs)
    assert [code for code, _, _ in results] == [0, 0, 0], results
    assert site.counts(job_id) == {"succeeded": 600}
    per_pid = dict(
        site.query("SELECT worker_pid, COUNT(*) FROM llmjobs_item WHERE job_id = ? GROUP BY worker_pid", (job_id,))
    )
    assert set(per_pid) == {proc.pid for proc in procs}, per_pid  # every worker took part
    assert all(n > 0 for n in per_pid.values())
    status = site.manage("job_status", str(job_id)).stdout
    assert status.count("worker:") == 3, status
    tasks = site.query(
        "SELECT status, COUNT(*) FROM django_tasks_database_dbtaskresult WHERE task_path = ? GROUP BY status",
        ("llmjobs.tasks.process_job_task",),
    )
    assert dict(tasks) == {"SUCCESSFUL": 3}


# -- takeover: kill -9 of a worker, no command run ------------------------------------------
@postgres_only
@pytest.mark.parametrize(("runners", "workers"), [(1, 2), (3, 3)], ids=["job-on-one-worker", "job-on-three"])
def test_kill_9_of_a_worker_is_taken_over_with_no_command(tmp_path, sim, runners, workers):
    site = FaultSite(tmp_path, sim, LLMJOBS_RUNNERS_PER_JOB=str(runners))
    procs: list = []
    try:
        site.sim.configure(ttft=0.3)
        job_id = site.submit(600, "--concurrency", "10")
        procs = _start_workers(site, workers)
        site.shell(
            "from llmjobs.jobs import job_enqueue; from llmjobs.models import BatchJob; "
            f"job_enqueue(job=BatchJob.objects.get(pk={job_id}))"
        )
        site.wait_succeeded(job_id, 60)
        [(victim_pid, task_id)] = site.query(
            "SELECT worker_pid, task_id FROM llmjobs_runnerheartbeat WHERE job_id = ? ORDER BY id LIMIT 1", (job_id,)
        )
        victim = next(p for p in procs if p.pid == victim_pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        site.wait_for(lambda: site.job_status(job_id)[0] == "succeeded")
        # Sweeps still running finish; then no task row is left running.
        site.wait_for(
            lambda: not site.query("SELECT 1 FROM django_tasks_database_dbtaskresult WHERE status = 'RUNNING'")
        )
        assert site.counts(job_id) == {"succeeded": 600}
        [(status, exc_path, reason)] = site.query(
            "SELECT status, exception_class_path, traceback FROM django_tasks_database_dbtaskresult WHERE id = ?",
            (task_id,),
        )
        assert (status, exc_path) == ("FAILED", "llmjobs.workers.WorkerLost")
        assert f"pid {victim_pid}" in reason and "taken over" in reason
        # Items the dead worker held were run again by live workers (not lost, not left running).
        survivors = {p.pid for p in procs if p is not victim}
        after = dict(
            site.query("SELECT worker_pid, COUNT(*) FROM llmjobs_item WHERE job_id = ? GROUP BY worker_pid", (job_id,))
        )
        assert set(after) - {victim_pid} <= survivors and set(after) & survivors
        assert site.paid_twice() <= 10 * runners + 60  # in flight at the kill, plus unwritten answers
    finally:
        for code, _out, err in _stop(site, procs):
            assert code in (0, -signal.SIGKILL), err
        site.close()
