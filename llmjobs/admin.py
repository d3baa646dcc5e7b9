"""The admin: jobs with progress and sync actions over the services; items read-only.

Actions are thin: each parses the selection, calls one service from
``jobs.py`` (enqueue, cancel, retry, export, preview; the preview reaches the
async engine through ``async_to_sync``) and reports the result. A job's change page links to its items instead of
rendering them inline, so a 100,000-item job opens instantly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from .admin_forms import BatchJobAdminForm
from .api_errors import PreviewError
from .costs import fmt_usd, job_cost
from .exceptions import JobStateError
from .jobs import (
    PREVIEW_COUNT,
    ExportFormat,
    job_cancel,
    job_enqueue,
    job_export_response,
    job_preview,
    job_retry,
    preview_lines,
)
from .models import ApiToken, BatchJob, Item, WebhookDelivery
from .security import may_act_on
from .workers import workers_on_job

if TYPE_CHECKING:  # ModelAdmin is generic only in django-stubs
    _JobAdminBase = admin.ModelAdmin[BatchJob]
    _ItemAdminBase = admin.ModelAdmin[Item]
else:
    _JobAdminBase = _ItemAdminBase = admin.ModelAdmin


def _progress_bar(job: BatchJob) -> str:
    percent = round(job.progress * 100)
    return format_html(
        '<div title="{} of {}" style="width:110px;background:#eef1f7;border-radius:4px;height:10px;'
        'display:inline-block;vertical-align:middle;overflow:hidden">'
        '<div style="width:{}%;background:#3b5bdb;height:10px"></div></div> {}%',
        job.done_count,
        job.total,
        percent,
        percent,
    )


@admin.register(BatchJob)
class BatchJobAdmin(_JobAdminBase):
    list_display = (
        "id",
        "name",
        "owner",
        "model",
        "mode",
        "status",
        "progress_display",
        "counts",
        "tokens",
        "cost_display",
        "created_at",
    )
    list_display_links = ("id", "name")
    list_filter = ("status", "mode", "model", "owner")
    search_fields = ("name",)
    list_select_related = ("owner",)
    date_hierarchy = "created_at"
    list_per_page = 50
    actions = (
        "run_in_background",
        "cancel_jobs",
        "retry_failed",
        "export_csv",
        "export_jsonl",
        "preview",
        "estimate_cost",
    )
    readonly_fields = (
        "status",
        "progress_display",
        "items_link",
        *BatchJob.COUNTER_FIELDS,
        "created_at",
        "started_at",
        "finished_at",
        "last_error",
        "advice",
        "task_id",
        "schema_display",
        "webhook_url",
        "workers_display",
    )
    fieldsets = (
        (None, {"fields": ("name", "owner", "model", "status", "progress_display", "items_link")}),
        (
            "Prompt",
            {"fields": ("system_prompt", "prompt_template", "max_tokens", "stop_sequences")},
        ),
        ("Speed", {"fields": ("concurrency", "rate_limit_rpm")}),
        ("Structured output and notifications", {"fields": ("schema_display", "webhook_url")}),
        ("Counters", {"fields": BatchJob.COUNTER_FIELDS}),
        (
            "Run",
            {
                "fields": (
                    "created_at",
                    "started_at",
                    "finished_at",
                    "task_id",
                    "last_error",
                    "advice",
                    "workers_display",
                )
            },
        ),
    )

    form = BatchJobAdminForm  # the web form's checks: template against the items, model, limits
    # What a job ran with is history once it left the draft state.
    frozen_fields = ("model", "system_prompt", "prompt_template", "max_tokens", "stop_sequences")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs come with items: create them with the web form or `manage.py submit_job`

    def get_urls(self) -> list[Any]:
        from django.urls import path

        from .admin_usage import usage_view

        def usage(request: HttpRequest) -> HttpResponseBase:
            return usage_view(request, self.admin_site.each_context(request))

        view = self.admin_site.admin_view(usage)
        return [path("usage/", view, name="llmjobs_batchjob_usage"), *super().get_urls()]

    def get_readonly_fields(self, request: HttpRequest, obj: BatchJob | None = None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None and obj.status != BatchJob.Status.DRAFT:
            fields += self.frozen_fields
        return fields

    @admin.display(description="output schema")
    def schema_display(self, job: BatchJob) -> str:
        if not job.output_schema:
            return "none (free text)"
        return format_html("<pre>{}</pre>", json.dumps(job.output_schema, indent=2, ensure_ascii=False))

    @admin.display(description="workers")
    def workers_display(self, job: BatchJob) -> str:
        workers = workers_on_job(job.pk)
        if not workers:
            return "none yet"
        return format_html_join(mark_safe("<br>"), "{}", ((w.describe(),) for w in workers))

    @admin.display(description="progress")
    def progress_display(self, job: BatchJob) -> str:
        return _progress_bar(job)

    @admin.display(description="done / failed / total")
    def counts(self, job: BatchJob) -> str:
        return f"{job.done_count:,} / {job.failed_count:,} / {job.total:,}"

    @admin.display(description="tokens in / out")
    def tokens(self, job: BatchJob) -> str:
        return f"{job.input_tokens:,} / {job.output_tokens:,}"

    @admin.display(description="cost", ordering="cost_usd")
    def cost_display(self, job: BatchJob) -> str:
        """Spent so far (live), the estimate and the budget; "unknown" for a model without a price."""
        text = fmt_usd(job_cost(job))
        if job.estimated_cost_usd is not None:
            text += f" (est. {fmt_usd(job.estimated_cost_usd)})"
        if job.budget_usd is not None:
            text += f" / budget {fmt_usd(job.budget_usd)}"
        return text

    @admin.display(description="items")
    def items_link(self, job: BatchJob) -> str:
        url = reverse("admin:llmjobs_item_changelist") + "?" + urlencode({"job__id__exact": job.pk})
        page = reverse("llmjobs:job_detail", args=[job.pk])
        return format_html(
            '<a href="{}">View the {} items</a> · <a href="{}">job page with live progress</a>',
            url,
            f"{job.total:,}",
            page,
        )

    # --- actions ---------------------------------------------------------------------
    # Each action declares the permission it needs (Django hides it and refuses a
    # forged POST without it), and acts only on jobs the user may change: their
    # own, or anyone's with change_batchjob (see security.may_act_on).

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("llmjobs.run_batchjob")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("llmjobs.cancel_batchjob")

    def _actionable(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> list[BatchJob]:
        """The selected jobs this user may act on; the others are refused, one message each."""
        jobs = []
        for job in queryset:
            if may_act_on(request.user, job):
                jobs.append(job)
            else:
                self.message_user(
                    request, f"#{job.pk}: not yours, and you may not change others' jobs.", messages.ERROR
                )
        return jobs

    def _for_each(
        self, request: HttpRequest, queryset: QuerySet[BatchJob], service: Callable[..., object], done: str
    ) -> None:
        """Call ``service(job=...)`` on each selected job; report refusals per job, successes once."""
        count = 0
        for job in self._actionable(request, queryset):
            try:
                service(job=job)
            except JobStateError as exc:
                self.message_user(request, f"#{job.pk}: {exc}", messages.ERROR)
            else:
                count += 1
        if count:
            self.message_user(request, done.format(count=count), messages.SUCCESS)

    @admin.action(description="Run in background", permissions=["run"])
    def run_in_background(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> None:
        self._for_each(request, queryset, job_enqueue, "{count} job(s) queued for the workers.")

    @admin.action(description="Cancel", permissions=["cancel"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> None:
        self._for_each(request, queryset, job_cancel, "{count} job(s) cancelled.")

    @admin.action(description="Retry failed and cancelled items", permissions=["run"])
    def retry_failed(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> None:
        for job in self._actionable(request, queryset):
            try:
                count = job_retry(job=job, enqueue=True)
            except JobStateError as exc:
                self.message_user(request, f"#{job.pk}: {exc}", messages.ERROR)
                continue
            if not count:
                self.message_user(request, f"#{job.pk}: no failed or cancelled items.", messages.INFO)
            else:
                self.message_user(
                    request, f"#{job.pk}: {count} failed or cancelled item(s) queued again.", messages.SUCCESS
                )

    def _export(self, request: HttpRequest, queryset: QuerySet[BatchJob], fmt: ExportFormat) -> HttpResponseBase | None:
        jobs = list(queryset[:2])
        if len(jobs) != 1:
            self.message_user(request, "Select exactly one job to export.", messages.WARNING)
            return None
        return job_export_response(job=jobs[0], fmt=fmt)

    @admin.action(description="Export results as CSV", permissions=["view"])
    def export_csv(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> HttpResponseBase | None:
        return self._export(request, queryset, "csv")

    @admin.action(description="Export results as JSONL", permissions=["view"])
    def export_jsonl(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> HttpResponseBase | None:
        return self._export(request, queryset, "jsonl")

    @admin.action(description=f"Preview: run the first {PREVIEW_COUNT} pending items now", permissions=["run"])
    def preview(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> None:
        for job in self._actionable(request, queryset[:10]):
            try:
                results = job_preview(job=job)
            except PreviewError as exc:  # the API refused the run (bad key, no permission): plain words
                self.message_user(request, f"#{job.pk}: preview failed: {exc}", messages.ERROR)
                continue
            except Exception as exc:  # show the operator what went wrong
                self.message_user(request, f"#{job.pk}: preview failed: {type(exc).__name__}: {exc}", messages.ERROR)
                continue
            if not results:
                self.message_user(request, f"#{job.pk}: no pending items to preview.", messages.WARNING)
                continue
            for line in preview_lines(results):
                # Plain text: the admin's message template escapes it.
                self.message_user(request, f"#{job.pk} {job.name}: {line}", messages.INFO)

    @admin.action(description="Estimate the cost (count_tokens, free)")
    def estimate_cost(self, request: HttpRequest, queryset: QuerySet[BatchJob]) -> None:
        from .estimate import job_estimate

        for job in queryset[:10]:
            try:
                line = job_estimate(job=job).line()
            except Exception as exc:
                self.message_user(request, f"#{job.pk}: estimate failed: {type(exc).__name__}: {exc}", messages.ERROR)
                continue
            self.message_user(request, f"#{job.pk} {job.name}: {line}", messages.INFO)


class JobFilter(admin.SimpleListFilter):
    """By job: the 20 newest jobs are listed; any job id works in the URL."""

    title = "job"
    parameter_name = "job__id__exact"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        jobs = BatchJob.objects.order_by("-created_at", "-id").values_list("pk", "name")[:20]
        return [(str(pk), f"#{pk} {Truncator(name).chars(40)}") for pk, name in jobs]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Item]) -> QuerySet[Item]:
        value = self.value()
        if value and value.isdigit():
            return queryset.filter(job_id=int(value))
        return queryset


@admin.register(Item)
class ItemAdmin(_ItemAdminBase):
    """Read-only: items change only through jobs (runner, retry, cancel)."""

    list_display = (
        "id",
        "job",
        "position",
        "status",
        "short_input",
        "short_output",
        "error_type",
        "attempts",
        "latency_ms",
        "ttft_ms",
    )
    list_filter = (JobFilter, "status")
    search_fields = ("custom_id",)
    list_select_related = ("job",)
    list_per_page = 100
    show_full_result_count = False  # no COUNT(*) over millions of items
    ordering = ("job_id", "position")
    fields = (
        "job",
        "position",
        "custom_id",
        "input",
        *Item.RESULT_FIELDS,
        "started_at",
        "finished_at",
        "lease_expires_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="input")
    def short_input(self, item: Item) -> str:
        return Truncator(item.text).chars(80)  # plain text: escaped by the admin

    @admin.display(description="output")
    def short_output(self, item: Item) -> str:
        return Truncator(item.output).chars(120)  # plain text: escaped by the admin


# --- REST API tokens and webhook deliveries ---------------------------------------------

if TYPE_CHECKING:
    _TokenAdminBase = admin.ModelAdmin[ApiToken]
    _DeliveryAdminBase = admin.ModelAdmin[WebhookDelivery]
else:
    _TokenAdminBase = _DeliveryAdminBase = admin.ModelAdmin


@admin.register(ApiToken)
class ApiTokenAdmin(_TokenAdminBase):
    """Adding a token shows it once (only its hash is stored); deleting one revokes it."""

    list_display = ("prefix", "user", "name", "created_at", "last_used_at")
    list_filter = ("user",)
    search_fields = ("name", "prefix", "user__username")
    fields = ("user", "name", "prefix", "created_at", "last_used_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None and super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        from .tokens import token_create

        row, token = token_create(user=obj.user, name=obj.name)
        obj.pk, obj.prefix, obj.token_hash, obj.created_at = row.pk, row.prefix, row.token_hash, row.created_at
        self.message_user(
            request, f"The new token for {obj.user} (copy it now, it is not shown again): {token}", messages.WARNING
        )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(_DeliveryAdminBase):
    """The delivery log: read-only."""

    list_display = ("id", "job", "event", "status", "attempts", "last_status_code", "created_at", "next_attempt_at")
    list_filter = ("status", "event")
    search_fields = ("url", "job__name")
    list_select_related = ("job",)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in WebhookDelivery._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
