"""``job_resume``: run a stopped (cancelled) job's unanswered items again.

Cancel stops a job and cancels its pending items; resuming puts those
cancelled items back to pending and queues the job. Failed items are left as
they are (that is ``job_retry``, "Retry failed"); succeeded items are never
touched, so nothing already paid for is paid again.
"""

from __future__ import annotations

from django.db import transaction

from .exceptions import JobStateError
from .jobs import job_enqueue
from .models import BatchJob, Item

__all__ = ["job_resume"]


def job_resume(*, job: BatchJob) -> int:
    """Put the cancelled items of a stopped job back to pending and queue it; returns how many."""
    with transaction.atomic():
        current = BatchJob.objects.select_for_update().get(pk=job.pk)
        if current.is_active:
            raise JobStateError(f"job {job.pk} is {current.get_status_display().lower()}: nothing to resume")
        count = (
            Item.objects.filter(job_id=job.pk)
            .cancelled()
            .update(status=Item.Status.PENDING, lease_expires_at=None, started_at=None, finished_at=None)
        )
        if count:
            current.mark_draft()
            current.refresh_counters()
    job.refresh_from_db()
    if count or job.remaining_count:
        job_enqueue(job=job)
    return count
