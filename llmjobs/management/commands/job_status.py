"""`manage.py job_status ID [--json]`: one job's status, counts, tokens and cost."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from llmjobs.costs import fmt_usd, job_cost, job_summary
from llmjobs.org_governor import org_state
from llmjobs.workers import workers_on_job

from ._common import get_job


class Command(BaseCommand):
    help = "Show a job's status, item counts, tokens, cost (live), estimate, budget and last error."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_id", type=int)
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args: Any, job_id: int, json: bool = False, **opts: Any) -> None:
        job = get_job(job_id)
        if json:
            shared = org_state(job.model)
            self.stdout.write(_dumps({**job_summary(job), "shared_governor": shared and dataclasses.asdict(shared)}))
            return
        pending = job.total - job.done_count
        cost = job_cost(job)
        lines = [
            f"job {job.pk}: {job.name}",
            f"status:    {job.get_status_display().lower()}",
            f"model:     {job.model} ({job.mode})",
            f"items:     {job.total} total, {job.succeeded_count} succeeded, {job.failed_count} failed, "
            f"{job.cancelled_count} cancelled, {pending} not done",
            f"progress:  {job.progress:.1%}" + _filling(job),
            f"tokens:    {job.input_tokens} input, {job.output_tokens} output, "
            f"{job.cache_creation_input_tokens} cache write, {job.cache_read_input_tokens} cache read",
            f"cost:      {fmt_usd(cost)} spent"
            + (f", {fmt_usd(job.saved_usd)} saved" if cost is not None and job.saved_usd else "")
            + (f", estimate {fmt_usd(job.estimated_cost_usd)}" if job.estimated_cost_usd is not None else "")
            + (f", budget {fmt_usd(job.budget_usd)}" if job.budget_usd is not None else ""),
        ]
        for worker in workers_on_job(job.pk):
            lines.append(f"worker:    {worker.describe()}")
        shared = org_state(job.model)
        if shared is not None:
            lines.append(f"shared:    {shared.describe()}")
        if job.last_error:
            lines.append(f"last error: {job.last_error}")
        if job.advice:
            lines.append(f"hint:      {job.advice}")
        self.stdout.write("\n".join(lines))


def _filling(job: Any) -> str:
    """While the job's items are still being inserted: how many are in so far."""
    if job.filling_until is None:
        return ""
    if job.filling_until < timezone.now():
        return f" (items stopped arriving at {job.items.count()} of {job.total}: the job will be cut short)"
    return f" (items still being inserted: {job.items.count()} of {job.total} so far)"


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=False)
