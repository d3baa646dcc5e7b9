"""Issue 12 part 4: fair shares between users and jobs, the spend quota, the usage page.

The ordering is pure (``fairness.pick`` / ``rival`` on a ``Snapshot``) and tested on
plain data; the database side (``snapshot``, ``requeue``, a runner yielding after its
slice against the real simulator) on the default database (SQLite); real
``db_worker`` processes on PostgreSQL (skipped on SQLite)."""

from __future__ import annotations

import datetime as dt
import signal
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from django.utils import timezone

from llmjobs.exceptions import JobInputError
from llmjobs.fairness import FairSlice, Runner, Snapshot, choose, pick, requeue, rival, snapshot
from llmjobs.heartbeats import RunnerHeartbeat
from llmjobs.jobs import job_create
from llmjobs.models import BatchJob, Item
from llmjobs.quotas import usage_of
from llmjobs.workers import worker_identity
from tests.fault_site import FaultSite, postgres_url

postgres_only = pytest.mark.skipif(postgres_url() is None, reason="needs DATABASE_URL=postgres://...")

A, B = 1, 2  # owners


def snap(runners: list[tuple[int, int | None]], wanting: dict[int, int | None]) -> Snapshot:
    """``runners``: (job, owner) in start order; heartbeat pks 100, 101, ..."""
    return Snapshot(
        runners=[Runner(heartbeat=100 + i, job=j, owner=o, started=float(i)) for i, (j, o) in enumerate(runners)],
        wanting=wanting,
    )


# -- unit: the ordering ----------------------------------------------------------------------
def test_pick_prefers_the_user_with_fewest_runners_then_the_job_with_fewest():
    s = snap([(1, A), (1, A), (2, A)], {1: A, 2: A, 3: A, 9: B})
    assert pick(s, preferred=1) == 9  # user B has no runner: B first, whatever the task was for
    s = snap([(1, A), (1, A), (2, A), (9, B)], {1: A, 2: A, 3: A, 9: B})
    assert pick(s, preferred=1) == 9  # B (1 runner) is still behind A (3)
    s = snap([(1, A), (9, B), (9, B)], {1: A, 2: A, 3: A, 9: B})
    assert pick(s, preferred=1) == 2  # A's turn; among A's jobs, the oldest with no runner
    assert pick(s, preferred=3) == 3  # ... or the task's own job on a tie


def test_pick_after_a_yield_goes_to_the_user_who_waited():
    # One worker: alice's runner on job 1 just yielded; the next task was enqueued for her job 2.
    s = snap([], {1: A, 2: A, 9: B})
    s.recent.update({1: 120, 2: 40})
    assert pick(s, preferred=2) == 9  # bob has had nothing in the last minute
    s.recent.update({9: 200})
    assert pick(s, preferred=2) == 2  # now alice's other job, the one served less recently


def test_pick_keeps_the_tasks_own_job_when_nothing_else_wants_a_runner():
    assert pick(snap([(1, A)], {}), preferred=5) == 5
    assert pick(snap([], {5: A}), preferred=5) == 5


def test_rival_only_for_the_oldest_runner_of_the_over_served_user():
    s = snap([(1, A), (1, A), (2, A)], {1: A, 2: A, 9: B})
    assert rival(s, heartbeat=100, job=1, owner=A) == 9  # the oldest of A's runners yields to B
    assert rival(s, heartbeat=101, job=1, owner=A) is None  # one at a time
    assert rival(s, heartbeat=102, job=2, owner=A) is None


def test_rival_round_robin_between_users_on_one_worker():
    # One worker: A runs, B waits -> A yields; then B runs, A waits -> B yields.
    assert rival(snap([(1, A)], {1: A, 9: B}), heartbeat=100, job=1, owner=A) == 9
    assert rival(snap([(9, B)], {1: A, 9: B}), heartbeat=100, job=9, owner=B) == 1


def test_no_rival_for_a_user_with_fewer_or_equal_runners_of_their_own():
    s = snap([(1, A), (1, A), (9, B)], {1: A, 9: B})
    assert rival(s, heartbeat=102, job=9, owner=B) is None  # B has fewer: B keeps its worker
    assert rival(snap([(1, A), (9, B)], {1: A}), heartbeat=100, job=1, owner=A) is None  # B wants no more


def test_rival_within_one_user_is_by_job():
    s = snap([(1, A), (1, A)], {1: A, 2: A})
    assert rival(s, heartbeat=100, job=1, owner=A) == 2  # job 2 of the same user has no runner
    s = snap([(1, A), (2, A)], {1: A, 2: A})
    assert rival(s, heartbeat=100, job=1, owner=A) is None  # equal: nobody moves
    s = snap([(1, None)], {1: None, 2: None})
    assert rival(s, heartbeat=100, job=1, owner=None) == 2  # jobs without an owner share as one user


def test_fair_slice_checks_only_after_its_slice_and_then_every_few_seconds():
    now = [0.0]
    reads: list[float] = []

    def read() -> Snapshot:
        reads.append(now[0])
        return snap([(1, A)], {1: A})  # nobody else waiting

    fs = FairSlice(job=1, owner=A, heartbeat=100, slice_seconds=10, clock=lambda: now[0])
    for t in (0.0, 5.0, 9.9):
        now[0] = t
        assert fs.should_yield(read) is False
    assert reads == []  # no query during the slice
    now[0] = 10.0
    assert fs.should_yield(read) is False
    now[0] = 10.5
    assert fs.should_yield(read) is False  # not checked again so soon
    now[0] = 12.0
    assert fs.should_yield(lambda: snap([(1, A)], {1: A, 9: B})) is True
    assert fs.yielded and fs.should_yield(read) is True  # stays yielded
    assert reads == [10.0]


# -- the database side (SQLite by default) ---------------------------------------------------
def _job(owner, n: int = 20, status=BatchJob.Status.QUEUED) -> BatchJob:
    job = job_create(
        name="f",
        template="Summarize: {text}",
        model="claude-haiku-4-5",
        owner=owner,
        texts=[f"Doc {i:04d} of {owner}" for i in range(n)],
    )
    BatchJob.objects.filter(pk=job.pk).update(status=status)
    return job


def _beat(job: BatchJob) -> RunnerHeartbeat:
    return RunnerHeartbeat.objects.create(job=job, task_id="", **worker_identity())


@pytest.mark.django_db
def test_snapshot_reads_live_runners_and_wanting_jobs(django_user_model, settings):
    settings.LLMJOBS_RUNNERS_PER_JOB = 2
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    a1, a2 = _job(alice, status=BatchJob.Status.RUNNING), _job(alice)
    b1 = _job(bob)
    done = _job(bob, 2, status=BatchJob.Status.RUNNING)
    done.items.update(status=Item.Status.SUCCEEDED)  # nothing to claim: wants nobody
    _job(bob, status=BatchJob.Status.DRAFT)  # not submitted: wants nobody
    _beat(a1), _beat(a1)
    stale = _beat(a2)
    RunnerHeartbeat.objects.filter(pk=stale.pk).update(beat_at=timezone.now() - dt.timedelta(hours=1))
    s = snapshot()
    assert s.by_user == {alice.pk: 2} and s.by_job == {a1.pk: 2}  # the stale heartbeat is a dead worker
    assert s.wanting == {a2.pk: alice.pk, b1.pk: bob.pk}  # a1 has its 2 runners already
    assert pick(s, preferred=a2.pk) == b1.pk


@pytest.mark.django_db
def test_a_task_runs_the_least_served_job_but_a_batch_job_keeps_its_task(django_user_model):
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    a1, a2 = _job(alice, status=BatchJob.Status.RUNNING), _job(alice)
    b1 = _job(bob)
    _beat(a1)
    assert choose(a2.pk) == b1.pk  # bob has no worker yet
    BatchJob.objects.filter(pk=a2.pk).update(mode=BatchJob.Mode.BATCH)
    assert choose(a2.pk) == a2.pk  # Message Batches: polls, claims no chunks


@pytest.mark.django_db
def test_requeue_puts_a_job_without_other_runners_back_to_queued(django_user_model, django_capture_on_commit_callbacks):
    from django_tasks_db.models import DBTaskResult

    alice = django_user_model.objects.create_user("alice")
    job = _job(alice, status=BatchJob.Status.RUNNING)
    mine, other = _beat(job), _beat(job)
    with django_capture_on_commit_callbacks(execute=True):
        assert requeue(job.pk, heartbeat=mine.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.RUNNING  # another runner is still on it
    other.delete()
    with django_capture_on_commit_callbacks(execute=True):
        assert requeue(job.pk, heartbeat=mine.pk)
    job.refresh_from_db()
    assert job.status == BatchJob.Status.QUEUED  # waiting for a worker; the sweep leaves it alone
    tasks = DBTaskResult.objects.filter(task_path="llmjobs.tasks.process_job_task", status="READY")
    assert [t.args_kwargs["args"] for t in tasks] == [[job.pk], [job.pk]]
    job.items.update(status=Item.Status.SUCCEEDED)
    assert requeue(job.pk, heartbeat=mine.pk) is False  # nothing left to claim: no new task


@pytest.mark.django_db(transaction=True)
def test_a_runner_yields_after_its_slice_with_every_claimed_item_finished(django_user_model, sim, settings):
    from llmjobs.runner import JobRunner

    settings.ANTHROPIC_API_KEY = ""
    settings.LLMJOBS_SIMULATOR_URL = sim.base_url
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    big = _job(alice, 40)
    _job(bob, 5)  # queued behind: wants a runner
    beat = _beat(big)
    runner = JobRunner(big.pk, claim_chunk=7)

    def clock() -> float:  # inside the slice until the first chunk is claimed, past it after
        return 100.0 if runner.leases.held or runner.report.succeeded else 0.0

    runner.fair = FairSlice(job=big.pk, owner=alice.pk, heartbeat=beat.pk, slice_seconds=10, clock=clock)
    report = async_to_sync(runner.run)()
    assert runner.fair.yielded and not report.aborted
    counts = dict(big.items.values_list("status").annotate(n=__import__("django").db.models.Count("pk")))
    # What was sent finished and was stored; what was claimed but not sent went back to pending.
    assert set(counts) == {"succeeded", "pending"} and 1 <= counts["succeeded"] <= 7, counts
    assert not big.items.filter(lease_expires_at__isnull=False).exists()  # no lease left behind
    assert sim.stats()["by_status"] == {"200": counts["succeeded"]}  # nothing paid twice, or for nothing
    big.refresh_from_db()
    assert big.status == BatchJob.Status.RUNNING and big.succeeded_count == counts["succeeded"]


@pytest.mark.django_db
def test_the_sweep_gives_a_queued_job_a_task_when_no_task_waits_at_all(
    django_user_model, django_capture_on_commit_callbacks
):
    from django_tasks_db.models import DBTaskResult

    from llmjobs.workers import sweep

    job = _job(django_user_model.objects.create_user("alice"))
    old = timezone.now() - dt.timedelta(minutes=5)
    BatchJob.objects.filter(pk=job.pk).update(queued_at=old)
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep()["jobs_taken_over"] == 1
    tasks = DBTaskResult.objects.filter(task_path="llmjobs.tasks.process_job_task", status="READY")
    assert [t.args_kwargs["args"] for t in tasks] == [[job.pk]]
    BatchJob.objects.filter(pk=job.pk).update(queued_at=old)
    assert sweep()["jobs_taken_over"] == 0  # a task waits now: it (or a later one) picks the job


# -- spend quota and the usage page ------------------------------------------------------------
@pytest.mark.django_db
@override_settings(LLMJOBS_QUOTA_SPEND_PER_DAY=1.5)
def test_spend_per_day_quota(django_user_model):
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    job = _job(alice, 3)
    now = timezone.now()
    job.items.update(status=Item.Status.SUCCEEDED, cost_usd=Decimal("0.5"), finished_at=now)
    with pytest.raises(JobInputError, match=r"quota: your jobs cost \$1\.50 in the last 24 hours.*\$1\.50 a day"):
        _job(alice)
    assert usage_of(alice).spend_today == Decimal("1.5")
    _job(bob)  # someone else is not held back
    job.items.update(finished_at=now - dt.timedelta(days=2))  # spent the day before yesterday
    _job(alice)


@pytest.mark.django_db
@override_settings(LLMJOBS_QUOTA_ITEMS_PER_DAY=1000, LLMJOBS_QUOTA_SPEND_PER_DAY=2)
def test_staff_see_usage_per_user_in_the_admin(admin_client, django_user_model):
    alice = django_user_model.objects.create_user("alice")
    job = _job(alice, 4, status=BatchJob.Status.RUNNING)
    job.items.update(status=Item.Status.SUCCEEDED, cost_usd=Decimal("0.25"), finished_at=timezone.now())
    _beat(job)
    changelist = admin_client.get("/admin/llmjobs/batchjob/")
    assert b"/admin/llmjobs/batchjob/usage/" in changelist.content
    page = admin_client.get("/admin/llmjobs/batchjob/usage/").content.decode()
    assert "<td>alice</td><td>1</td><td>4</td><td>$1.0000</td><td>1</td>" in page
    assert "items a day <strong>1,000</strong>" in page and "spend a day <strong>$2.00</strong>" in page


@pytest.mark.django_db
def test_usage_page_is_for_staff_only(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("mallory"))
    assert client.get("/admin/llmjobs/batchjob/usage/").status_code == 302  # to the admin login


# -- PostgreSQL, real workers ------------------------------------------------------------------
@postgres_only
@pytest.mark.timeout(600)
def test_a_small_job_finishes_while_another_users_large_jobs_run(tmp_path, sim):
    site = FaultSite(tmp_path, sim, LLMJOBS_RUNNERS_PER_JOB="2", LLMJOBS_FAIR_SLICE="2")
    procs: list = []
    try:
        site.sim.configure(ttft=0.2)
        site.shell(
            "from django.contrib.auth import get_user_model; U = get_user_model(); "
            "U.objects.create_user('alice'); U.objects.create_user('bob')"
        )
        big = [site.submit(800, "--concurrency", "10") for _ in range(3)]
        small = site.submit(30, "--concurrency", "10")
        enqueue = (
            "from django.contrib.auth import get_user_model; from llmjobs.jobs import job_enqueue; "
            "from llmjobs.models import BatchJob; U = get_user_model(); "
            "[(BatchJob.objects.filter(pk=pk).update(owner=U.objects.get(username=who)), "
            "job_enqueue(job=BatchJob.objects.get(pk=pk))) for pk, who in {pairs}]"
        )
        site.shell(enqueue.format(pairs=[(pk, "alice") for pk in big]))
        procs = [site.popen("db_worker", "--no-startup-delay", "--no-reload", "--interval", "0.1") for _ in range(2)]
        site.wait_succeeded(big[0], 50)  # alice's jobs hold both workers
        site.shell(enqueue.format(pairs=[(small, "bob")]))  # bob's small job is queued behind 6 tasks
        site.wait_for(lambda: site.job_status(small)[0] == "succeeded")
        pending = sum(site.counts(pk).get("pending", 0) for pk in big)
        assert site.counts(small) == {"succeeded": 30}
        assert pending > 800, pending  # more than a whole job of alice's was left (FIFO: none)
        site.sim.configure(ttft=0.0)  # fairness is shown: the rest of alice's items need not wait 0.2 s each
        site.wait_for(lambda: all(site.job_status(pk)[0] == "succeeded" for pk in big), polls=6000)
        for pk in big:
            assert site.counts(pk) == {"succeeded": 800}
        # Yielding never pays an item twice (alice's three jobs share their prompts: count calls).
        assert site.sim.stats()["by_status"] == {"200": 3 * 800 + 30}
        # Left-over tasks (and sweeps) end; no task row is left running, none failed.
        site.wait_for(
            lambda: (
                not site.query("SELECT 1 FROM django_tasks_database_dbtaskresult WHERE status IN ('RUNNING', 'READY')")
            )
        )
        assert not site.query("SELECT 1 FROM django_tasks_database_dbtaskresult WHERE status = 'FAILED'")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            code, _out, err = site.finish(proc)
            assert code == 0, err
        site.close()
