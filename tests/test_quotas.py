"""Issue 12: per-user quotas, checked on submit (``jobs.job_create``, which every surface uses)."""

from __future__ import annotations

import pytest
from django.test import override_settings

from llmjobs.exceptions import JobInputError
from llmjobs.jobs import job_create
from llmjobs.models import BatchJob
from llmjobs.quotas import usage_of

pytestmark = pytest.mark.django_db


def _create(owner, n: int = 2) -> BatchJob:
    return job_create(
        name="q", template="{text}", model="claude-haiku-4-5", owner=owner, texts=[f"t{i}" for i in range(n)]
    )


@override_settings(LLMJOBS_QUOTA_ACTIVE_JOBS=2)
def test_most_active_jobs_per_user(django_user_model):
    alice = django_user_model.objects.create_user("alice")
    bob = django_user_model.objects.create_user("bob")
    for status in (BatchJob.Status.QUEUED, BatchJob.Status.RUNNING):
        BatchJob.objects.filter(pk=_create(alice).pk).update(status=status)
    with pytest.raises(JobInputError, match=r"quota: you have 2 job\(s\) queued or running, the most allowed is 2"):
        _create(alice)
    assert BatchJob.objects.filter(owner=alice).count() == 2  # nothing created
    _create(bob)  # another user is not held back
    _create(None)  # nor a job without an owner


@override_settings(LLMJOBS_QUOTA_ITEMS_PER_DAY=10)
def test_most_items_per_day(django_user_model):
    alice = django_user_model.objects.create_user("alice")
    _create(alice, 6)
    with pytest.raises(JobInputError, match=r"quota: 5 more item.* 11 in 24 hours, over your limit of 10 items a day"):
        _create(alice, 5)
    _create(alice, 4)
    assert usage_of(alice).items_today == 10


def test_no_quota_by_default(django_user_model):
    alice = django_user_model.objects.create_user("alice")
    for _ in range(3):
        BatchJob.objects.filter(pk=_create(alice, 50).pk).update(status=BatchJob.Status.RUNNING)
    assert usage_of(alice).active_jobs == 3
