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
  input order, streamed, as CSV or JSONL (one table of formats, ``EXPORT_FORMATS``).
- ``recover_stalled_jobs``: re-enqueue running jobs whose runner died.

Errors are ``JobInputError`` (bad input) and ``JobStateError`` (not now), from
``llmjobs.exceptions``.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any, Literal, TextIO

from asgiref.sync import async_to_sync, sync_to_async
from django.db import transaction
from django.http import StreamingHttpResponse
from django.utils import timezone
from django.utils.text import Truncator

from .exceptions import JobInputError, JobStateError
from .models import BatchJob, Item
from .parsing import iter_file, iter_records, iter_texts
from .prompts import compile_template
from .structured import check_schema, flatten, parse_output, schema_columns

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

BULK_BATCH_SIZE = 2000
EXPORT_CHUNK_SIZE = 2000
EXPORT_LINES_PER_HOP = 500  # lines read per trip to the ORM thread when streaming an export under ASGI
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
) -> BatchJob:
    """Create a draft job and its items from exactly one source.

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
    (``_insert_items``: COPY on PostgreSQL, batched INSERTs elsewhere). Any problem raises ``JobInputError`` and
    creates nothing. A ``custom_id`` (else ``id``) field becomes the item's
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

    with transaction.atomic():
        job = BatchJob.objects.create(
            owner=owner,
            name=name,
            model=model,
            system_prompt=system or "",
            prompt_template=template,
            max_tokens=max_tokens,
            stop_sequences=stops,
            concurrency=concurrency,
            rate_limit_rpm=rate_limit_rpm,
            total=len(rows),
            output_schema=output_schema,
            input_fields=list(input_fields),
            webhook_url=webhook_url,
        )
        _insert_items(job, rows)
    return job


def _insert_items(job: BatchJob, rows: Sequence[tuple[dict[str, Any], str]]) -> None:
    """Insert new pending items: COPY on PostgreSQL, else ``executemany`` in batches.

    These are the rows ``Item.objects.bulk_create`` would write, several times
    faster (100,000 items of ~1 KB: ~2.5 s instead of ~11 s on SQLite, ~2 s
    instead of ~8.5 s on PostgreSQL): bulk_create spends its time compiling
    SQL per value, not in the database. Columns and defaults come from the
    model's own fields, so a field added later with a default keeps working;
    values go through each field's ``get_db_prep_save`` (JSON for ``input``).
    """
    connection = transaction.get_connection(Item.objects.db)
    fields = [f for f in Item._meta.concrete_fields if not f.primary_key]
    varying = {"job", "position", "input", "custom_id"}
    constant = {f.name: f.get_db_prep_save(f.get_default(), connection) for f in fields if f.name not in varying}
    input_field = Item._meta.get_field("input")
    quote = connection.ops.quote_name
    table = quote(Item._meta.db_table)
    columns = ", ".join(quote(f.column) for f in fields)

    def row_params(position: int, item_fields: dict[str, Any], custom_id: str) -> list[Any]:
        values = {
            "job": job.pk,
            "position": position,
            "input": input_field.get_db_prep_save(item_fields, connection),
            "custom_id": custom_id,
        }
        return [values[f.name] if f.name in values else constant[f.name] for f in fields]

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and hasattr(cursor.cursor, "copy"):  # psycopg 3
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for position, (item_fields, custom_id) in enumerate(rows):
                    copy.write_row(row_params(position, item_fields, custom_id))
            return
        sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"
        for start in range(0, len(rows), BULK_BATCH_SIZE):
            cursor.executemany(
                sql,
                [
                    row_params(position, item_fields, custom_id)
                    for position, (item_fields, custom_id) in enumerate(rows[start : start + BULK_BATCH_SIZE], start)
                ],
            )


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
    """Cancel ``job``: its pending items (and running ones whose lease expired) are
    cancelled in one UPDATE and the job is marked cancelled. Items in flight at
    a live runner finish or are cancelled by that runner, which watches the
    job's status. Cancelling a cancelled job does nothing; a finished one is
    refused."""
    with transaction.atomic():
        current = _locked(job)
        if current.status == BatchJob.Status.CANCELLED:
            _copy_state(current, job)
            return job
        if current.is_finished:
            raise JobStateError(f"job {job.pk} has already finished ({current.get_status_display().lower()})")
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
    live = Item.objects.live(now)
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


# --- summary (the REST API's job, and the webhook's) ---------------------------------------


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_summary(job: BatchJob) -> dict[str, Any]:
    """A job as plain JSON data: what ``GET /api/v1/jobs/{id}`` answers and a webhook carries."""
    return {
        "id": job.pk,
        "name": job.name,
        "status": job.status,
        "model": job.model,
        "total": job.total,
        "counts": {
            "succeeded": job.succeeded_count,
            "failed": job.failed_count,
            "cancelled": job.cancelled_count,
            "remaining": job.remaining_count,
        },
        "progress": round(job.progress, 4),
        "usage": {"input_tokens": job.input_tokens, "output_tokens": job.output_tokens},
        "cost_usd": str(job.cost_estimate),
        "estimate_usd": str(job_estimate(job)),
        "has_schema": bool(job.output_schema),
        "last_error": job.last_error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def job_estimate(job: BatchJob) -> Any:
    """Estimated USD for the whole job: the cost so far, extrapolated from the items done
    (before any is done, from the prompt sizes and ``max_tokens``)."""
    from .models import estimate_cost

    done = job.succeeded_count + job.failed_count
    if done and job.total:
        return (job.cost_estimate * job.total / done).quantize(Decimal("0.000001"))
    return estimate_cost(job.model, 0, job.max_tokens * job.total)


# --- export ---------------------------------------------------------------------------

# What is read of each item (in input order) to build the export.
EXPORT_FIELDS = (
    "position",
    "custom_id",
    "input",
    "status",
    "output",
    "stop_reason",
    "error_type",
    "error_message",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "ttft_ms",
    "attempts",
)
# The CSV's last columns, after the input's and the output's.
CSV_TAIL_COLUMNS = ("status", "error", "stop_reason", "input_tokens", "output_tokens", "cost_usd")
# TODO(lead): use llmjobs.security.spreadsheet_safe once the security branch is merged (same rule).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _spreadsheet_safe(value: Any) -> Any:
    """Text a spreadsheet would run as a formula gets a leading ``'`` (OWASP CSV injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def job_export_rows(job: BatchJob) -> Iterator[dict[str, Any]]:
    """Every item of ``job`` as a dict of ``EXPORT_FIELDS``, in input order, streamed."""
    queryset = Item.objects.filter(job_id=job.pk).order_by("position").values_list(*EXPORT_FIELDS)
    for values in queryset.iterator(chunk_size=EXPORT_CHUNK_SIZE):
        yield dict(zip(EXPORT_FIELDS, values))


class _Echo:
    """A file-like object whose write returns what it was given (for csv.writer)."""

    def write(self, value: str) -> str:
        return value


ExportFormat = Literal["csv", "jsonl"]

# format -> Content-Type of its download
EXPORT_FORMATS: dict[str, str] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson; charset=utf-8",
}


def _check_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise JobInputError(f"unknown export format {fmt!r}: use csv or jsonl")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    return _spreadsheet_safe(value)


def _error_text(row: Mapping[str, Any]) -> str:
    kind, message = row.get("error_type") or "", row.get("error_message") or ""
    return f"{kind}: {message}" if kind and message else kind or message


def export_columns(job: BatchJob) -> tuple[list[str], list[str], list[str]]:
    """The CSV's columns: (input columns, output columns, all columns in order).

    Input columns as they came in; then one column per output field (nested fields
    with dots; ``output`` for a free-text job; a field named like an input column
    becomes ``output.<name>``); then ``CSV_TAIL_COLUMNS``.
    """
    inputs = [str(name) for name in job.input_fields or []]
    if not inputs:
        first = Item.objects.filter(job_id=job.pk).order_by("position").values_list("input", flat=True).first()
        inputs = list(first) if isinstance(first, dict) else ["text"]
    outputs = schema_columns(job.output_schema) if job.output_schema else ["output"]
    taken = set(inputs)
    named = [f"output.{c}" if c in taken else c for c in outputs]
    return inputs, outputs, [*inputs, *named, *CSV_TAIL_COLUMNS]


def _csv_lines(job: BatchJob) -> Iterator[str]:
    from .models import estimate_cost

    writer = csv.writer(_Echo())
    inputs, outputs, columns = export_columns(job)
    yield writer.writerow(columns)
    structured = bool(job.output_schema)
    for row in job_export_rows(job):
        fields = row["input"] if isinstance(row["input"], dict) else {"text": row["input"]}
        cells = [_cell(fields.get(name)) for name in inputs]
        if structured:
            flat = flatten(parse_output(row["output"])) if row["status"] == Item.Status.SUCCEEDED else {}
            cells.extend(_cell(flat.get(name)) for name in outputs)
        else:
            cells.append(_cell(row["output"]))
        tokens_in, tokens_out = row["input_tokens"], row["output_tokens"]
        cost = estimate_cost(job.model, tokens_in or 0, tokens_out or 0) if tokens_in or tokens_out else None
        cells.extend(
            _cell(v) for v in (row["status"], _error_text(row), row["stop_reason"], tokens_in, tokens_out, cost)
        )
        yield writer.writerow(cells)


def export_jsonl_line(job: BatchJob, row: Mapping[str, Any]) -> str:
    """One item (a dict of ``EXPORT_FIELDS``) as a JSONL line (see ``job_export_lines``)."""
    record: dict[str, Any] = {"index": row["position"], "input": row["input"]}
    value = parse_output(row["output"]) if job.output_schema and row["status"] == Item.Status.SUCCEEDED else None
    if isinstance(value, dict):
        record["output"] = value
    else:
        record["text"] = row["output"] or None
    record["status"] = row["status"]
    record["error"] = (
        {"type": row["error_type"], "message": row["error_message"]}
        if row["error_type"] or row["error_message"]
        else None
    )
    record["stop_reason"] = row["stop_reason"] or None
    record["usage"] = {"input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"]}
    record["attempts"] = row["attempts"]
    return json.dumps(record, ensure_ascii=False) + "\n"


def job_export_lines(job: BatchJob, fmt: ExportFormat, *, status: str | None = None) -> Iterator[str]:
    """The export as text lines (CSV with a header row, or JSONL), for streaming responses.

    CSV: ``export_columns``. JSONL: ``{"index", "input", "output"`` (the parsed JSON of
    an extraction) ``or "text", "status", "error", "stop_reason", "usage", "attempts"}``.
    ``status`` keeps only the items in that state (JSONL only).
    """
    _check_format(fmt)
    if fmt == "csv":
        yield from _csv_lines(job)
        return
    for row in job_export_rows(job):
        if status is None or row["status"] == status:
            yield export_jsonl_line(job, row)


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


async def job_results_lines(job: BatchJob, *, status: str | None = None) -> AsyncIterator[str]:
    """The job's results as JSONL lines in input order, for an async streaming response:
    read in chunks on the ORM's thread, ``EXPORT_LINES_PER_HOP`` lines a trip (flat memory
    whatever the job's size); ``status`` keeps only items in that state (filtered in SQL)."""

    def lines() -> Iterator[str]:
        queryset = Item.objects.filter(job_id=job.pk)
        if status:
            queryset = queryset.filter(status=status)
        rows = queryset.order_by("position").values_list(*EXPORT_FIELDS)
        for values in rows.iterator(chunk_size=EXPORT_CHUNK_SIZE):
            yield export_jsonl_line(job, dict(zip(EXPORT_FIELDS, values)))

    async for chunk in _aiter_in_thread(lines()):
        yield chunk


def export_filename(job: BatchJob, fmt: str) -> str:
    """``<job name>.<fmt>``, reduced to safe characters (``job-<id>`` when nothing is left)."""
    stem = re.sub(r"[^\w.-]+", "-", job.name or "", flags=re.ASCII).strip("-._")[:100]
    return f"{stem or f'job-{job.pk}'}.{fmt}"


def job_export_response(*, job: BatchJob, fmt: ExportFormat, asgi: bool = False) -> StreamingHttpResponse:
    """The export as a streamed download named after the job: the admin's and the pages' one builder.

    Under ASGI (``asgi=True``) the content is an async iterator that reads the
    database in hops on the ORM's thread; a sync iterator would be buffered whole.
    """
    _check_format(fmt)
    lines = job_export_lines(job, fmt)
    content: Any = _aiter_in_thread(lines) if asgi else lines
    response = StreamingHttpResponse(content, content_type=EXPORT_FORMATS[fmt])
    response["Content-Disposition"] = f'attachment; filename="{export_filename(job, fmt)}"'
    return response


def job_export(*, job: BatchJob, fmt: ExportFormat, out: TextIO) -> int:
    """Write the export to ``out``; returns the number of items written.

    Open files for CSV with ``newline=""``.
    """
    _check_format(fmt)
    count = -1 if fmt == "csv" else 0
    for line in job_export_lines(job, fmt):
        out.write(line)
        count += 1
    return count
