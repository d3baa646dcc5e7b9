"""Background tasks on Django's task framework (``django.tasks``).

Thin on purpose: a task loads ids and calls a service. The default backend is
django-tasks-db (``manage.py db_worker``); any other ``django.tasks`` backend
works without a code change. Enqueue through ``jobs.job_enqueue``, which does
it after the transaction commits.
"""

from __future__ import annotations

from django.tasks import task

__all__ = ["deliver_webhook_task", "process_job_task"]


@task()
def process_job_task(job_id: int) -> None:
    """Process the pending items of job ``job_id`` (resumable; see ``runner``)."""
    from .jobs import job_run
    from .models import BatchJob

    job = BatchJob.objects.filter(pk=job_id).first()
    if job is None:
        raise BatchJob.DoesNotExist(f"job {job_id} does not exist")
    job_run(job=job)


@task()
def deliver_webhook_task(delivery_id: int) -> None:
    """One attempt at a webhook delivery; a failed attempt enqueues the next one, deferred
    (``webhooks.deliver``). Runs on a worker, never in a request."""
    from .webhooks import deliver

    deliver(delivery_id)
