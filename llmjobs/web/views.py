"""Thin views: parse the request, call one service (``llmjobs.jobs``), render.

Every page needs a login, and every job is looked up through
``BatchJob.objects.for_user(user)``: another user's job is a 404 on every page,
action and stream (staff see all jobs). Every state change is a POST behind
Django's CSRF middleware. Templates escape all model output.

Two views are ``async def`` and stream Server-Sent Events under ASGI:
``job_events`` (live progress from the job's shared poller) and
``playground_stream`` (one streamed call through the shared client, token by
token). When the client goes away, Django cancels the generator, which closes
the upstream request (or leaves the poller). A user holds at most
``LLMJOBS_STREAMS_PER_USER`` open streams per server process (429 beyond).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required, user_passes_test
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from .. import jobs
from ..api_errors import PreviewError
from ..conf import api_target, llmjobs_settings
from ..costs import apply_cost_options
from ..estimate import job_estimate
from ..exceptions import JobInputError, JobStateError
from ..models import BatchJob, Item
from ..org_governor import org_state
from ..security import may_act_on
from ..workers import workers_on_job
from . import sse, uploads
from .forms import JobForm, PlaygroundForm
from .job_page import job_page_context
from .playground import get_client, playground_events
from .progress import progress_events, throughput, throughput_svg_context

log = logging.getLogger(__name__)

JOBS_PER_PAGE = 25
# The playground's events: start, ttft and the first token as they come, then the tokens
# that arrived in each PLAYGROUND_FLUSH seconds in one write (sse.coalesced): 80 ms is
# smooth to read (12 updates a second) and half the socket writes of 40 ms, the largest
# per-stream cost left at 100 streams (issue 17).
PLAYGROUND_DIRECT = 3
PLAYGROUND_FLUSH = 0.08
ITEMS_PER_PAGE = 50


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "llmjobs/home.html", {"api": api_target().describe()})


async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and for `make run`'s own check: nothing about the
    configuration (staff see details at /healthz/details)."""

    def db_ok() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return bool(cursor.fetchone() == (1,))

    return JsonResponse({"status": "ok", "database": await sync_to_async(db_ok)()})


# --- helpers ---------------------------------------------------------------------------


async def _is_authenticated(user: object) -> bool:
    return bool(getattr(user, "is_authenticated", False))


# ``login_required`` for async views, minus a thread hop: Django's runs its sync test
# (``lambda u: u.is_authenticated``) through ``sync_to_async``; a coroutine test is awaited
# on the loop. Same redirect to the login page, same attributes for LoginRequiredMiddleware.
alogin_required = user_passes_test(cast(Callable[[Any], bool], _is_authenticated))  # stubs: sync tests only


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


def _preview(request: HttpRequest, job: BatchJob) -> None:
    """Run the first pending items now and show their outputs as messages."""
    try:
        results = jobs.job_preview(job=job)
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
    for line in jobs.preview_lines(results):
        messages.info(request, line)
    try:  # the estimate, with the output length observed in the preview
        messages.info(request, job_estimate(job=job).line())
    except Exception as exc:
        log.warning("estimate of job %s failed: %s", job.pk, exc)


def _attempt(request: HttpRequest, service: Callable[..., object], job: BatchJob, *, refused: str, done: str) -> None:
    """Call ``service(job=job)``; say ``done`` (formatted with the job) or why it was refused."""
    try:
        service(job=job)
    except JobStateError as exc:
        messages.error(request, f"{refused}: {exc}")
    else:
        messages.success(request, done.format(job=job))


def _enqueue(request: HttpRequest, job: BatchJob) -> None:
    _attempt(
        request,
        jobs.job_enqueue,
        job,
        refused=f"Could not run job #{job.pk}",
        done="Job #{job.pk} is queued: {job.total:,} item(s).",
    )


# --- jobs ------------------------------------------------------------------------------


@login_required
@require_GET
def job_list(request: HttpRequest) -> HttpResponse:
    queryset = BatchJob.objects.for_user(request.user).select_related("owner")
    page = Paginator(queryset, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    return render(request, "llmjobs/job_list.html", {"page": page, "jobs": page.object_list})


@login_required
def job_new(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            files = uploads.files_with_stash(request)  # a file kept from an earlier form error
            form = JobForm(request.POST, files)
            action = request.POST.get("action", "run")
        except RequestDataTooBig:
            form = JobForm()
            form.add_error(
                None,
                "The pasted text is too large for a form post: upload it as a TXT, CSV or JSONL file instead.",
            )
            return _form_page(request, form, status=400)
        if form.is_valid():
            cost = form.cost_options()
            # Run: queued as soon as the first items are committed; the rest are inserted by
            # this process meanwhile, and the page shows them arriving (``filling``). Batch
            # mode sends all items at once: it is queued once they are all in.
            early = action == "run" and cost["mode"] != "batch"
            try:
                job = jobs.job_create(
                    owner=request.user,
                    **form.service_kwargs(),
                    start=partial(_start, request, cost) if early else None,
                    head_start=True,  # the rest once a worker has claimed the first items
                    wait=False,
                )
                if not early:
                    apply_cost_options(job, **cost)
            except JobInputError as exc:
                form.add_error(None, str(exc))
            else:
                if action == "preview":
                    _preview(request, job)
                elif action == "run" and not early:
                    _enqueue(request, job)
                elif action != "run":
                    messages.success(request, f"Job #{job.pk} saved (not started yet).")
                return redirect(_job_url(job))
        uploads.keep_for_next_post(request, form)
        return _form_page(request, form, status=400)
    return _form_page(request, JobForm())


def _start(request: HttpRequest, cost: dict[str, Any], job: BatchJob) -> None:
    """A new job's first items are committed: set its cost options, then queue it."""
    apply_cost_options(job, **cost)
    _enqueue(request, job)


def _form_page(request: HttpRequest, form: JobForm, status: int = 200) -> HttpResponse:
    context = {"form": form, "preview_count": jobs.PREVIEW_COUNT, "stash": getattr(form, "stash", None)}
    return render(request, "llmjobs/job_form.html", context, status=status)


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
        "preview_count": jobs.PREVIEW_COUNT,
        "filling": _filling(job),
        "workers": workers_on_job(job.pk),  # issue 12: who claimed the job's items
        "org_governor": org_state(job.model),  # issue 12: the org-wide limits every worker shares
        **job_page_context(job, mine=mine),  # settings, timeline, Run/Resume, results endpoint
    }
    return render(request, "llmjobs/job_detail.html", context)


def _filling(job: BatchJob) -> dict[str, Any] | None:
    """While the job's items are still being inserted: how many are in, and whether the
    submitter stopped renewing the set (it is cut short by the next runner or recovery)."""
    if job.filling_until is None:
        return None
    return {"inserted": job.items.count(), "lapsed": job.filling_until < timezone.now()}


def _cancel(request: HttpRequest, job: BatchJob) -> None:
    _attempt(request, jobs.job_cancel, job, refused="Could not cancel", done="Job #{job.pk} is cancelled.")


def _retry(request: HttpRequest, job: BatchJob) -> None:
    try:
        count = jobs.job_retry(job=job, enqueue=True)
    except JobStateError as exc:
        messages.error(request, f"Could not retry: {exc}")
        return
    if not count:
        messages.info(request, "No failed or cancelled items to retry.")
        return
    messages.success(request, f"{count:,} item(s) will be tried again.")
    messages.success(request, f"Job #{job.pk} is queued: {job.total:,} item(s).")


def _job_action(act: Callable[[HttpRequest, BatchJob], None]) -> Callable[..., HttpResponse]:
    """A POST-only view over one of the user's jobs: ``act`` calls a service and
    leaves messages; the browser goes back to the job page."""

    @login_required
    @require_POST
    def view(request: HttpRequest, pk: int) -> HttpResponse:
        job = _job_to_change(request, pk)
        act(request, job)
        return redirect(_job_url(job))

    return view


job_run = _job_action(_enqueue)
job_preview = _job_action(_preview)
job_cancel_view = _job_action(_cancel)
job_retry_view = _job_action(_retry)


@login_required
@require_GET
def job_export_view(request: HttpRequest, pk: int, fmt: str) -> StreamingHttpResponse:
    job = _job_or_404(request, pk)
    if fmt not in jobs.EXPORT_FORMATS:  # the URL pattern allows only these
        raise Http404("No such format.")
    return jobs.job_export_response(job=job, fmt=fmt, asgi=isinstance(request, ASGIRequest))  # type: ignore[arg-type]


@login_required
@require_GET
def job_throughput_svg(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_or_404(request, pk)
    context = throughput_svg_context(throughput(job))
    response = render(request, "llmjobs/throughput.svg", context, content_type="image/svg+xml")
    response["Cache-Control"] = "no-store"
    return response


@alogin_required
async def job_events(request: HttpRequest, pk: int) -> HttpResponseBase:
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
    return _stream(user, lambda: progress_events(job_id))


# --- playground ------------------------------------------------------------------------


@login_required
@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    return render(request, "llmjobs/playground.html", {"form": PlaygroundForm(), "api": api_target().describe()})


@alogin_required
async def playground_stream(request: HttpRequest) -> HttpResponseBase:
    """POST (CSRF-checked) -> one streamed answer, token by token, through the shared client."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    form = PlaygroundForm(request.POST)
    if not form.is_valid():
        return JsonResponse({"errors": form.errors.get_json_data()}, status=400)
    client = await get_client()
    params = form.params()
    events = lambda: sse.coalesced(  # noqa: E731
        playground_events(client, params), direct=PLAYGROUND_DIRECT, interval=PLAYGROUND_FLUSH
    )
    return _stream(await request.auser(), events)


def _stream(user: object, events: Callable[[], AsyncIterator[bytes]]) -> HttpResponseBase:
    """An SSE response holding one of the user's ``LLMJOBS_STREAMS_PER_USER`` slots until it
    closes; 429 when they are all taken (nothing started: no poller joined, no upstream call)."""
    limit = llmjobs_settings().streams_per_user
    release = sse.slots.acquire(getattr(user, "pk", None), limit)
    if release is None:
        return sse.too_many_streams(limit)
    return sse.EventStreamResponse(events(), on_close=release)
