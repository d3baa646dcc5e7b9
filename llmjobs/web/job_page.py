"""What the job page shows besides progress: settings, timeline and the buttons for the state."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from ..costs import fmt_usd, job_cost
from ..models import BatchJob
from ..results import job_cost_so_far, template_parts

__all__ = ["job_page_context", "run_action"]

# Optional settings other features add to a job; shown when the job has them.
OPTIONAL_SETTINGS = (("mode", "mode"), ("schema", "schema"), ("output_schema", "schema"), ("budget_usd", "budget"))


def run_action(job: BatchJob, *, mine: bool) -> dict[str, str] | None:
    """The Run / Resume button for this state, or ``None``.

    Not started (draft, never run) -> Run; interrupted (draft after a run) or failed with items
    still pending -> Resume (queues the pending items); stopped (cancelled) with cancelled
    items -> Resume (puts them back to pending first). Never while queued or running.
    """
    if not mine or job.is_active:
        return None
    if job.status == BatchJob.Status.CANCELLED:
        if job.cancelled_count:
            return {"label": "Resume", "url": reverse("llmjobs:job_resume", args=[job.pk]), "what": "stopped"}
        return None
    if job.remaining_count > 0:
        label = "Run" if job.started_at is None else "Resume"
        return {"label": label, "url": reverse("llmjobs:job_run", args=[job.pk]), "what": "pending"}
    return None


def job_page_context(job: BatchJob, *, mine: bool) -> dict[str, Any]:
    optional = []
    for attr, label in OPTIONAL_SETTINGS:
        value = getattr(job, attr, None)
        if value not in (None, "", {}, []):
            optional.append((label, value))
    retryable = job.failed_count + job.cancelled_count
    retry_label = f"Retry failed ({job.failed_count:,})"
    if job.cancelled_count:
        retry_label = f"Retry failed & cancelled ({retryable:,})"
    cost = job_cost_so_far(job)
    return {
        "cost_text": fmt_usd(job_cost(job)),
        "run_action": run_action(job, mine=mine),
        "retry_label": retry_label,
        "template_parts": template_parts(job.prompt_template),
        "optional_settings": optional,
        "timeline": [
            ("created", job.created_at),
            ("queued", getattr(job, "queued_at", None)),
            ("started", job.started_at),
            ("finished", job.finished_at),
        ],
        "results_url": reverse("llmjobs:job_results", args=[job.pk]),
        "clone_url": reverse("llmjobs:job_clone", args=[job.pk]),
        "price": cost,
    }
