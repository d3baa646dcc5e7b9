"""The job page's extra surfaces: the results JSON, the item page, clone, resume, upload inspection.

Thin, like ``views.py``: every job is looked up through ``for_user`` (404 for
another user's job), actions need ``may_act_on`` (403 for a job one may only
view) and are POSTs behind CSRF. JSON carries text only; the page's script
inserts it with ``textContent``, never as HTML.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from .. import jobs
from ..clone import clone_settings, job_clone
from ..exceptions import JobInputError, JobStateError
from ..models import BatchJob, Item
from ..results import (
    PAGE_SIZE,
    item_cost,
    rendered_request,
    results_page,
    structured_output,
)
from ..resume import job_resume
from ..security import may_act_on
from .clone_forms import CloneJobForm
from .uploads import inspect_upload

__all__ = ["item_detail", "job_clone_view", "job_results", "job_resume_view", "upload_inspect"]


def _job_or_404(request: HttpRequest, pk: int) -> BatchJob:
    return get_object_or_404(BatchJob.objects.for_user(request.user), pk=pk)


@login_required
@require_GET
def job_results(request: HttpRequest, pk: int) -> JsonResponse:
    """One page of results: ``?status=&q=&sort=position|tokens|cost&after=<cursor>``."""
    job = _job_or_404(request, pk)
    try:
        size = int(request.GET.get("size") or PAGE_SIZE)
    except ValueError:
        size = PAGE_SIZE
    page = results_page(
        job,
        status=request.GET.get("status", ""),
        q=request.GET.get("q", ""),
        sort=request.GET.get("sort", "position"),
        cursor=request.GET.get("after", ""),
        size=size,
    )
    return JsonResponse(
        {"rows": page.rows, "next": page.next_cursor, "sort": page.sort, "status": page.status, "q": page.q}
    )


def _table(value: Any) -> dict[str, Any] | None:
    """A structured output as table headers and rows of text."""
    if isinstance(value, dict):
        return {"kind": "fields", "rows": [(k, _text(v)) for k, v in value.items()]}
    if isinstance(value, list):
        headers: list[str] = []
        for row in value:
            headers.extend(k for k in row if k not in headers)
        return {"kind": "rows", "headers": headers, "rows": [[_text(row.get(h)) for h in headers] for row in value]}
    return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else json.dumps(value, ensure_ascii=False)


@login_required
@require_GET
def item_detail(request: HttpRequest, pk: int, position: int) -> HttpResponse:
    job = _job_or_404(request, pk)
    item = get_object_or_404(Item, job_id=job.pk, position=position)
    request_params = rendered_request(job, item.input)
    prompt = request_params["messages"][0]["content"] if request_params else None
    fields = item.input if isinstance(item.input, dict) else {"text": item.input}
    neighbours = Item.objects.filter(job_id=job.pk)
    context = {
        "job": job,
        "item": item,
        "fields": [(k, _text(v)) for k, v in fields.items()],
        "prompt": prompt,
        "request_json": json.dumps(request_params, indent=2, ensure_ascii=False) if request_params else "",
        "table": _table(structured_output(item.output)),
        "cost": item_cost(job, item),
        "worker": getattr(item, "worker", "") or "",
        "previous": neighbours.filter(position__lt=position)
        .order_by("-position")
        .values_list("position", flat=True)
        .first(),
        "next": neighbours.filter(position__gt=position)
        .order_by("position")
        .values_list("position", flat=True)
        .first(),
    }
    return render(request, "llmjobs/item_detail.html", context)


@login_required
def job_clone_view(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the new-job form pre-filled with the job's settings and its data. POST: the new job."""
    source = _job_or_404(request, pk)
    if request.method == "POST":
        form = CloneJobForm(request.POST, request.FILES, source=source)
        if form.is_valid():
            action = request.POST.get("action", "run")
            try:
                if form.uses_source_data():
                    job = job_clone(source=source, owner=request.user, **form.clone_kwargs())
                else:
                    job = jobs.job_create(owner=request.user, **form.service_kwargs())
            except JobInputError as exc:
                form.add_error(None, str(exc))
            else:
                reused = job.items.filter(reused=True).count()
                if reused:
                    messages.info(request, f"{reused:,} unchanged item(s) reuse the answers of job #{source.pk}.")
                if action == "run" and job.remaining_count:
                    try:
                        jobs.job_enqueue(job=job)
                    except JobStateError as exc:
                        messages.error(request, f"Could not run job #{job.pk}: {exc}")
                    else:
                        messages.success(request, f"Job #{job.pk} is queued: {job.remaining_count:,} item(s) to run.")
                else:
                    messages.success(request, f"Job #{job.pk} created.")
                return redirect(reverse("llmjobs:job_detail", args=[job.pk]))
        status = 400
    else:
        form = CloneJobForm(initial=clone_settings(source), source=source)
        status = 200
    context = {"form": form, "preview_count": jobs.PREVIEW_COUNT, "source": source}
    return render(request, "llmjobs/job_form.html", context, status=status)


@login_required
@require_POST
def job_resume_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_or_404(request, pk)
    if not may_act_on(request.user, job):
        raise PermissionDenied("You may view this job but not change it.")
    try:
        count = job_resume(job=job)
    except JobStateError as exc:
        messages.error(request, f"Could not resume: {exc}")
    else:
        messages.success(request, f"Job #{job.pk} is queued again: {count:,} stopped item(s) will run.")
    return redirect(reverse("llmjobs:job_detail", args=[job.pk]))


@login_required
@require_POST
def upload_inspect(request: HttpRequest) -> JsonResponse:
    """The uploaded file's columns (CSV header or first JSONL record's keys) and first rows."""
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"error": "no file"}, status=400)
    result = inspect_upload(upload)
    return JsonResponse(result, status=400 if "error" in result else 200)
