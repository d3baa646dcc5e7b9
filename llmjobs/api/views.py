"""The REST API (django-ninja): async views over the services in ``llmjobs.jobs``.

Every route needs ``Authorization: Bearer <token>`` (``manage.py api_token USER``)
and is limited per user (``LLMJOBS_API_RATE_LIMIT`` a minute). A user reaches only
their own jobs: any other id is a 404. Input errors are 422 with the field's name
in ``detail[].loc``; a job whose state forbids the action is 409. OpenAPI at
``/api/v1/openapi.json``, interactive docs at ``/api/v1/docs``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from ninja import NinjaAPI, Query, Status

from .. import jobs
from ..conf import llmjobs_settings
from ..costs import apply_cost_options
from ..exceptions import JobInputError, JobStateError
from ..models import BatchJob, Item
from ..prompts import compile_template
from ..structured import check_schema
from .auth import TokenAuth, UserRateLimit
from .schemas import CreatedOut, JobIn, JobOut, RetryOut

__all__ = ["api"]

api = NinjaAPI(
    title="llmjobs",
    version="1",
    description="Batch jobs of Claude API calls: create, follow, read results, cancel, retry.",
    auth=TokenAuth(),
    throttle=[UserRateLimit()],
    urls_namespace="api-v1",
)


class FieldError(Exception):
    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in errors))
        self.errors = errors


@api.exception_handler(FieldError)
def _field_error(request: HttpRequest, exc: FieldError) -> HttpResponse:
    detail = [{"loc": ["body", field], "msg": msg, "type": "value_error"} for field, msg in exc.errors]
    return api.create_response(request, {"detail": detail}, status=422)


@api.exception_handler(JobStateError)
def _state_error(request: HttpRequest, exc: JobStateError) -> HttpResponse:
    return api.create_response(request, {"detail": str(exc)}, status=409)


def _job_url(request: HttpRequest, job: BatchJob) -> str:
    return request.build_absolute_uri(reverse("llmjobs:job_detail", args=[job.pk]))


def _out(request: HttpRequest, job: BatchJob) -> dict[str, Any]:
    return {**jobs.job_summary(job), "url": _job_url(request, job)}


def _user(request: HttpRequest) -> Any:
    """The token's user (set by ``TokenAuth``)."""
    return getattr(request, "auth", None)


async def _own_job(request: HttpRequest, job_id: int) -> BatchJob:
    job = await BatchJob.objects.filter(pk=job_id, owner=_user(request)).afirst()
    if job is None:
        raise Http404("no such job")
    return job


def _check(payload: JobIn) -> tuple[str, dict[str, Any] | None]:
    """Form-equivalent checks, each error on its field. Returns (model, schema)."""
    errors: list[tuple[str, str]] = []
    model = (payload.model or "").strip()
    conf = llmjobs_settings()  # the form's list of models: LLMJOBS_DEFAULT_MODEL first, then LLMJOBS_MODELS
    choices = list(dict.fromkeys([m for m in (conf.default_model, *conf.models) if m]))
    if not model:
        model = choices[0] if choices else ""
    elif model not in choices:
        errors.append(("model", f"unknown model {model!r}; choose one of {', '.join(choices)}"))
    schema = None
    checks: list[tuple[str, Any]] = [
        ("template", lambda: compile_template(payload.template)),
        ("schema", lambda: check_schema(payload.output_schema)),
    ]
    if payload.webhook_url:
        from ..webhooks import check_webhook_url

        checks.append(("webhook_url", lambda: check_webhook_url(payload.webhook_url.strip())))
    for field, check in checks:
        try:
            value = check()
        except JobInputError as exc:
            errors.append((field, str(exc)))
        else:
            if field == "schema":
                schema = value
    if errors:
        raise FieldError(errors)
    return model, schema


def _create(user: Any, payload: JobIn) -> BatchJob:
    model, schema = _check(payload)
    mode = "batch" if payload.mode == "batch" else "online"

    def start(job: BatchJob) -> None:
        apply_cost_options(job, budget_usd=payload.budget_usd, dedup=payload.dedup, mode=mode)
        jobs.job_enqueue(job=job)  # the task is enqueued after commit

    create = partial(
        jobs.job_create,
        owner=user,
        name=payload.name or "API job",
        template=payload.template,
        system=payload.system,
        model=model,
        max_tokens=payload.max_tokens,
        concurrency=payload.concurrency,
        records=payload.items,
        schema=schema,
        webhook_url=payload.webhook_url,
    )
    try:
        if mode == "batch":  # sends all items at once: queued once they are all in
            with transaction.atomic():
                job = create()
                start(job)
        else:  # queued as soon as the first items are committed; the rest are inserted meanwhile
            job = create(start=start, head_start=True, wait=False)  # the rest once a worker has claimed
    except JobInputError as exc:
        raise FieldError([("items", str(exc))]) from None
    return job


@api.post("/jobs", response={201: CreatedOut}, url_name="job_create", summary="Create and queue a job")
async def create_job(request: HttpRequest, payload: JobIn) -> Status[dict[str, Any]]:
    job = await sync_to_async(_create)(_user(request), payload)
    return Status(201, {"id": job.pk, "status": job.status, "url": _job_url(request, job)})


@api.get("/jobs", response=list[JobOut], url_name="job_list", summary="Your jobs, newest first")
async def list_jobs(
    request: HttpRequest,
    status: str | None = None,
    limit: int = Query(50, ge=1, le=500),  # type: ignore[type-arg]
    offset: int = Query(0, ge=0),  # type: ignore[type-arg]
) -> list[dict[str, Any]]:
    queryset = BatchJob.objects.filter(owner=_user(request))
    if status:
        queryset = queryset.filter(status=status)
    return [_out(request, job) async for job in queryset[offset : offset + limit]]


@api.get("/jobs/{job_id}", response=JobOut, url_name="job_detail", summary="One job: status, counts, cost")
async def get_job(request: HttpRequest, job_id: int) -> dict[str, Any]:
    return _out(request, await _own_job(request, job_id))


@api.get(
    "/jobs/{job_id}/results",
    url_name="job_results",
    summary="Results as NDJSON, streamed in input order",
    response={200: None},
    openapi_extra={
        "responses": {
            200: {
                "description": 'One JSON object per line: {"index", "input", "output" or "text", "status", '
                '"error", "stop_reason", "usage", "attempts"}',
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            }
        }
    },
)
async def job_results(request: HttpRequest, job_id: int, status: str | None = None) -> HttpResponse:
    job = await _own_job(request, job_id)
    if status and status not in Item.Status.values:
        raise FieldError([("status", f"unknown status {status!r}; use one of {', '.join(Item.Status.values)}")])
    response = StreamingHttpResponse(
        jobs.job_results_lines(job, status=status), content_type="application/x-ndjson; charset=utf-8"
    )
    response["Cache-Control"] = "no-store"
    return response  # type: ignore[return-value]


@api.post("/jobs/{job_id}/cancel", response=JobOut, url_name="job_cancel", summary="Cancel a job")
async def cancel_job(request: HttpRequest, job_id: int) -> dict[str, Any]:
    job = await _own_job(request, job_id)
    await sync_to_async(jobs.job_cancel)(job=job)
    return _out(request, job)


@api.post("/jobs/{job_id}/retry", response=RetryOut, url_name="job_retry", summary="Retry failed and cancelled items")
async def retry_job(request: HttpRequest, job_id: int) -> dict[str, Any]:
    job = await _own_job(request, job_id)
    count = await sync_to_async(jobs.job_retry)(job=job, enqueue=True)
    return {"reset": count, "job": _out(request, job)}
