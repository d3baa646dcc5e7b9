"""The ``RunnerHeartbeat`` model (issue 12; the logic is in ``llmjobs.workers``). A module
of its own, imported by ``apps.LlmjobsConfig.import_models`` next to ``models``."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from .models import BatchJob

__all__ = ["RunnerHeartbeat"]


class RunnerHeartbeat(models.Model):
    """A job runner alive on a worker (issue 12, ``llmjobs.workers``): written when a task
    starts a job, touched every few seconds by the task's heartbeat thread, deleted when it
    ends. A row whose ``beat_at`` is older than the lease belongs to a dead worker."""

    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="heartbeats")
    task_id = models.CharField(max_length=64, blank=True, help_text="The task result's id (django.tasks).")
    worker_id = models.CharField(max_length=64)
    worker_host = models.CharField(max_length=255)
    worker_pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    beat_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"runner of job {self.job_id} on {self.worker_host} pid {self.worker_pid}"
