"""BatchJob and Item: constraints, QuerySet verbs, state methods, counters."""

from __future__ import annotations

import datetime
import threading
import time
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F
from django.db.utils import ConnectionDoesNotExist
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from llmjobs import prompts
from llmjobs.models import BatchJob, Item, estimate_cost

pytestmark = pytest.mark.django_db

S = Item.Status
J = BatchJob.Status


def make_job(n: int = 0, **kwargs) -> BatchJob:
    fields = {"name": "job", "model": "claude-haiku-4-5", "prompt_template": "{text}", **kwargs}
    job = BatchJob.objects.create(total=n, **fields)
    Item.objects.bulk_create(Item(job=job, position=i, input={"text": f"t{i}"}) for i in range(n))
    return job


def set_statuses(job: BatchJob, statuses: list[str]) -> None:
    for position, status in enumerate(statuses):
        Item.objects.filter(job=job, position=position).update(status=status)


# --- constraints ---------------------------------------------------------------------


def test_position_is_unique_within_a_job():
    job = make_job(1)
    with pytest.raises(IntegrityError), transaction.atomic():
        Item.objects.create(job=job, position=0, input={"text": "again"})
    other = make_job(0)
    Item.objects.create(job=other, position=0, input={"text": "fine in another job"})


def test_max_tokens_must_be_positive():
    with pytest.raises(IntegrityError), transaction.atomic():
        make_job(max_tokens=0)


def test_concurrency_null_or_positive():
    make_job(concurrency=None)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_job(concurrency=0)


def test_deleting_a_job_deletes_its_items_and_deleting_the_owner_keeps_the_job():
    user = get_user_model().objects.create_user("ann")
    job = make_job(3, owner=user)
    user.delete()
    job.refresh_from_db()
    assert job.owner is None
    job.delete()
    assert Item.objects.count() == 0


# --- querysets -----------------------------------------------------------------------


def test_pending_is_in_position_order_and_excludes_other_statuses():
    job = make_job(0)
    # created out of order on purpose
    for position in (3, 0, 2, 1, 4):
        Item.objects.create(job=job, position=position, input={"text": str(position)})
    Item.objects.filter(job=job, position=2).update(status=S.SUCCEEDED)
    assert list(job.items.pending().values_list("position", flat=True)) == [0, 1, 3, 4]


def test_claimable_includes_pending_and_running_with_expired_or_missing_lease():
    job = make_job(5)
    now = timezone.now()
    past, future = now - datetime.timedelta(seconds=5), now + datetime.timedelta(seconds=30)
    Item.objects.filter(job=job, position=1).update(status=S.RUNNING, lease_expires_at=past)
    Item.objects.filter(job=job, position=2).update(status=S.RUNNING, lease_expires_at=future)
    Item.objects.filter(job=job, position=3).update(status=S.SUCCEEDED)
    Item.objects.filter(job=job, position=4).update(status=S.RUNNING, lease_expires_at=None)
    assert list(job.items.claimable(now).values_list("position", flat=True)) == [0, 1, 4]
    assert sorted(job.items.stale(now).values_list("position", flat=True)) == [1, 4]
    # Later, the live lease has expired too.
    later = future + datetime.timedelta(seconds=1)
    assert list(job.items.claimable(later).values_list("position", flat=True)) == [0, 1, 2, 4]


def test_release_puts_running_items_back_to_pending():
    job = make_job(3)
    job.items.filter(position__lt=2).update(
        status=S.RUNNING, lease_expires_at=timezone.now() + datetime.timedelta(seconds=30)
    )
    Item.objects.filter(job=job, position=2).update(status=S.SUCCEEDED)
    assert job.items.release() == 2
    assert list(job.items.pending().values_list("position", flat=True)) == [0, 1]
    assert not job.items.filter(lease_expires_at__isnull=False).exists()


def test_item_status_verbs():
    job = make_job(4)
    set_statuses(job, [S.SUCCEEDED, S.FAILED, S.FAILED, S.CANCELLED])
    assert job.items.succeeded().count() == 1
    assert job.items.failed().count() == 2
    assert job.items.cancelled().count() == 1
    assert job.items.running().count() == 0


def test_job_queryset_verbs_and_for_user():
    User = get_user_model()
    ann, bob = User.objects.create_user("ann"), User.objects.create_user("bob")
    staff = User.objects.create_user("sue", is_staff=True)
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="view_batchjob"))  # seeing others' jobs is a permission
    a = make_job(owner=ann, status=J.RUNNING)
    b = make_job(owner=bob, status=J.SUCCEEDED)
    c = make_job(owner=None, status=J.QUEUED)
    d = make_job(owner=ann, status=J.PARTIALLY_FAILED)
    assert set(BatchJob.objects.active()) == {a, c}
    assert set(BatchJob.objects.finished()) == {b, d}
    assert set(BatchJob.objects.for_user(ann)) == {a, d}
    assert set(BatchJob.objects.for_user(staff)) == {a, b, c, d}
    assert list(BatchJob.objects.for_user(None)) == []
    from django.contrib.auth.models import AnonymousUser

    assert list(BatchJob.objects.for_user(AnonymousUser())) == []


def _orm_add(queryset, **deltas) -> int:
    """What ``add_to_counters`` stands for: the ORM's ``F()`` update."""
    fields = {BatchJob.COUNTER_OF.get(k, k): v for k, v in deltas.items()}
    return queryset.update(**{f: F(f) + v for f, v in fields.items()})


COUNTERS = ("succeeded_count", "failed_count", "input_tokens", "cost_usd", "retries_count", "cache_read_input_tokens")
DELTAS = {"succeeded": 2, "input_tokens": 120, "cost_usd": Decimal("0.001234"), "retries": 1}


def test_add_to_counters_is_the_orm_update_in_one_plain_statement():
    a, b, c = make_job(), make_job(), make_job()
    for _ in range(3):
        _orm_add(BatchJob.objects.filter(pk=a.pk), **DELTAS)
        with CaptureQueriesContext(connection) as queries:
            assert BatchJob.objects.filter(pk=b.pk).add_to_counters(**DELTAS) == 1
        (sql,) = [q["sql"] for q in queries]
        assert sql.startswith('UPDATE "llmjobs_batchjob" SET "succeeded_count" = "succeeded_count" + ')
        assert "CAST" not in sql and "CASE" not in sql  # c = c + delta: safe against concurrent writers
    for job in (a, b, c):
        job.refresh_from_db()
    for name in COUNTERS:
        assert getattr(a, name) == getattr(b, name), name
    assert b.cost_usd == Decimal("0.003702") and b.succeeded_count == 6 and c.succeeded_count == 0  # c untouched


def test_add_to_counters_on_any_queryset_and_nothing_to_add_is_no_query(django_assert_num_queries):
    ann = get_user_model().objects.create_user("ann")
    a, b, c = make_job(owner=ann), make_job(owner=ann), make_job(status=J.RUNNING)
    with django_assert_num_queries(0):
        assert BatchJob.objects.filter(pk=a.pk).add_to_counters() == 0  # nothing to add
        assert BatchJob.objects.filter(pk__in=[]).add_to_counters(failed=1) == 0  # nothing matches
    assert BatchJob.objects.filter(pk__in=[a.pk, b.pk]).add_to_counters(failed=2, output_tokens=5) == 2
    assert BatchJob.objects.filter(owner__username="ann").add_to_counters(failed=1) == 2  # a join: the ORM's UPDATE
    assert BatchJob.objects.active().add_to_counters(cancelled=4) == 1
    assert BatchJob.objects.exclude(status=J.RUNNING).filter(owner=ann).add_to_counters(rate_limited=1) == 2
    rows = {j.pk: j for j in BatchJob.objects.all()}
    assert [(rows[j.pk].failed_count, rows[j.pk].output_tokens, rows[j.pk].rate_limited_count) for j in (a, b)] == [
        (3, 5, 1),
        (3, 5, 1),
    ]
    assert (rows[c.pk].failed_count, rows[c.pk].cancelled_count) == (0, 4)


def test_add_to_counters_and_status_of_use_the_querysets_database():
    job = make_job()
    assert BatchJob.objects.using("default").filter(pk=job.pk).add_to_counters(succeeded=1) == 1
    assert BatchJob.objects.using("default").status_of(job.pk) == J.DRAFT
    with pytest.raises(ConnectionDoesNotExist):
        BatchJob.objects.using("elsewhere").filter(pk=job.pk).add_to_counters(succeeded=1)
    with pytest.raises(ConnectionDoesNotExist):
        BatchJob.objects.using("elsewhere").status_of(job.pk)


def test_status_of_is_one_plain_select_and_respects_filters(django_assert_num_queries):
    ann = get_user_model().objects.create_user("ann")
    a, b = make_job(owner=ann, status=J.RUNNING), make_job(status=J.CANCELLED)
    with CaptureQueriesContext(connection) as queries:
        assert BatchJob.objects.status_of(a.pk) == J.RUNNING
    (sql,) = [q["sql"] for q in queries]
    assert sql.startswith('SELECT "status" FROM "llmjobs_batchjob" WHERE') and "LIMIT" not in sql
    assert BatchJob.objects.status_of(str(b.pk)) == J.CANCELLED
    assert BatchJob.objects.status_of(10**9) is None
    assert BatchJob.objects.status_of(2**70) is None  # more than an id holds: the ORM's answer
    assert BatchJob.objects.filter(pk=2**70).add_to_counters(failed=1) == 0
    assert BatchJob.objects.filter(owner=ann).status_of(a.pk) == J.RUNNING
    assert BatchJob.objects.filter(owner=ann).status_of(b.pk) is None  # not among these
    assert BatchJob.objects.filter(owner__username="ann").status_of(a.pk) == J.RUNNING  # a join: the ORM
    assert BatchJob.objects.filter(owner__username="bob").status_of(a.pk) is None
    with django_assert_num_queries(0):
        assert BatchJob.objects.none().status_of(a.pk) is None


@pytest.mark.django_db(transaction=True)
def test_add_to_counters_from_concurrent_threads_loses_nothing():
    job = make_job()
    errors: list[BaseException] = []

    def add() -> None:
        try:
            for _ in range(25):
                for _attempt in range(400):  # SQLite's in-memory test database: "table is locked" at once
                    try:
                        BatchJob.objects.filter(pk=job.pk).add_to_counters(succeeded=1, cost_usd=Decimal("0.000001"))
                        break
                    except OperationalError:
                        time.sleep(0.01)
                else:
                    raise AssertionError("the database stayed locked")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    job.refresh_from_db()
    assert (job.succeeded_count, job.cost_usd) == (100, Decimal("0.000100"))


# --- properties and state methods ------------------------------------------------------


def test_progress_properties():
    job = BatchJob(total=10, succeeded_count=3, failed_count=1, cancelled_count=1)
    assert job.done_count == 5
    assert job.remaining_count == 5
    assert job.progress == 0.5
    assert not job.is_finished
    assert BatchJob(total=0).progress == 1.0
    assert BatchJob(status=J.CANCELLED).is_finished
    assert BatchJob(status=J.QUEUED).is_active


def test_mark_queued_running_cancelled_failed_save_their_fields():
    job = make_job(1, last_error="old")
    job.mark_queued("abc")
    job.refresh_from_db()
    assert (job.status, job.task_id, job.last_error) == (J.QUEUED, "abc", "")

    job.mark_running()
    job.refresh_from_db()
    assert job.status == J.RUNNING and job.started_at is not None
    first_start = job.started_at
    job.mark_running()  # resuming an unfinished run keeps the first start
    job.refresh_from_db()
    assert job.started_at == first_start

    job.mark_failed("authentication_error: bad key")
    job.refresh_from_db()
    assert job.status == J.FAILED and job.last_error.startswith("authentication")
    assert job.finished_at is not None

    job.mark_running()  # a new run after a finish starts a new clock
    job.refresh_from_db()
    assert job.finished_at is None and job.started_at >= first_start

    job.mark_cancelled()
    job.refresh_from_db()
    assert job.status == J.CANCELLED and job.finished_at is not None


def test_state_methods_save_only_their_fields():
    job = make_job(1)
    stale = BatchJob.objects.get(pk=job.pk)
    BatchJob.objects.filter(pk=job.pk).update(name="renamed", succeeded_count=1)
    stale.mark_running()
    job.refresh_from_db()
    assert job.name == "renamed" and job.succeeded_count == 1


def test_refresh_counters_recounts_items_and_sums_tokens():
    job = make_job(5, model="claude-sonnet-4-5-20250929")
    set_statuses(job, [S.SUCCEEDED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.PENDING])
    Item.objects.filter(job=job, position__in=[0, 1]).update(input_tokens=1000, output_tokens=500)
    Item.objects.filter(job=job, position=2).update(input_tokens=10)
    job.total = 99  # wrong on purpose
    job.refresh_counters()
    job.refresh_from_db()
    assert (job.total, job.succeeded_count, job.failed_count, job.cancelled_count) == (5, 2, 1, 1)
    assert (job.input_tokens, job.output_tokens) == (2010, 1000)
    # sonnet 4.5: $3 in / $15 out per million tokens
    assert job.cost_estimate == Decimal("0.021030")


def test_refresh_counters_keeps_the_whole_inputs_total_while_items_arrive():
    job = make_job(3, filling_until=timezone.now() + datetime.timedelta(minutes=1))
    job.total = 10  # the whole input; 3 items are in so far
    job.refresh_counters()
    assert BatchJob.objects.get(pk=job.pk).total == 10 and job.filling and job.progress == 0
    job.filling_until = None  # all in (or cut short): the items are the total
    job.refresh_counters()
    assert BatchJob.objects.get(pk=job.pk).total == 3 and not job.filling


def test_refresh_counters_with_no_tokens_is_zero():
    job = make_job(2)
    job.refresh_counters()
    assert (job.input_tokens, job.output_tokens, job.cost_estimate) == (0, 0, Decimal("0"))


def test_refresh_counters_is_one_query(django_assert_num_queries):
    job = make_job(3)
    with django_assert_num_queries(2):  # the aggregate, then the UPDATE
        job.refresh_counters()


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([S.SUCCEEDED] * 3, J.SUCCEEDED),
        ([S.FAILED] * 3, J.FAILED),
        ([S.SUCCEEDED, S.FAILED, S.SUCCEEDED], J.PARTIALLY_FAILED),
        ([S.SUCCEEDED, S.CANCELLED, S.CANCELLED], J.CANCELLED),
        ([S.FAILED, S.CANCELLED, S.SUCCEEDED], J.CANCELLED),
    ],
)
def test_mark_finished_derives_status_from_items(statuses, expected):
    job = make_job(3, status=J.RUNNING)
    set_statuses(job, statuses)
    job.mark_finished()
    job.refresh_from_db()
    assert job.status == expected
    assert job.finished_at is not None
    assert job.done_count == 3


def test_mark_finished_on_an_empty_job_succeeds():
    job = make_job(0, status=J.RUNNING)
    job.mark_finished()
    assert job.status == J.SUCCEEDED


def test_mark_finished_keeps_a_cancellation_made_elsewhere():
    job = make_job(2, status=J.RUNNING)
    set_statuses(job, [S.SUCCEEDED, S.SUCCEEDED])
    BatchJob.objects.filter(pk=job.pk).update(status=J.CANCELLED)  # another process
    job.mark_finished()  # this instance still thinks it is running
    job.refresh_from_db()
    assert job.status == J.CANCELLED


def test_estimate_cost_matches_model_prefixes_and_unknown_is_zero():
    assert estimate_cost("claude-haiku-4-5", 1_000_000, 1_000_000) == Decimal("6.000000")
    assert estimate_cost("claude-opus-4-1-20250805", 1_000_000, 0) == Decimal("15.000000")
    assert estimate_cost("claude-opus-4-5", 1_000_000, 0) == Decimal("5.000000")
    assert estimate_cost("some-other-model", 10**6, 10**6) == Decimal("0")


def test_item_prompt_and_params_come_from_the_prompts_functions():
    job = make_job(0, prompt_template="Summarize: {text}", system_prompt="Be brief.")
    item = Item.objects.create(job=job, position=0, input={"text": "hello"})
    assert prompts.render(job.prompt_template, item.input) == "Summarize: hello"
    params = prompts.build_params(job, item.input)
    assert params["messages"] == [{"role": "user", "content": "Summarize: hello"}]
    assert params["system"] == "Be brief."
    assert item.text == "hello"
