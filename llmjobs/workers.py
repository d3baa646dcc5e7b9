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

Every claim records who took the item (``Item.worker_id``, ``worker_host``,
``worker_pid``); ``workers_on_job`` summarises them for the job page, the admin
and ``job_status``.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Max, Q
from django.utils import timezone

__all__ = ["WorkerOnJob", "others_hold_leases", "worker_identity", "workers_on_job"]

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

    return Item.objects.filter(job_id=job_id).running().exists()


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

    def next(self, *, now: float, done: int) -> int:
        """The size of the next claim, given ``done`` items finished by this runner so far."""
        if self._start is None:
            self._start = now
        elapsed = now - self._start
        if done <= 0 or elapsed <= 0.5:
            return self.initial
        rate = done / elapsed
        return max(self.min_chunk, min(self.max_chunk, round(rate * self.target_seconds)))
