"""`manage.py recover_jobs`: re-enqueue jobs whose runner died.

django-tasks-db has no heartbeat: a worker killed with -9 leaves its task
RUNNING forever. Our items carry short leases instead; a running job none of
whose items holds a live lease has lost its runner, so it is queued again.
Workers run this at start (`make worker`); cron can run it too.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from llmjobs.jobs import recover_stalled_jobs


class Command(BaseCommand):
    help = "Re-enqueue running jobs whose runner died (all item leases expired)."

    def handle(self, *args: Any, **opts: Any) -> None:
        recovered = recover_stalled_jobs()
        for job in recovered:
            self.stdout.write(f"re-enqueued job {job.pk} ({job.name})")
        self.stdout.write(f"{len(recovered)} job(s) recovered")
