"""Thin views. Business logic lives in services (jobs.py, runner.py).

Every page needs a login, and every job is looked up through
``BatchJob.objects.for_user(user)``: another user's job is a 404 on every page,
action and stream (staff see all jobs). Every state change is a POST behind
Django's CSRF middleware. Templates escape all model output.

Two views are ``async def`` and stream Server-Sent Events under ASGI:
``job_events`` (live progress, async ORM) and ``playground_stream`` (one
streamed call through the shared client, token by token). When the client
goes away, Django cancels the generator, which closes the upstream request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.text import Truncator
from django.views.decorators.http import require_GET, require_POST

from . import sse
from .api_errors import PreviewError
from .conf import api_target
from .engine import AttemptTimeout, StreamError, TextStream
from .forms import JobForm, PlaygroundForm
from .jobs import (
    JobInputError,
    JobStateError,
    job_cancel,
    job_create,
    job_enqueue,
    job_export_lines,
    job_retry_failed,
)
from .models import BatchJob, Item
from .playground import get_client
from .progress import progress_events, throughput
from .security import may_act_on

log = logging.getLogger(__name__)

JOBS_PER_PAGE = 25
ITEMS_PER_PAGE = 50
PREVIEW_COUNT = 5
EXPORT_LINES_PER_HOP = 500  # lines read per trip to the ORM thread when streaming an export under ASGI


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "llmjobs/home.html", {"api": api_target().describe()})


async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and for `make run`'s own check: nothing about the
    configuration (staff see details at /healthz/details)."""

    def db_ok() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)

    return JsonResponse({"status": "ok", "database": await sync_to_async(db_ok)()})


# --- helpers ---------------------------------------------------------------------------


def _job_or_404(request: HttpRequest, pk: int) -> BatchJob:
    return get_object_or_404(BatchJob.objects.for_user(request.user), pk=pk)


def _job_to_change(request: HttpRequest, pk: int) -> BatchJob:
    """A job this user may act on: 404 if they can't see it, 403 if they may only look."""
    job = _job_or_404(request, pk)
    if not may_act_on(request.user, job):
        raise PermissionDenied("You may view this job but not change it.")
    return job


def _job_url(job: BatchJob | int) -> str:
    return reverse("llmjobs:job_detail", args=[job if isinstance(job, int) else job.pk])


def _preview(request: HttpRequest, job: BatchJob, count: int = PREVIEW_COUNT) -> None:
    """Run the first pending items now and show their outputs as messages."""
    from .runner import preview_job  # the runner pulls in the engine: import on use

    try:
        results = preview_job(job.pk, count=count)
    except PreviewError as exc:  # the API refused the run (bad key, no permission): plain words
        messages.error(request, f"Preview failed: {exc}")
        return
    except Exception as exc:  # an operator's check: say what happened, keep the page
        log.exception("preview of job %s failed", job.pk)
        messages.error(request, f"Preview failed: {type(exc).__name__}: {exc}")
        return
    if not results:
        messages.warning(request, f"Nothing to preview: job #{job.pk} has no pending items.")
        return
    for line in preview_lines(results):
        messages.info(request, line)


def preview_lines(results: list[tuple[Item, Any]]) -> list[str]:
    """One plain-text line per previewed item (escaped wherever it is shown)."""
    lines = []
    for item, outcome in results:
        if outcome.ok:
            text = Truncator(outcome.text or "").chars(400)
            lines.append(f"Preview of item {item.position}: {text}")
        else:
            lines.append(
                f"Preview of item {item.position} failed: {outcome.error_type}: "
                f"{Truncator(outcome.error_message or '').chars(300)}"
            )
    return lines


def _enqueue(request: HttpRequest, job: BatchJob) -> None:
    try:
        job_enqueue(job=job)
    except JobStateError as exc:
        messages.error(request, f"Could not run job #{job.pk}: {exc}")
    else:
        messages.success(request, f"Job #{job.pk} is queued: {job.total:,} item(s).")


# --- jobs ------------------------------------------------------------------------------


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = BatchJob.objects.for_user(request.user).select_related("owner")
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "llmjobs/job_list.html", {"page": page, "jobs": page.object_list})


@login_required
def job_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            form = JobForm(request.POST, request.FILES)
            action = request.POST.get("action", "run")
        except RequestDataTooBig:
            form = JobForm()
            form.add_error(
                None,
                "The pasted text is too large for a form post: upload it as a TXT, CSV or JSONL file instead.",
            )
            return render(request, "llmjobs/job_form.html", {"form": form}, status=400)
        if form.is_valid():
            try:
                job = job_create(owner=request.user, **form.service_kwargs())
            except JobInputError as exc:
                form.add_error(None, str(exc))
            else:
                if action == "preview":
                    _preview(request, job)
                elif action == "run":
                    _enqueue(request, job)
                else:
                    messages.success(request, f"Job #{job.pk} saved as a draft.")
                return redirect(_job_url(job))
        return render(request, "llmjobs/job_form.html", {"form": form}, status=400)
    return render(request, "llmjobs/job_form.html", {"form": JobForm()})


@login_required
@require_GET
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_or_404(request, pk)
    items = job.items.order_by("position")
    status = request.GET.get("status") or ""
    if status in Item.Status.values:
        items = items.filter(status=status)
    else:
        status = ""
    page = Paginator(items, ITEMS_PER_PAGE).get_page(request.GET.get("page"))
    mine = may_act_on(request.user, job)  # a viewer of others' jobs gets no action buttons
    context = {
        "job": job,
        "page": page,
        "items": page.object_list,
        "status_filter": status,
        "item_statuses": Item.Status.choices,
        "can_run": mine and job.status == BatchJob.Status.DRAFT and job.remaining_count > 0,
        "can_cancel": mine and job.is_active,
        "can_retry": mine and job.status != BatchJob.Status.RUNNING and (job.failed_count or job.cancelled_count) > 0,
    }
    return render(request, "llmjobs/job_detail.html", context)


@login_required
@require_POST
def job_run(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_to_change(request, pk)
    _enqueue(request, job)
    return redirect(_job_url(job))


@login_required
@require_POST
def job_preview(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_to_change(request, pk)
    _preview(request, job)
    return redirect(_job_url(job))


@login_required
@require_POST
def job_cancel_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_to_change(request, pk)
    try:
        job_cancel(job=job)
    except JobStateError as exc:
        messages.error(request, f"Could not cancel: {exc}")
    else:
        messages.success(request, f"Job #{job.pk} is cancelled.")
    return redirect(_job_url(job))


@login_required
@require_POST
def job_retry_view(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_to_change(request, pk)
    try:
        count = job_retry_failed(job=job, include_cancelled=True)
    except JobStateError as exc:
        messages.error(request, f"Could not retry: {exc}")
        return redirect(_job_url(job))
    if not count:
        messages.info(request, "No failed or cancelled items to retry.")
        return redirect(_job_url(job))
    messages.success(request, f"{count:,} item(s) will be tried again.")
    _enqueue(request, job)
    return redirect(_job_url(job))


async def _aiter_in_thread(lines: Iterator[str]) -> AsyncIterator[str]:
    """A sync iterator of export lines, read in the ORM's thread in hops of many lines."""

    def hop() -> list[str]:
        chunk = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= EXPORT_LINES_PER_HOP:
                break
        return chunk

    read = sync_to_async(hop)
    while chunk := await read():
        yield "".join(chunk)


@login_required
@require_GET
def job_export_view(request: HttpRequest, pk: int, fmt: str) -> StreamingHttpResponse:
    job = _job_or_404(request, pk)
    lines = job_export_lines(job, fmt)  # type: ignore[arg-type]
    # Under ASGI, stream an async iterator (a sync one would be buffered whole).
    content: Any = _aiter_in_thread(lines) if isinstance(request, ASGIRequest) else lines
    content_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson; charset=utf-8"
    response = StreamingHttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}.{fmt}"'
    return response


@login_required
@require_GET
def job_throughput_svg(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_or_404(request, pk)
    buckets = throughput(job)
    width, height, pad = 640, 180, 32
    peak = max([b.items_per_s for b in buckets] + [b.retries_per_s for b in buckets] + [1.0])
    plot_w, plot_h = width - 2 * pad, height - 2 * pad
    bar_w = plot_w / len(buckets) if buckets else plot_w
    bars, points = [], []
    for i, b in enumerate(buckets):
        h = plot_h * b.items_per_s / peak
        bars.append(
            {
                "x": round(pad + i * bar_w, 1),
                "y": round(pad + plot_h - h, 1),
                "w": round(max(bar_w - 1, 1), 1),
                "h": round(h, 1),
                "title": f"{b.start:.0f}s: {b.items_per_s:.1f} items/s, {b.retries_per_s:.1f} retries/s",
            }
        )
        ry = pad + plot_h - plot_h * b.retries_per_s / peak
        points.append(f"{pad + (i + 0.5) * bar_w:.1f},{ry:.1f}")
    span = buckets[-1].start + buckets[-1].width if buckets else 0
    context = {
        "width": width,
        "height": height,
        "pad": pad,
        "plot_w": plot_w,
        "plot_h": plot_h,
        "bars": bars,
        "points": " ".join(points),
        "peak": peak,
        "span": span,
        "has_retries": any(b.retries for b in buckets),
        "empty": not buckets,
        "bottom": pad + plot_h,
        "right": pad + plot_w,
    }
    response = render(request, "llmjobs/throughput.svg", context, content_type="image/svg+xml")
    response["Cache-Control"] = "no-store"
    return response


@login_required
async def job_events(request: HttpRequest, pk: int) -> HttpResponse:
    """Live progress as Server-Sent Events (async ORM; ends when the job finishes)."""
    if request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET"})
    user = await request.auser()
    # for_user asks user.has_perm, which reads the database: do it off the loop.
    job_id = await sync_to_async(
        lambda: BatchJob.objects.for_user(user).filter(pk=pk).values_list("pk", flat=True).first()
    )()
    if job_id is None:
        raise Http404("No such job.")
    return sse.EventStreamResponse(progress_events(job_id))


# --- playground ------------------------------------------------------------------------


@login_required
@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    return render(request, "llmjobs/playground.html", {"form": PlaygroundForm(), "api": api_target().describe()})


async def playground_events(client: Any, params: dict[str, Any]) -> AsyncIterator[bytes]:
    """One streamed call as SSE: ``start``, ``ttft``, ``token``..., then ``done`` or ``error``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    yield sse.event("start", {"model": params["model"]})
    try:
        async with TextStream(
            client, params, first_token_timeout=60.0, idle_timeout=30.0, total_timeout=600.0
        ) as stream:
            first = True
            async for delta in stream:
                if first:
                    first = False
                    yield sse.event("ttft", {"ms": round((stream.ttft or 0.0) * 1000)})
                yield sse.event("token", {"text": delta})
            usage = stream.usage or {}
            yield sse.event(
                "done",
                {
                    "stop_reason": stream.stop_reason,
                    "ttft_ms": None if stream.ttft is None else round(stream.ttft * 1000),
                    "total_ms": round((loop.time() - started) * 1000),
                    "input_tokens": usage.get("input_tokens"),
                    "output_tokens": usage.get("output_tokens"),
                },
            )
    except (AttemptTimeout, StreamError) as exc:
        yield sse.event("error", {"type": getattr(exc, "error_type", "timeout"), "message": str(exc)})
    except anthropic.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        yield sse.event(
            "error",
            {"type": error.get("type") or f"http_{exc.status_code}", "message": error.get("message") or str(exc)},
        )
    except anthropic.APIError as exc:  # connection errors and the like
        yield sse.event("error", {"type": type(exc).__name__, "message": str(exc)})


@login_required
async def playground_stream(request: HttpRequest) -> HttpResponse:
    """POST (CSRF-checked) -> one streamed answer, token by token, through the shared client."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    form = PlaygroundForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    client = await get_client()
    return sse.EventStreamResponse(playground_events(client, form.params()))
