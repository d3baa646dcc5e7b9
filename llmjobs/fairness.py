"""Fair shares between users and jobs on shared workers (issue 12, part 4).

The queue of ``django.tasks`` is first in, first out, and a job task holds its worker
until the job is done: one user's three large jobs would starve everyone else. So the
job tasks (``tasks.process_job_task``) share the workers cooperatively, **round-robin
by user first, then by job**:

* **Tasks are tokens.** ``jobs.job_enqueue`` still enqueues ``LLMJOBS_RUNNERS_PER_JOB``
  tasks per job, but a task that starts runs the **least-served job that wants a
  runner** (``pick``), not necessarily the job it was enqueued for: the job whose
  owner has the fewest live runners (then the fewest items finished in the last
  minute, so that a worker just given up goes to the user who waited), then the job
  with the fewest, its own job on a tie, then the oldest. A job *wants* a runner while it is queued or
  running, has items to claim, and has fewer live runners than
  ``LLMJOBS_RUNNERS_PER_JOB``. Live runners are the ``RunnerHeartbeat`` rows
  (``workers``) fresher than the lease, so every worker on every machine sees the same
  counts in the shared database.
* **Runners time-slice.** A runner that has run ``LLMJOBS_FAIR_SLICE`` seconds looks,
  before each claim, for a *rival* (``rival``): a job wanting a runner whose owner has
  fewer live runners than the runner's owner, or, for the same owner, a job with fewer
  live runners than the runner's job. If there is one and this runner is the oldest
  of its user's (or job's) runners (so that one runner yields at a time), it
  **yields**: it sends nothing more (the check also runs every half second beside
  the run, so it need not wait for its chunk to end), the calls in flight finish and
  their answers are stored, the items it claimed but did not send go back to pending
  (no lease left behind, nothing paid twice), and it re-enqueues a task for its own
  job (``requeue``) at the back of the queue. The worker it frees takes the
  next task, which runs the least-served job. With one worker and two users this is
  plain round-robin, a slice each; with more workers the shares converge to equal
  numbers of runners per user.
* A yielded job that has no other live runner goes back to ``queued`` (it waits for a
  worker; the takeover sweep leaves queued jobs alone). If the task cannot be
  enqueued, the job stays ``running`` without a runner and the sweep takes it over.

So a small job of user B queued behind user A's large jobs starts within about one
slice (plus the time A's calls in flight need to finish, about a call's latency),
and runs beside A's jobs. ``LLMJOBS_FAIR_SLICE = 0`` turns this off (plain FIFO). It
is on only with a backend that queues tasks (``supports_defer``: django-tasks-db, RQ,
Celery), never with the immediate backend, and never for ``manage.py process_job``
(one job, in the foreground). The ordering is pure (``Snapshot``, ``pick``,
``rival``) and tested without a database; ``snapshot()`` reads it from the database.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import Count, Exists, OuterRef
from django.utils import timezone

__all__ = ["FairSlice", "Runner", "Snapshot", "choose", "fair_enabled", "pick", "requeue", "rival", "snapshot"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runner:
    """A live runner (its heartbeat): which job, whose, since when."""

    heartbeat: int
    job: int
    owner: int | None
    started: float  # a timestamp; only the order matters


@dataclass
class Snapshot:
    """Who runs what now, and which jobs want a runner (``wanting``: ``job -> owner``,
    oldest first)."""

    runners: list[Runner] = field(default_factory=list)
    wanting: dict[int, int | None] = field(default_factory=dict)
    recent: Counter[int] = field(default_factory=Counter)  # items finished per job in the last minute

    @functools.cached_property
    def by_user(self) -> Counter[int | None]:
        return Counter(r.owner for r in self.runners)

    @functools.cached_property
    def by_job(self) -> Counter[int]:
        return Counter(r.job for r in self.runners)

    def recent_of_user(self, owner: int | None) -> int:
        owners = {r.job: r.owner for r in self.runners} | self.wanting
        return sum(n for job, n in self.recent.items() if owners.get(job, -1) == owner)


def pick(snap: Snapshot, preferred: int) -> int:
    """The job a starting task should run: the least-served wanting job (fewest runners of
    its owner, then fewest items finished for its owner in the last minute, then the same
    for the job itself), ``preferred`` on a tie, then the oldest. ``preferred`` when
    nothing wants a runner (the runner then finds its job done and ends). The last
    minute's items break the tie when a runner has just yielded (no runner on either
    side), so the worker goes to the user who waited, not back to the one who yielded."""
    if not snap.wanting:
        return preferred

    def key(job: int) -> tuple[int, int, int, int, bool, int]:
        owner = snap.wanting[job]
        return (
            snap.by_user[owner],
            snap.recent_of_user(owner),
            snap.by_job[job],
            snap.recent[job],
            job != preferred,
            job,
        )

    return min(snap.wanting, key=key)


def rival(snap: Snapshot, *, heartbeat: int, job: int, owner: int | None) -> int | None:
    """A wanting job served less than ``job`` (owned by ``owner``), for which the runner
    with heartbeat ``heartbeat`` should yield; ``None``: keep going. Only the oldest
    runner of the over-served group (the user's runners, or the job's for a rival of
    the same user) yields, so that one runner at a time gives its worker away."""
    mine = [r for r in snap.runners if r.owner == owner]
    for other in sorted(snap.wanting, key=lambda j: (snap.by_user[snap.wanting[j]], snap.by_job[j], j)):
        other_owner = snap.wanting[other]
        if other == job:
            continue
        if other_owner != owner:
            group = mine if snap.by_user[other_owner] < snap.by_user[owner] else []
        else:
            group = [r for r in mine if r.job == job] if snap.by_job[other] < snap.by_job[job] else []
        if group and min(group, key=lambda r: (r.started, r.heartbeat)).heartbeat == heartbeat:
            return other
    return None


def snapshot(*, now: dt.datetime | None = None, recent: bool = False) -> Snapshot:
    """The live runners and the jobs that want one, from the shared database (two queries;
    with ``recent``, a third: items finished per job in the last minute, for ``pick``)."""
    from .conf import llmjobs_settings
    from .heartbeats import RunnerHeartbeat
    from .models import BatchJob, Item
    from .workers import lease_seconds

    now = now or timezone.now()
    live = RunnerHeartbeat.objects.filter(beat_at__gte=now - dt.timedelta(seconds=lease_seconds()))
    runners = [
        Runner(heartbeat=pk, job=job, owner=owner, started=started.timestamp())
        for pk, job, owner, started in live.values_list("pk", "job_id", "job__owner_id", "started_at")
    ]
    snap = Snapshot(runners=runners)
    work = Item.objects.filter(job_id=OuterRef("pk")).claimable(now).order_by()
    active = (
        BatchJob.objects.active()
        .exclude(mode=BatchJob.Mode.BATCH)
        .filter(Exists(work))
        .order_by("pk")
        .values_list("pk", "owner_id")
    )
    per_job = max(1, llmjobs_settings().runners_per_job)
    snap.wanting = {job: owner for job, owner in active if snap.by_job[job] < per_job}
    if recent and snap.wanting:
        jobs = set(snap.wanting) | set(snap.by_job)
        done = Item.objects.filter(job_id__in=jobs, finished_at__gte=now - dt.timedelta(seconds=60))
        snap.recent = Counter(
            dict(done.values_list("job_id").annotate(n=Count("pk")).order_by().values_list("job_id", "n"))
        )
    return snap


def fair_enabled() -> bool:
    """Time-slicing is on: ``LLMJOBS_FAIR_SLICE > 0`` and the task backend queues tasks."""
    from .conf import llmjobs_settings
    from .tasks import process_job_task

    if llmjobs_settings().fair_slice <= 0:
        return False
    try:
        return bool(process_job_task.get_backend().supports_defer)
    except Exception:  # no task backend configured: nothing to share
        return False


class FairSlice:
    """A runner's slice: ``should_yield()`` before each claim says whether to give the
    worker away now (then ``yielded`` is set). The clock is injectable for tests."""

    __slots__ = ("_check_every", "_clock", "_next_check", "_start", "heartbeat", "job", "owner", "slice", "yielded")

    def __init__(
        self,
        *,
        job: int,
        owner: int | None,
        heartbeat: int,
        slice_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job, self.owner, self.heartbeat = job, owner, heartbeat
        self.slice = slice_seconds
        self._clock = clock
        self._start = clock()
        self._check_every = max(0.5, min(2.0, slice_seconds / 5))
        self._next_check = self._start + slice_seconds
        self.yielded = False

    def should_yield(self, read: Callable[[], Snapshot] = snapshot) -> bool:
        if self.yielded:
            return True
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self._check_every
        try:
            other = rival(read(), heartbeat=self.heartbeat, job=self.job, owner=self.owner)
        except Exception:  # can't tell: keep running (the next check may see)
            log.warning("fair share check of job %s failed", self.job, exc_info=True)
            return False
        if other is not None:
            log.info(
                "job %s yields its worker to job %s after %.1f s (fair shares)", self.job, other, now - self._start
            )
            self.yielded = True
        return self.yielded


def requeue(job_id: int, *, heartbeat: int) -> bool:
    """After a runner yielded: enqueue a task for its job again (at the back of the queue),
    and put the job back to ``queued`` when no other runner is on it. Nothing is enqueued
    when the job has nothing left to claim. Returns whether a task was enqueued."""
    from .heartbeats import RunnerHeartbeat
    from .models import BatchJob, Item
    from .workers import lease_seconds

    with transaction.atomic():
        job = BatchJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status not in BatchJob.ACTIVE_STATUSES:
            return False
        if not Item.objects.filter(job_id=job_id).claimable().exists():
            return False
        since = timezone.now() - dt.timedelta(seconds=lease_seconds())
        others = RunnerHeartbeat.objects.filter(job_id=job_id, beat_at__gte=since).exclude(pk=heartbeat)
        if not others.exists():
            BatchJob.objects.filter(pk=job_id).update(status=BatchJob.Status.QUEUED)
        transaction.on_commit(functools.partial(_enqueue, job_id))
    return True


def _enqueue(job_id: int) -> None:
    from .models import BatchJob
    from .tasks import process_job_task

    try:
        process_job_task.enqueue(job_id)
    except Exception as exc:  # the sweep takes a running job with no runner over
        log.exception("could not re-enqueue job %s after its slice", job_id)
        BatchJob.objects.filter(pk=job_id).update(status=BatchJob.Status.RUNNING, last_error=f"requeue: {exc}")


def choose(job_id: int) -> int:
    """The job a task enqueued for ``job_id`` runs (``pick`` on a fresh ``snapshot``). A
    Message Batches job keeps its own task (it polls the API, it claims no chunks); if
    the database can't tell, the task runs its own job."""
    from .models import BatchJob

    try:
        if BatchJob.objects.filter(pk=job_id, mode=BatchJob.Mode.BATCH).exists():
            return job_id
        return pick(snapshot(recent=True), job_id)
    except Exception:
        log.warning("fair share pick for job %s failed; running it", job_id, exc_info=True)
        return job_id
