"""`manage.py job_status ID`: one job's status, counts, tokens and cost."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...workers import workers_on_job
from ._common import get_job


class Command(BaseCommand):
    help = "Show a job's status, item counts, tokens, cost estimate and last error."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)

    def handle(self, *args: Any, job_id: int, **opts: Any) -> None:
        job = get_job(job_id)
        pending = job.total - job.done_count
        lines = [
            f"job {job.pk}: {job.name}",
            f"status:    {job.get_status_display().lower()}",
            f"model:     {job.model}",
            f"items:     {job.total} total, {job.succeeded_count} succeeded, {job.failed_count} failed, "
            f"{job.cancelled_count} cancelled, {pending} not done",
            f"progress:  {job.progress:.1%}",
            f"tokens:    {job.input_tokens} input, {job.output_tokens} output (~${job.cost_estimate})",
        ]
        for worker in workers_on_job(job.pk):
            lines.append(f"worker:    {worker.describe()}")
        if job.last_error:
            lines.append(f"last error: {job.last_error}")
        self.stdout.write("\n".join(lines))
