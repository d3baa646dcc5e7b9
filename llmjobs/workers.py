"""Many workers on one job (issue 12).

Mechanism: **several tasks per job**. ``jobs.job_enqueue`` enqueues
``LLMJOBS_RUNNERS_PER_JOB`` ``process_job_task`` tasks for a job; each one is
picked up by a free ``db_worker`` and runs its own ``runner.JobRunner``, which
claims chunks of the job's items with leases (``ItemQuerySet.claim``: ``SELECT
... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two runners never take the same
row). A runner with nothing left to claim waits for the other runners' leases:
when they lapse (the worker died) it takes the items over; when they end, it
stops. The last runner out marks the job finished; a runner stopped by a signal
leaves the job running while other workers still hold leases on it.

Takeover needs no human. Each job task runs a ``Heartbeat`` thread beside its
runner: it touches a ``RunnerHeartbeat`` row every ``beat_seconds`` (a third of
the lease, at most 5 s) and calls ``sweep()`` every ``sweep_seconds``. Idle
workers sweep too: ``tasks.sweep_task`` re-enqueues itself (``run_after``) while
any job is queued or running, and ``jobs.job_enqueue`` schedules it. ``sweep()``:

1. a heartbeat older than the lease is a dead worker: its task row (django-tasks-db
   ``DBTaskResult``) still ``RUNNING`` is set ``FAILED`` with the reason (exception
   class ``llmjobs.workers.WorkerLost``), and the row is deleted;
2. a ``process_job_task`` row ``RUNNING`` for two leases with no heartbeat at all
   (killed before its first beat) is failed the same way;
3. a running job with work to claim, no live heartbeat and no live lease has no
   runner (so has a queued one while no job task waits at all: with fair shares a
   task may run another job than its own, ``fairness``): ``LLMJOBS_RUNNERS_PER_JOB``
   new tasks are enqueued for it; a free worker takes the expired leases over (never
   an item that succeeded).

So a kill -9 is taken over within about lease + sweep interval + the worker's poll.
``manage.py recover_jobs`` stays as a manual tool.

Every claim records who took the item (``Item.worker_id``, ``worker_host``,
``worker_pid``); ``workers_on_job`` summarises them for the job page, the admin
and ``job_status``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Max, Q
from django.utils import timezone

__all__ = [
    "ChunkSizer",
    "Heartbeat",
    "WorkerLost",
    "WorkerOnJob",
    "ensure_sweep_scheduled",
    "others_hold_leases",
    "sweep",
    "worker_identity",
    "workers_on_job",
]

log = logging.getLogger(__name__)

JOB_TASK_PATH = "llmjobs.tasks.process_job_task"
SWEEP_TASK_PATH = "llmjobs.tasks.sweep_task"


class WorkerLost(Exception):
    """The worker running a task stopped (kill -9, machine lost): recorded on its task row."""


def lease_seconds() -> float:
    from .conf import llmjobs_settings

    return float(llmjobs_settings().lease_seconds)


def beat_seconds() -> float:
    """How often a live runner touches its heartbeat."""
    return max(0.2, min(lease_seconds() / 3, 5.0))


def sweep_seconds() -> float:
    """How often live workers look for dead ones."""
    return max(0.2, min(lease_seconds() / 4, 5.0))


_IDENTITY: dict[str, Any] | None = None
_IDENTITY_PID: int | None = None


def worker_identity() -> dict[str, Any]:
    """This process as an ``Item`` update: ``worker_id`` (host, pid and a random suffix,
    unique even when a pid is reused), ``worker_host``, ``worker_pid``. New after a fork."""
    global _IDENTITY, _IDENTITY_PID
    pid = os.getpid()
    if _IDENTITY is None or pid != _IDENTITY_PID:
        host = socket.gethostname()[:200]
        _IDENTITY = {
            "worker_id": f"{host[:40]}:{pid}:{uuid.uuid4().hex[:8]}",
            "worker_host": host,
            "worker_pid": pid,
        }
        _IDENTITY_PID = pid
    return dict(_IDENTITY)


@dataclass(frozen=True, slots=True)
class WorkerOnJob:
    """One worker's share of a job."""

    worker_id: str
    host: str
    pid: int | None
    items: int  # items it claimed last (done or not)
    running: int  # items it holds now under a live lease
    last_claim: Any  # datetime of its latest claim

    @property
    def active(self) -> bool:
        return self.running > 0

    def describe(self) -> str:
        state = f"{self.running} running" if self.running else "idle"
        return f"{self.host} pid {self.pid} ({self.worker_id}): {self.items} item(s), {state}"


def workers_on_job(job_id: int) -> list[WorkerOnJob]:
    """The workers that claimed items of job ``job_id``, most items first."""
    from .models import Item

    now = timezone.now()
    rows = (
        Item.objects.filter(job_id=job_id)
        .exclude(worker_id="")
        .values("worker_id", "worker_host", "worker_pid")
        .annotate(
            items=Count("pk"),
            running=Count("pk", filter=Q(status=Item.Status.RUNNING, lease_expires_at__gte=now)),
            last_claim=Max("started_at"),
        )
        .order_by()
    )
    workers = [
        WorkerOnJob(
            worker_id=r["worker_id"],
            host=r["worker_host"],
            pid=r["worker_pid"],
            items=r["items"],
            running=r["running"],
            last_claim=r["last_claim"],
        )
        for r in rows
    ]
    return sorted(workers, key=lambda w: (-w.items, w.worker_id))


def others_hold_leases(job_id: int) -> bool:
    """Another runner (this process's leases are already released) still holds live leases on the job."""
    from .models import Item

    return Item.objects.filter(job_id=job_id).live().exists()


class ChunkSizer:
    """How many items a runner claims next, so that a chunk lasts about ``target_seconds``:
    the runner's own throughput so far times ``target_seconds``, between ``min_chunk`` and
    ``max_chunk`` (``initial`` before anything is done). Small chunks let the last items
    of a job spread over every worker instead of waiting on the one that claimed them.
    Pure (the clock is passed in)."""

    def __init__(self, *, max_chunk: int, initial: int = 50, min_chunk: int = 5, target_seconds: float = 3.0) -> None:
        self.max_chunk = max(1, max_chunk)
        self.min_chunk = max(1, min(min_chunk, self.max_chunk))
        self.initial = max(self.min_chunk, min(initial, self.max_chunk))
        self.target_seconds = target_seconds
        self._start: float | None = None

    def for_claim(self, *, done: int) -> int:
        """The runner's next claim: adaptive where several workers may share a job
        (``SKIP LOCKED``), ``max_chunk`` on SQLite (one process; fewer write locks)."""
        from django.db import connection

        if not connection.features.has_select_for_update_skip_locked:
            return self.max_chunk
        return self.next(now=time.monotonic(), done=done)

    def next(self, *, now: float, done: int) -> int:
        """The size of the next claim, given ``done`` items finished by this runner so far."""
        if self._start is None:
            self._start = now
        elapsed = now - self._start
        if done <= 0 or elapsed <= 0.5:
            return self.initial
        rate = done / elapsed
        return max(self.min_chunk, min(self.max_chunk, round(rate * self.target_seconds)))


# -- takeover ------------------------------------------------------------------------------
class Heartbeat:
    """``with Heartbeat(job_id, task_id):`` around a job's run on a worker: a row that says
    the runner lives, touched by a daemon thread that also sweeps for dead workers."""

    def __init__(self, job_id: int, task_id: str = "", *, sweep_every: float | None = None) -> None:
        self.job_id = job_id
        self.task_id = task_id
        self.sweep_every = sweep_seconds() if sweep_every is None else sweep_every
        self.pk: int = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        from .heartbeats import RunnerHeartbeat

        me = worker_identity()
        self.pk = RunnerHeartbeat.objects.create(job_id=self.job_id, task_id=self.task_id, **me).pk
        self._thread = threading.Thread(target=self._loop, name=f"llmjobs-heartbeat-{self.job_id}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        from .heartbeats import RunnerHeartbeat

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            RunnerHeartbeat.objects.filter(pk=self.pk).delete()
        except Exception:  # the database is gone: the row expires on its own
            log.warning("could not delete the heartbeat of job %s", self.job_id, exc_info=True)

    def _loop(self) -> None:
        from django.db import connection

        from .heartbeats import RunnerHeartbeat

        next_sweep = 0.0
        step = beat_seconds()
        try:
            while not self._stop.wait(step):
                try:
                    RunnerHeartbeat.objects.filter(pk=self.pk).update(beat_at=timezone.now())
                    now = timezone.now().timestamp()
                    if now >= next_sweep:
                        next_sweep = now + self.sweep_every
                        sweep()
                except Exception:  # an outage: the runner's own retries deal with it
                    log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
                    connection.close()
        finally:
            connection.close()


def _fail_task_rows(ids: list[Any], reason: str) -> int:
    try:
        from django_tasks_db.models import DBTaskResult
    except ImportError:  # another django.tasks backend: nothing to mark
        return 0
    if not ids:
        return 0
    return DBTaskResult.objects.filter(pk__in=ids, status="RUNNING").update(
        status="FAILED",
        finished_at=timezone.now(),
        exception_class_path=f"{WorkerLost.__module__}.{WorkerLost.__qualname__}",
        traceback=f"WorkerLost: {reason}",
    )


def _orphan_task_rows(now: dt.datetime, lease: dt.timedelta) -> list[tuple[Any, int | None]]:
    """``process_job_task`` rows running for two leases with no heartbeat: ``(id, job_id)``."""
    try:
        from django_tasks_db.models import DBTaskResult
    except ImportError:
        return []
    from .heartbeats import RunnerHeartbeat

    alive = {str(t) for t in RunnerHeartbeat.objects.values_list("task_id", flat=True)}
    rows = DBTaskResult.objects.filter(status="RUNNING", task_path=JOB_TASK_PATH, started_at__lt=now - 2 * lease)
    found = []
    for pk, args_kwargs in rows.values_list("pk", "args_kwargs"):
        if str(pk) in alive:
            continue
        args = (args_kwargs or {}).get("args") or []
        found.append((pk, int(args[0]) if args else None))
    return found


def _taskless_queued_jobs(now: dt.datetime, lease: dt.timedelta, live_jobs: set[int]) -> list[int]:
    """Queued jobs with work and no runner while no job task waits at all: with fair shares
    (``fairness``) a task may run another job than its own, so one could be left with none."""
    try:
        from django_tasks_db.models import DBTaskResult
    except ImportError:
        return []
    from .models import BatchJob

    if DBTaskResult.objects.filter(status="READY", task_path=JOB_TASK_PATH).exists():
        return []
    queued = BatchJob.objects.filter(status=BatchJob.Status.QUEUED, queued_at__lt=now - lease).exclude(pk__in=live_jobs)
    return list(queued.values_list("pk", flat=True))


def sweep(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Find dead workers and runnerless jobs, end their task rows, enqueue takeovers.
    Safe to run from many workers at once. Returns counts (for logs and tests)."""
    from django.db import transaction

    from .conf import llmjobs_settings
    from .heartbeats import RunnerHeartbeat
    from .models import BatchJob, Item

    now = now or timezone.now()
    lease = dt.timedelta(seconds=lease_seconds())
    counts = {"dead_runners": 0, "task_rows_failed": 0, "jobs_taken_over": 0}

    dead = list(RunnerHeartbeat.objects.filter(beat_at__lt=now - lease))
    for hb in dead:
        reason = (
            f"worker {hb.worker_host} pid {hb.worker_pid} ({hb.worker_id}) stopped: no heartbeat since "
            f"{hb.beat_at:%Y-%m-%d %H:%M:%S} UTC; job {hb.job_id} was taken over by a live worker"
        )
        if hb.task_id:
            counts["task_rows_failed"] += _fail_task_rows([hb.task_id], reason)
        RunnerHeartbeat.objects.filter(pk=hb.pk, beat_at__lt=now - lease).delete()
        counts["dead_runners"] += 1
        log.warning("%s", reason)
    orphaned: set[int] = set()  # jobs whose task died before its runner started
    for pk, job_id in _orphan_task_rows(now, lease):
        if _fail_task_rows([pk], f"the worker running job {job_id} stopped before its first heartbeat"):
            counts["task_rows_failed"] += 1
            if job_id is not None:
                orphaned.add(job_id)

    live_jobs = set(RunnerHeartbeat.objects.filter(beat_at__gte=now - lease).values_list("job_id", flat=True))
    orphaned.update(_taskless_queued_jobs(now, lease, live_jobs))
    candidates = BatchJob.objects.filter(
        Q(status=BatchJob.Status.RUNNING) | Q(pk__in=orphaned, status=BatchJob.Status.QUEUED)
    ).exclude(pk__in=live_jobs)
    for job_id in candidates.values_list("pk", flat=True):
        items = Item.objects.filter(job_id=job_id)
        if items.live(now).exists() or not items.claimable(now).exists():
            continue  # a runner without heartbeat (`process_job`) holds leases, or nothing is left
        with transaction.atomic():
            locked = BatchJob.objects.select_for_update(skip_locked=True).filter(pk=job_id).first()
            if locked is None or locked.status not in (BatchJob.Status.RUNNING, BatchJob.Status.QUEUED):
                continue
            # Fresh heartbeats from a takeover another sweeper just enqueued? then leave it.
            if RunnerHeartbeat.objects.filter(job_id=job_id, started_at__gte=now - lease).exists():
                continue
            locked.mark_queued(task_id="")
            runners = max(1, llmjobs_settings().runners_per_job)
            transaction.on_commit(functools.partial(_enqueue_takeover, job_id, runners))
        counts["jobs_taken_over"] += 1
        log.warning("job %s has no live runner: taken over (%s task(s) enqueued)", job_id, runners)
    return counts


def _enqueue_takeover(job_id: int, runners: int) -> None:
    from .models import BatchJob
    from .tasks import process_job_task

    try:
        first = process_job_task.enqueue(job_id)
        for _ in range(runners - 1):
            process_job_task.enqueue(job_id)
    except Exception as exc:
        log.exception("could not enqueue the takeover of job %s", job_id)
        BatchJob.objects.filter(pk=job_id).update(status=BatchJob.Status.RUNNING, last_error=f"takeover: {exc}")
        return
    BatchJob.objects.filter(pk=job_id).update(task_id=str(first.id))


def ensure_sweep_scheduled(*, delay: float | None = None, exclude: Any = None) -> bool:
    """Enqueue ``tasks.sweep_task`` to run in ``delay`` seconds unless one is already
    waiting (django-tasks-db). Returns whether one was enqueued."""
    from .tasks import sweep_task

    if not sweep_task.get_backend().supports_defer:  # e.g. the immediate backend: nothing waits, nothing to sweep
        return False
    try:
        from django_tasks_db.models import DBTaskResult

        waiting = DBTaskResult.objects.filter(status="READY", task_path=SWEEP_TASK_PATH)
        if exclude is not None:
            waiting = waiting.exclude(pk=exclude)
        if waiting.exists():
            return False
    except Exception:  # another backend: it may run a few extra sweeps, which is harmless
        log.debug("could not look for a waiting sweep", exc_info=True)
    when = timezone.now() + dt.timedelta(seconds=sweep_seconds() if delay is None else delay)
    try:
        sweep_task.using(run_after=when).enqueue()
    except Exception:
        log.warning("could not schedule the worker sweep", exc_info=True)
        return False
    return True


def active_jobs_exist() -> bool:
    from .models import BatchJob

    return BatchJob.objects.active().exists()
