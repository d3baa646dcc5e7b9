"""Services: every operation on a job, written once (HackSoft style: ``job_<verb>``).

Keyword-only, typed, transactional. Surfaces (admin actions, views, commands,
tasks) parse their input, call one of these and render the result; they never
change jobs or items on their own.

- ``job_create``: validate everything, then write the job and its items in one
  transaction. Bad input raises ``JobInputError`` and creates nothing.
- ``job_enqueue``: queue the job on Django's task framework (after commit).
- ``job_run``: run the job now, in this process (sync; through ``async_to_sync``).
- ``job_cancel``: cancel the job and its pending items.
- ``job_retry``: put failed **and cancelled** items back to pending (one rule
  on every surface: ``Item.RETRYABLE_STATUSES``).
- ``job_preview``: run the first ``PREVIEW_COUNT`` pending items now.
- ``job_export`` / ``job_export_lines`` / ``job_export_response``: results in
  input order, streamed, as CSV or JSONL (built in ``exports``, re-exported here).
- ``recover_stalled_jobs``: re-enqueue running jobs whose runner died (and cancel, with
  the reason, jobs whose submitter died while inserting their items).

Errors are ``JobInputError`` (bad input) and ``JobStateError`` (not now), from
``llmjobs.exceptions``.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import IO, TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.db import transaction
from django.utils import timezone
from django.utils.text import Truncator

from .conf import llmjobs_settings
from .exceptions import JobInputError, JobStateError
from .exports import (
    EXPORT_FIELDS,
    EXPORT_FORMATS,
    ExportFormat,
    export_columns,
    export_filename,
    export_jsonl_line,
    job_export,
    job_export_lines,
    job_export_response,
    job_export_rows,
    job_results_lines,
    job_summary,
)
from .filling import cut_short, fill, insert_items
from .models import BatchJob, Item
from .parsing import iter_file, iter_records, iter_texts
from .prompts import compile_template
from .quotas import check_quota
from .structured import check_schema

if TYPE_CHECKING:
    from .engine import Outcome
    from .runner import JobRunner, RunReport

__all__ = [
    "EXPORT_FIELDS",
    "EXPORT_FORMATS",
    "PREVIEW_COUNT",
    "ExportFormat",
    "JobInputError",
    "JobStateError",
    "export_columns",
    "export_filename",
    "export_jsonl_line",
    "job_cancel",
    "job_create",
    "job_enqueue",
    "job_export",
    "job_export_lines",
    "job_export_response",
    "job_export_rows",
    "job_preview",
    "job_results_lines",
    "job_retry",
    "job_run",
    "job_summary",
    "preview_lines",
    "recover_stalled_jobs",
]

logger = logging.getLogger(__name__)

PREVIEW_COUNT = 5  # items a preview runs now, on every surface
CUSTOM_ID_FIELDS = ("custom_id", "id")
CUSTOM_ID_MAX_LENGTH = 255


# --- create ---------------------------------------------------------------------------


def _positive_int(value: Any, what: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, bool) or value is None:
                raise ValueError
            value = int(str(value).strip())
        except ValueError:
            raise JobInputError(f"{what} must be a whole number, got {value!r}") from None
    if value < 1:
        raise JobInputError(f"{what} must be at least 1, got {value}")
    return int(value)


def _custom_id(fields: Mapping[str, Any], where: str) -> str:
    for key in CUSTOM_ID_FIELDS:
        value = fields.get(key)
        if value is None or value == "":
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(text) > CUSTOM_ID_MAX_LENGTH:
            raise JobInputError(f"{where}: {key} is {len(text)} characters long, over {CUSTOM_ID_MAX_LENGTH}")
        return text
    return ""


def job_create(
    *,
    name: str,
    template: str,
    model: str,
    owner: Any = None,
    system: str = "",
    max_tokens: int = 1024,
    stop_sequences: Sequence[str] = (),
    concurrency: int | None = None,
    rate_limit_rpm: int | None = None,
    texts: str | Sequence[str] | None = None,
    records: Sequence[Mapping[str, Any] | str] | None = None,
    file_name: str | None = None,
    file_data: bytes | IO[bytes] | None = None,
    column: str | None = None,
    field: str | None = None,
    fmt: str | None = None,
    schema: Mapping[str, Any] | str | None = None,
    webhook_url: str = "",
    start: Callable[[BatchJob], Any] | None = None,
    head_start: bool = False,
    wait: bool = True,
) -> BatchJob:
    """Create a draft job and its items from exactly one source.

    ``start`` (e.g. run the job, or ``job_enqueue`` it) is called with the job as soon
    as its first batch of items is committed, while the rest is inserted on a thread
    (``filling``: the job's item set stays open until the last batch, so no runner
    finishes it early; a cancel stops both; a submitter killed mid-insert leaves a job
    that is cancelled with the reason). ``job_create`` returns once both are done.
    Inside a transaction, all items are inserted first, then ``start`` is called.
    ``head_start``: the rest is inserted once a runner (this process's, or a worker's for a
    queued job) has claimed the first items, or a few seconds have passed (``filling.fill``). ``wait=False`` (the web form and the API,
    whose ``start`` enqueues the job): return as soon as ``start`` has, the rest of the
    items still being inserted by this process (``filling.join_fills``).
    Quotas are checked on the whole input's count before anything is written.

    ``schema`` (a JSON Schema object, or its JSON text) makes it an extraction job:
    every answer must be JSON matching it (``structured``). ``webhook_url`` gets a
    signed ``job.finished`` event when the job ends (``webhooks``); private and
    loopback addresses are refused unless ``LLMJOBS_WEBHOOK_ALLOW_PRIVATE``.

    Sources: ``texts`` (a list of texts, or one pasted string split into
    lines), ``records`` (dicts of fields), or a file (``file_name`` +
    ``file_data`` as bytes or a binary file; ``column``/``field`` choose the
    text, ``fmt`` overrides the extension). See ``parsing`` for the rules.

    Everything is validated before anything is written: the settings, the
    template's syntax, and every item (size, fields the template needs,
    custom id). Then the job and its items are written in one transaction
    (``filling.insert_items``: COPY on PostgreSQL, batched INSERTs elsewhere), or with
    ``start`` one per batch. Any problem raises ``JobInputError`` and creates nothing. A ``custom_id`` (else ``id``) field becomes the item's
    custom id.
    """
    # The job's own settings first: cheap, and nothing is read yet.
    name = (name or "").strip()
    if not name:
        name = (file_name or "").strip() or "untitled job"
    if len(name) > 200:
        raise JobInputError(f"the name is {len(name)} characters long, over 200")
    model = (model or "").strip()
    if not model:
        raise JobInputError("choose a model")
    if len(model) > 100:
        raise JobInputError("the model name is over 100 characters long")
    max_tokens = _positive_int(max_tokens, "max_tokens") or 1
    concurrency = _positive_int(concurrency, "concurrency", allow_none=True)
    rate_limit_rpm = _positive_int(rate_limit_rpm, "rate_limit_rpm", allow_none=True)
    if isinstance(stop_sequences, str):
        stop_sequences = [stop_sequences]
    stops = list(stop_sequences or ())
    for stop in stops:
        if not isinstance(stop, str) or not stop.strip():
            raise JobInputError(f"a stop sequence must be text that is not only whitespace, got {stop!r}")
    template = template or ""
    compiled = compile_template(template)  # syntax errors before reading any data
    output_schema = check_schema(schema)
    webhook_url = (webhook_url or "").strip()
    if webhook_url:
        from .webhooks import check_webhook_url

        check_webhook_url(webhook_url)

    sources = [s for s in (texts, records, file_data) if s is not None]
    if len(sources) != 1:
        raise JobInputError("give exactly one source of items: texts, records or a file")
    located: Iterable[tuple[str, dict[str, Any]]]
    if texts is not None:
        located = iter_texts(texts)
    elif records is not None:
        located = iter_records(records)
    else:
        assert file_data is not None
        located = iter_file(name=file_name, data=file_data, column=column, field=field, fmt=fmt)

    # Parse and check every item before writing anything.
    rows: list[tuple[dict[str, Any], str]] = []
    input_fields: dict[str, None] = {}  # column names in the order they came in
    for where, fields in located:
        compiled.check(fields, where)
        rows.append((fields, _custom_id(fields, where)))
        if len(input_fields) < 1000:
            input_fields.update(dict.fromkeys(fields))
    if not rows:
        what = "the file has" if file_data is not None else "the input has"
        raise JobInputError(f"no items: {what} no data, only blank lines")
    check_quota(owner, items=len(rows))  # per-user quotas (issue 12)

    create = partial(
        BatchJob.objects.create,
        owner=owner,
        name=name,
        model=model,
        system_prompt=system or "",
        prompt_template=template,
        max_tokens=max_tokens,
        stop_sequences=stops,
        concurrency=concurrency,
        rate_limit_rpm=rate_limit_rpm,
        output_schema_json=json.dumps(output_schema, ensure_ascii=False) if output_schema else "",
        input_fields=list(input_fields),
        webhook_url=webhook_url,
    )
    if start is not None and not transaction.get_connection().in_atomic_block:
        return fill(create, rows, start, head_start=head_start, wait=wait)
    with transaction.atomic():
        job = create(total=len(rows))
        insert_items(job.pk, rows)
    if start is not None:  # inside the caller's transaction nobody sees a first batch early: all, then start
        start(job)
    return job


# --- enqueue / cancel / retry ------------------------------------------------------------


def _locked(job: BatchJob) -> BatchJob:
    """The job's current row, locked until the transaction ends (PostgreSQL)."""
    return BatchJob.objects.select_for_update().get(pk=job.pk)


def _copy_state(source: BatchJob, target: BatchJob) -> None:
    for field in ("status", "task_id", "started_at", "finished_at", "last_error", *BatchJob.COUNTER_FIELDS):
        setattr(target, field, getattr(source, field))


def job_enqueue(*, job: BatchJob, force: bool = False) -> BatchJob:
    """Queue ``job`` for a worker (``process_job_task`` on Django's task framework).

    The task is enqueued with ``transaction.on_commit``, so a worker never sees
    a job the database doesn't have yet, and its result id is stored in
    ``job.task_id``. A queued job is left as it is (idempotent). A running job
    is refused unless ``force`` (used by recovery, when its runner is known to
    be dead). A finished job needs pending items first (``job_retry``).
    If the backend refuses the task, the job goes back to draft with the
    reason in ``last_error`` and ``JobStateError`` is raised.
    """
    with transaction.atomic():
        current = _locked(job)
        if current.status == BatchJob.Status.QUEUED and not force:
            _copy_state(current, job)
            return job
        if current.status == BatchJob.Status.RUNNING and not force:
            raise JobStateError(f"job {job.pk} is already running")
        if not current.items.claimable().exists():
            raise JobStateError(
                f"job {job.pk} has no pending items ({current.get_status_display().lower()}); "
                "retry its failed items first"
            )
        current.mark_queued(task_id="")
        _copy_state(current, job)
        job_id = current.pk
        transaction.on_commit(lambda: _enqueue_task(job_id, job))
    return job


def _enqueue_task(job_id: int, job: BatchJob) -> None:
    from .tasks import process_job_task

    try:
        result = process_job_task.enqueue(job_id)
        # More runners for the same job, each on a free worker (issue 12; ``llmjobs.workers``).
        for _ in range(llmjobs_settings().runners_per_job - 1):
            process_job_task.enqueue(job_id)
    except Exception as exc:
        logger.exception("could not enqueue job %s", job_id)
        error = f"could not enqueue the job: {type(exc).__name__}: {exc}"
        BatchJob.objects.filter(pk=job_id).unqueue(error)
        job.status, job.last_error = BatchJob.Status.DRAFT, error
        raise JobStateError(error) from exc
    task_id = str(result.id)
    BatchJob.objects.filter(pk=job_id).update(task_id=task_id)
    job.task_id = task_id


def job_cancel(*, job: BatchJob) -> BatchJob:
    """Cancel ``job``: its pending items (and running ones whose lease expired: their
    runner is gone) are cancelled in one UPDATE and the job is marked cancelled.
    Items in flight at a live runner are that runner's: it watches the job's
    status, stores the answers already on their way (paid for) as succeeded and
    cancels the rest. Cancelling a cancelled job again cancels what a dead
    runner left behind once its leases expired (``recover_stalled_jobs`` does
    too); a finished job is refused."""
    with transaction.atomic():
        current = _locked(job)
        if current.status == BatchJob.Status.CANCELLED:
            if current.items.cancel_pending():  # a dead runner's items whose lease has expired since
                current.refresh_counters()
            _copy_state(current, job)
            return job
        if current.is_finished:
            raise JobStateError(f"job {job.pk} has already finished ({current.get_status_display().lower()})")
        if current.filling_until is not None:  # items still being inserted: their submitter stops (``filling``)
            current.filling_until = None
            current.save(update_fields=["filling_until"])
        current.items.cancel_pending()
        current.mark_cancelled()
        current.refresh_counters()
        _copy_state(current, job)
    return job


def job_retry(*, job: BatchJob, enqueue: bool = False) -> int:
    """Put the job's failed and cancelled items back to pending; returns how many.

    The rule is the same on every surface (``Item.RETRYABLE_STATUSES``): a
    cancelled item was never answered, so retrying it pays for it once, like
    running it would have; succeeded items are never touched. Results and
    errors are cleared; ``attempts`` is kept. A finished or cancelled job goes
    back to draft, ready for ``job_enqueue``; a queued job stays queued and its
    task picks the items up. Refused while the job is running.

    With ``enqueue``, a job that got items back is then queued for a worker
    (``job_enqueue``); if that fails, ``JobStateError`` says how many items
    were reset (they stay pending, ready for the next run).
    """
    with transaction.atomic():
        current = _locked(job)
        if current.status == BatchJob.Status.RUNNING:
            raise JobStateError(f"job {job.pk} is running: wait for it to finish, or cancel it")
        count = current.items.reset_for_retry()
        if count and current.status != BatchJob.Status.QUEUED:
            current.mark_draft()
        current.refresh_counters()
        _copy_state(current, job)
    if enqueue and count:
        try:
            job_enqueue(job=job)
        except JobStateError as exc:
            raise JobStateError(f"{count} item(s) reset, but: {exc}") from exc
    return count


def recover_stalled_jobs(*, now: datetime.datetime | None = None) -> list[BatchJob]:
    """Re-enqueue running jobs whose runner died, and return them.

    django-tasks-db has no heartbeat: a worker killed with -9 leaves its task
    RUNNING forever. A live runner keeps a lease on the items it holds and
    renews it every few seconds, so a running job none of whose items holds a
    live lease, with items left to do, has lost its runner. Safe to run from
    every worker at start and from cron: a job is enqueued once (the row lock
    in ``job_enqueue`` serializes concurrent recoveries).
    """
    now = now or timezone.now()
    # A job whose submitter died while inserting its items: cancelled, with the reason (``filling``).
    for job_id, until in BatchJob.objects.filter(filling_until__lt=now).values_list("pk", "filling_until"):
        cut_short(job_id, expired=until)
    live = Item.objects.live(now)
    # A cancelled job whose runner died with items in flight: cancel them once their lease expired.
    for job in BatchJob.objects.filter(status=BatchJob.Status.CANCELLED, items__status=Item.Status.RUNNING).distinct():
        if job.items.cancel_pending(now):
            job.refresh_counters()
    candidates = (
        BatchJob.objects.filter(status=BatchJob.Status.RUNNING).exclude(pk__in=live.values("job_id")).order_by("pk")
    )
    recovered = []
    for job in candidates:
        if not job.items.claimable(now).exists():
            continue
        try:
            job_enqueue(job=job, force=True)
        except JobStateError:
            logger.warning("could not recover job %s", job.pk, exc_info=True)
            continue
        recovered.append(job)
    return recovered


# --- run / preview ----------------------------------------------------------------------


def job_run(*, job: BatchJob, runner: JobRunner | None = None, **options: Any) -> RunReport:
    """Run ``job`` now, in this process, until its items are done (or it is stopped).

    Sync code's way into the async runner (``async_to_sync``, never
    ``asyncio.run`` inside a loop). ``options`` go to ``JobRunner``; a caller
    that needs to stop the run (``process_job``'s Ctrl-C) builds the
    ``JobRunner`` itself and passes it as ``runner``.
    """
    from .runner import JobRunner  # the runner pulls in the engine and the SDK: import on use

    runner = runner or JobRunner(job.pk, **options)
    return async_to_sync(runner.run)()


def job_preview(*, job: BatchJob, count: int = PREVIEW_COUNT) -> list[tuple[Item, Outcome]]:
    """Run the first ``count`` pending items of ``job`` now; return them with their outcomes.

    For checking a prompt before paying for the whole job: the answers are
    kept on the items (never paid for twice) and the job's status is left as
    it was. ``preview_lines`` turns the result into text for people.
    """
    from . import runner  # import on use (the engine and the SDK)

    return runner.preview_job(job.pk, count=count)


def preview_lines(results: Sequence[tuple[Item, Outcome]]) -> list[str]:
    """One plain-text line per previewed item (escape it wherever it is shown)."""
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
