"""Background tasks on Django's task framework (``django.tasks``).

Thin on purpose: a task loads ids and calls a service. A worker asked to stop
(SIGTERM/SIGINT to ``db_worker``) does not wait for the whole job: the running
job drains its in-flight calls, releases the rest and is marked interrupted
(resumable), then the worker's own graceful shutdown goes on; a second signal
stops the job at once. The default backend is
django-tasks-db (``manage.py db_worker``); any other ``django.tasks`` backend
works without a code change. Enqueue through ``jobs.job_enqueue``, which does
it after the transaction commits.
"""

from __future__ import annotations

from django.tasks import TaskContext, task

__all__ = ["deliver_webhook_task", "process_job_task", "sweep_task"]


@task(takes_context=True)
def process_job_task(context: TaskContext[[int], None], job_id: int) -> None:
    """Process the pending items of job ``job_id`` (resumable; see ``runner``). Several
    such tasks may run one job on several workers (``workers``)."""
    from .conf import llmjobs_settings
    from .fairness import FairSlice, choose, fair_enabled, requeue
    from .jobs import job_run
    from .models import BatchJob
    from .runner import JobRunner, stop_on_signals
    from .workers import Heartbeat, ensure_sweep_scheduled

    fair = fair_enabled()
    if fair:  # a task is a token: it runs the least-served job that wants a runner (``fairness``)
        job_id = choose(job_id)
    job = BatchJob.objects.filter(pk=job_id).first()
    if job is None:
        raise BatchJob.DoesNotExist(f"job {job_id} does not exist")
    runner = JobRunner(job.pk)
    ensure_sweep_scheduled()  # idle workers look for dead ones while the job is active
    # The worker (django-tasks-db's db_worker) runs tasks in its main thread with its own
    # SIGTERM/SIGINT handler, which only stops it *after* the task: the job must notice.
    with Heartbeat(job.pk, str(context.task_result.id)) as beat, stop_on_signals(runner, chain_first=True):
        if fair:
            slice_seconds = llmjobs_settings().fair_slice
            runner.fair = FairSlice(job=job.pk, owner=job.owner_id, heartbeat=beat.pk, slice_seconds=slice_seconds)
        report = job_run(job=job, runner=runner)
        if runner.fair is not None and runner.fair.yielded and not report.aborted:
            requeue(job.pk, heartbeat=beat.pk)  # its turn again later, at the back of the queue
    if report.aborted:
        raise RuntimeError(f"job {job_id} stopped: {report.aborted}")


@task()
def deliver_webhook_task(delivery_id: int) -> None:
    """One attempt at a webhook delivery; a failed attempt enqueues the next one, deferred
    (``webhooks.deliver``). Runs on a worker, never in a request."""
    from .webhooks import deliver

    deliver(delivery_id)


@task(takes_context=True)
def sweep_task(context: TaskContext[[], None]) -> None:
    """Look for dead workers and runnerless jobs and take them over (``workers.sweep``);
    re-enqueued a few seconds later while any job is queued or running, so idle workers
    notice a dead one too."""
    from .workers import active_jobs_exist, ensure_sweep_scheduled, sweep

    sweep()
    if active_jobs_exist():
        ensure_sweep_scheduled(exclude=context.task_result.id)
