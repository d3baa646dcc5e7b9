"""BatchJob and Item.

Style follows django-tasks-db: QuerySets carry the verbs (``.pending()``,
``.claimable(now)``...), and state changes are model methods that save only
the fields they touch (``save(update_fields=[...])``). Business operations
that span rows (create, enqueue, cancel, retry, export) live in ``jobs.py``.
Leases are QuerySet verbs too (``claim``, ``renew``, ``release``,
``cancel_pending``...), so the runner holds no SQL of its own. The REST API's tokens and
the webhooks' models are in ``api_models`` (imported here).
"""

from __future__ import annotations

import datetime
import json
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import plain_sql
from .api_models import ApiToken, WebhookDelivery, WebhookSecret
from .cost_fields import ItemCostFields, JobCostFields
from .pricing import TokenUsage, price_totals

__all__ = ["ApiToken", "BatchJob", "Item", "WebhookDelivery", "WebhookSecret", "estimate_cost"]


def estimate_cost(model: str, input_tokens: int, output_tokens: int, requests: int = 1) -> Decimal:
    """USD for these tokens on ``model`` over ``requests`` requests, from genai-prices.

    0 for a model the package does not know: this feeds the legacy ``cost_estimate``
    column; the cost shown to people is ``cost_usd``, which says "unknown" instead.
    """
    price = price_totals(model, TokenUsage(input_tokens, output_tokens), requests=max(1, requests))
    return price if price is not None else Decimal("0.000000")


# --- BatchJob ------------------------------------------------------------------------


class BatchJobQuerySet(models.QuerySet["BatchJob"]):
    def active(self) -> BatchJobQuerySet:
        """Queued or running."""
        return self.filter(status__in=BatchJob.ACTIVE_STATUSES)

    def finished(self) -> BatchJobQuerySet:
        return self.filter(status__in=BatchJob.FINISHED_STATUSES)

    def for_user(self, user: Any) -> BatchJobQuerySet:
        """The jobs ``user`` may see: their own, or every job with ``llmjobs.view_batchjob``."""
        if user is None or not getattr(user, "is_authenticated", False):
            return self.none()
        if user.has_perm("llmjobs.view_batchjob"):  # True for active superusers; is_staff alone is not enough
            return self.all()
        return self.filter(owner=user)

    def status_of(self, pk: int) -> str | None:
        """The job's current status in the database (``None`` if it is gone, or not among
        these); one plain ``SELECT`` (``plain_sql``: a runner asks twice a second)."""
        return plain_sql.status_of(self, pk)

    def unqueue(self, error: str) -> int:
        """Queued jobs whose task could not be enqueued: back to draft with ``error`` (one UPDATE;
        a job a worker already took is left alone)."""
        return self.filter(status=BatchJob.Status.QUEUED).update(status=BatchJob.Status.DRAFT, last_error=error)

    def add_to_counters(self, **deltas: int | Decimal) -> int:
        """Add to the jobs' counters in one UPDATE (``c = c + delta``: safe against concurrent
        writers); returns the number of jobs. Keywords: ``succeeded``, ``failed``, ``cancelled``,
        ``rate_limited``, ``retries`` (the ``*_count`` fields), ``input_tokens``, ``output_tokens``,
        and the cost counters. Nothing to add: no query. Plain SQL built once (``plain_sql``):
        a runner calls it a few times a second for the whole run."""
        return plain_sql.add_to_counters(self, {BatchJob.COUNTER_OF.get(k, k): v for k, v in deltas.items()})


class BatchJob(JobCostFields):
    class Status(models.TextChoices):
        DRAFT = "draft", "Not started"  # the value stays "draft"; people read "Not started"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        PARTIALLY_FAILED = "partially_failed", "Partially failed"
        CANCELLED = "cancelled", "Cancelled"

    # keyword of ``add_to_counters`` -> field, where they differ
    COUNTER_OF = {
        "succeeded": "succeeded_count",
        "failed": "failed_count",
        "cancelled": "cancelled_count",
        "rate_limited": "rate_limited_count",
        "retries": "retries_count",
    }

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)
    FINISHED_STATUSES = (
        Status.SUCCEEDED,
        Status.FAILED,
        Status.PARTIALLY_FAILED,
        Status.CANCELLED,
    )

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="llm_jobs",
        help_text="Empty for jobs made from the command line.",
    )
    name = models.CharField(max_length=200)
    model = models.CharField(max_length=100)
    system_prompt = models.TextField(blank=True)
    prompt_template = models.TextField(
        blank=True,
        help_text="{placeholders} are filled from each item's fields; without any, the item's text is appended.",
    )
    max_tokens = models.PositiveIntegerField(default=1024)
    stop_sequences = models.JSONField(default=list, blank=True)
    concurrency = models.PositiveIntegerField(
        null=True, blank=True, help_text="Ceiling on requests in flight; empty means automatic."
    )
    rate_limit_rpm = models.PositiveIntegerField(
        null=True, blank=True, help_text="Optional requests-per-minute limit for this job."
    )

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT, db_index=True)
    total = models.PositiveIntegerField(default=0)
    succeeded_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    cancelled_count = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    rate_limited_count = models.PositiveIntegerField(
        default=0, help_text="429 responses received while running the job (not item failures)."
    )
    retries_count = models.PositiveIntegerField(
        default=0, help_text="Requests beyond one per item: 429s, 529s, timeouts and other retried errors."
    )
    cost_estimate = models.DecimalField(
        max_digits=12, decimal_places=6, default=Decimal(0), help_text="USD, estimated."
    )

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    advice = models.TextField(
        blank=True,
        help_text="A hint from the last run, e.g. a lower max_tokens that would run faster (empty: none).",
    )
    task_id = models.CharField(max_length=64, blank=True, help_text="Id of the django.tasks result that runs the job.")
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When the job was last queued for a worker.")
    source_job = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="clones", help_text="Cloned from."
    )

    # Structured extraction and notifications (issue 15).
    # Kept as text, not jsonb: PostgreSQL's jsonb reorders object keys, and the order of
    # the schema's properties is the order of the export's columns. See ``output_schema``.
    output_schema_json = models.TextField(
        blank=True, help_text="JSON Schema (an object) every answer must match; empty for free text."
    )
    input_fields = models.JSONField(
        default=list, blank=True, help_text="The input's column names in their original order (for exports)."
    )
    webhook_url = models.URLField(max_length=2000, blank=True, help_text="POSTed a signed job.finished event.")
    filling_until = models.DateTimeField(  # issue 17: a job runs while its items are inserted (``filling``)
        null=True, blank=True, help_text="Items are still being inserted (renewed by the submitter); empty: all in."
    )

    objects = BatchJobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "batch job"
        permissions = [
            ("run_batchjob", "Can run, preview and retry batch jobs (spends API money)"),
            ("cancel_batchjob", "Can cancel batch jobs"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(max_tokens__gte=1), name="llmjobs_job_max_tokens_gte_1"),
            models.CheckConstraint(
                condition=Q(concurrency__isnull=True) | Q(concurrency__gte=1),
                name="llmjobs_job_concurrency_gte_1",
            ),
            models.CheckConstraint(
                condition=Q(rate_limit_rpm__isnull=True) | Q(rate_limit_rpm__gte=1),
                name="llmjobs_job_rate_limit_gte_1",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    # --- derived -----------------------------------------------------------------------

    @property
    def output_schema(self) -> dict[str, Any] | None:
        """The output JSON Schema (properties in their original order), or ``None``."""
        return json.loads(self.output_schema_json) if self.output_schema_json else None

    @output_schema.setter
    def output_schema(self, schema: dict[str, Any] | None) -> None:
        self.output_schema_json = json.dumps(schema, ensure_ascii=False) if schema else ""

    @property
    def done_count(self) -> int:
        return self.succeeded_count + self.failed_count + self.cancelled_count

    @property
    def remaining_count(self) -> int:
        """Items not done yet (pending or running)."""
        return max(self.total - self.done_count, 0)

    @property
    def progress(self) -> float:
        """Fraction of items done, 0..1 (a job with no items counts as done)."""
        if self.total <= 0:
            return 1.0
        return min(self.done_count / self.total, 1.0)

    @property
    def filling(self) -> bool:
        """Its items are still being inserted (``total`` counts them all already)."""
        return self.filling_until is not None

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    # --- state changes -------------------------------------------------------------------

    def mark_queued(self, task_id: str = "") -> None:
        self.status = self.Status.QUEUED
        self.task_id = str(task_id or "")
        self.finished_at = None
        self.last_error = ""
        self.queued_at = timezone.now()
        self.save(update_fields=["status", "task_id", "finished_at", "last_error", "queued_at"])

    def mark_running(self) -> None:
        """Running now; ``started_at`` is kept across resumes of an unfinished run."""
        now = timezone.now()
        if self.started_at is None or self.finished_at is not None:
            self.started_at = now
        self.status = self.Status.RUNNING
        self.finished_at = None
        self.save(update_fields=["status", "started_at", "finished_at"])

    def mark_finished(self, *, recount: bool = True) -> None:
        """Finish the job, deriving its status from the item counters.

        Call it when no item is pending or running any more. With ``recount``
        the counters are first recomputed from the items. A job cancelled in the
        meantime (by another process) stays cancelled; otherwise: all succeeded
        -> succeeded, none succeeded -> failed, some of each -> partially_failed,
        any cancelled item -> cancelled.
        """
        if recount:
            self._recount()
        current = type(self).objects.status_of(self.pk)
        if current == self.Status.CANCELLED or self.status == self.Status.CANCELLED or self.cancelled_count:
            self.status = self.Status.CANCELLED
        elif self.failed_count == 0 and self.succeeded_count >= self.total:
            self.status = self.Status.SUCCEEDED
        elif self.succeeded_count == 0:
            self.status = self.Status.FAILED
        else:
            self.status = self.Status.PARTIALLY_FAILED
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "finished_at", *self.COUNTER_FIELDS])

    def mark_cancelled(self) -> None:
        self.status = self.Status.CANCELLED
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "finished_at"])

    def mark_failed(self, error: str) -> None:
        """The job as a whole failed (bad key, unknown model...): record why."""
        self.status = self.Status.FAILED
        self.last_error = error
        self.finished_at = timezone.now()
        self.save(update_fields=["status", "last_error", "finished_at"])

    def mark_interrupted(self) -> None:
        """A run stopped early (Ctrl-C, shutdown): back to draft, saying how many items are left."""
        left = self.total - self.done_count
        self.status = self.Status.DRAFT
        self.last_error = f"Interrupted with {left} item(s) left; run the job again to resume."
        self.save(update_fields=["status", "last_error"])

    def mark_draft(self) -> None:
        """Back to draft (after a retry), ready to be enqueued again."""
        self.status = self.Status.DRAFT
        self.finished_at = None
        self.last_error = ""
        self.save(update_fields=["status", "finished_at", "last_error"])

    COUNTER_FIELDS = (
        "total",
        "succeeded_count",
        "failed_count",
        "cancelled_count",
        "input_tokens",
        "output_tokens",
        "cost_estimate",
        *JobCostFields.COST_COUNTERS,
    )

    def _recount(self) -> None:
        Status = Item.Status
        counts = Item.objects.filter(job_id=self.pk).aggregate(
            total=Count("pk"),
            succeeded=Count("pk", filter=Q(status=Status.SUCCEEDED)),
            failed=Count("pk", filter=Q(status=Status.FAILED)),
            cancelled=Count("pk", filter=Q(status=Status.CANCELLED)),
            # answers reused from a cloned job's source were paid for there, not here
            input_tokens=Coalesce(Sum("input_tokens", filter=Q(reused=False)), 0),
            output_tokens=Coalesce(Sum("output_tokens", filter=Q(reused=False)), 0),
            **JobCostFields.cost_sums(),
        )
        if self.filling_until is None:  # items still arriving: ``total`` is the whole input's (``filling``)
            self.total = counts["total"]
        self.succeeded_count = counts["succeeded"]
        self.failed_count = counts["failed"]
        self.cancelled_count = counts["cancelled"]
        self.input_tokens = int(counts["input_tokens"])
        self.output_tokens = int(counts["output_tokens"])
        self.set_costs(counts, estimate_cost(self.model, self.input_tokens, self.output_tokens, self.total))

    def refresh_counters(self) -> None:
        """Recount items by status and sum their tokens (one aggregate query), then save."""
        self._recount()
        self.save(update_fields=list(self.COUNTER_FIELDS))


# --- Item ----------------------------------------------------------------------------


class ItemQuerySet(models.QuerySet["Item"]):
    def pending(self) -> ItemQuerySet:
        """Pending items in position order."""
        return self.filter(status=Item.Status.PENDING).order_by("job_id", "position")

    def running(self) -> ItemQuerySet:
        return self.filter(status=Item.Status.RUNNING)

    def succeeded(self) -> ItemQuerySet:
        return self.filter(status=Item.Status.SUCCEEDED)

    def failed(self) -> ItemQuerySet:
        return self.filter(status=Item.Status.FAILED)

    def cancelled(self) -> ItemQuerySet:
        return self.filter(status=Item.Status.CANCELLED)

    def stale(self, now: datetime.datetime | None = None) -> ItemQuerySet:
        """Running items whose lease has expired (or that never had one): their runner is gone."""
        now = now or timezone.now()
        return self.filter(
            Q(lease_expires_at__lt=now) | Q(lease_expires_at__isnull=True),
            status=Item.Status.RUNNING,
        )

    def claimable(self, now: datetime.datetime | None = None) -> ItemQuerySet:
        """Items a runner may take: pending, or running with an expired lease. Position order."""
        now = now or timezone.now()
        return self.filter(
            Q(status=Item.Status.PENDING)
            | Q(status=Item.Status.RUNNING, lease_expires_at__lt=now)
            | Q(status=Item.Status.RUNNING, lease_expires_at__isnull=True)
        ).order_by("job_id", "position")

    def unfinished(self) -> ItemQuerySet:
        """Pending or running."""
        return self.filter(status__in=[Item.Status.PENDING, Item.Status.RUNNING])

    def retryable(self) -> ItemQuerySet:
        """Items a retry puts back to pending: failed **and cancelled** ones (one rule on every surface)."""
        return self.filter(status__in=Item.RETRYABLE_STATUSES)

    def live(self, now: datetime.datetime | None = None) -> ItemQuerySet:
        """Running items whose lease has not expired: a live runner holds them."""
        return self.filter(status=Item.Status.RUNNING, lease_expires_at__gte=now or timezone.now())

    # --- verbs (each one UPDATE, or one locked SELECT + UPDATE) ---------------------------

    def claim(self, *, limit: int, lease: datetime.timedelta, worker: dict[str, Any] | None = None) -> list[Any]:
        """Take up to ``limit`` claimable items in position order: mark them running with a
        lease of ``lease`` and return their ``(pk, input)``. Rows another runner has
        locked are skipped (``SELECT ... FOR UPDATE SKIP LOCKED``); ``worker``: who claims."""
        now = timezone.now()
        with transaction.atomic(using=self.db):
            qs = self.claimable(now).order_by("position")
            if connection.features.has_select_for_update_skip_locked:
                qs = qs.select_for_update(skip_locked=True)
            rows = list(qs.values_list("pk", "input")[:limit])
            if rows:
                Item.objects.filter(pk__in=[pk for pk, _ in rows]).update(
                    status=Item.Status.RUNNING, lease_expires_at=now + lease, started_at=now, **(worker or {})
                )
        return rows

    def renew(self, *, lease: datetime.timedelta) -> int:
        """Extend the lease of the running items among these by ``lease`` from now."""
        return self.filter(status=Item.Status.RUNNING).update(lease_expires_at=timezone.now() + lease)

    def release(self) -> int:
        """Put running items back to pending (a runner stopping cleanly); returns the count."""
        return self.filter(status=Item.Status.RUNNING).update(status=Item.Status.PENDING, lease_expires_at=None)

    def cancel_pending(self, now: datetime.datetime | None = None) -> int:
        """Cancel the claimable items (pending, or running with an expired lease); returns the count."""
        now = now or timezone.now()
        return (
            self.claimable(now).order_by().update(status=Item.Status.CANCELLED, lease_expires_at=None, finished_at=now)
        )

    def cancel_running(self) -> int:
        """Cancel the running items among these (a runner that saw its job cancelled)."""
        return self.filter(status=Item.Status.RUNNING).update(
            status=Item.Status.CANCELLED, lease_expires_at=None, finished_at=timezone.now()
        )

    def fail(self, *, error_type: str, error_message: str, now: datetime.datetime | None = None) -> int:
        """Fail these items for a reason of their own (a prompt that can't be rendered)."""
        return self.update(
            status=Item.Status.FAILED,
            error_type=error_type[:64],
            error_message=error_message,
            lease_expires_at=None,
            finished_at=now or timezone.now(),
        )

    def reset_for_retry(self) -> int:
        """Put the retryable items back to pending, results and errors cleared, ``attempts`` kept."""
        cleared = {
            field.name: field.get_default()
            for field in Item._meta.concrete_fields
            if field.name in (*Item.RESULT_FIELDS, "lease_expires_at", "started_at", "finished_at")
            and field.name not in ("status", "attempts")
        }
        return self.retryable().update(status=Item.Status.PENDING, **cleared)

    def next_lease_expiry(self) -> datetime.datetime | None:
        """When the first lease among these running items expires (``None``: no lease held)."""
        return (
            self.filter(status=Item.Status.RUNNING)
            .exclude(lease_expires_at__isnull=True)
            .order_by("lease_expires_at")
            .values_list("lease_expires_at", flat=True)
            .first()
        )


class Item(ItemCostFields):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    # What a retry puts back to pending, on every surface: a cancelled item was
    # never answered, so retrying it costs what running it would have.
    RETRYABLE_STATUSES = (Status.FAILED, Status.CANCELLED)

    # What one attempt's outcome sets on an item.
    RESULT_FIELDS = (
        "status",
        "output",
        "stop_reason",
        "error_type",
        "error_message",
        "attempts",
        "input_tokens",
        "output_tokens",
        "latency_ms",
        "ttft_ms",
    )

    # No index of its own: the (job, position) unique index serves lookups by job.
    job = models.ForeignKey(BatchJob, on_delete=models.CASCADE, related_name="items", db_index=False)
    position = models.PositiveIntegerField(help_text="0-based place in the input.")
    input = models.JSONField(help_text='Fields for the template; a plain text is {"text": ...}.')
    custom_id = models.CharField(max_length=255, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    output = models.TextField(blank=True)
    stop_reason = models.CharField(max_length=32, blank=True)
    error_type = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)

    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True, help_text="Time to first token.")
    reused = models.BooleanField(
        default=False, help_text="The answer was copied from the cloned job's identical request: no cost here."
    )

    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    worker_id = models.CharField(max_length=64, blank=True, default="")
    worker_host = models.CharField(max_length=255, blank=True, default="")
    worker_pid = models.PositiveIntegerField(null=True, blank=True)  # worker_*: who claimed it last (issue 12)
    objects = ItemQuerySet.as_manager()

    class Meta:
        ordering = ["job_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "position"], name="llmjobs_item_unique_position"),
        ]
        indexes = [
            # The pending items of a job in position order; counts by status.
            models.Index(fields=["job", "status", "position"], name="llmjobs_item_job_status_pos"),
            # Running items with an expired lease, across jobs (recovery).
            models.Index(fields=["status", "lease_expires_at"], name="llmjobs_item_status_lease"),
            # What a user's items cost lately (the spend quota, the admin's usage page). Partial:
            # inserting items (finished_at is null) does not touch it.
            models.Index(
                fields=["job", "finished_at"],
                name="llmjobs_item_job_finished",
                condition=models.Q(finished_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"item {self.position} of job {self.job_id}"

    @property
    def text(self) -> str:
        value = self.input.get("text", "") if isinstance(self.input, dict) else self.input
        return value if isinstance(value, str) else str(value)
