"""BatchJob and Item: constraints, QuerySet verbs, state methods, counters."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
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
