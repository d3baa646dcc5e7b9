"""Reading a job out: its summary (the REST API's and the webhook's) and its exports.

- ``job_summary``: a job as plain JSON data (``GET /api/v1/jobs/{id}``, webhooks).
- ``job_export`` / ``job_export_lines`` / ``job_export_response``: results in input
  order, streamed, as CSV or JSONL (one table of formats, ``EXPORT_FORMATS``).
  CSV: the input's columns split as they came in, one column per output field
  (nested fields with dots), then status, error, stop_reason, tokens and cost;
  formula-like cells are neutralised. The download is named after the job.
- ``job_results_lines``: the JSONL lines for an async streaming response.

Re-exported by ``llmjobs.jobs``, where the services live.
"""

from __future__ import annotations

import csv
import datetime
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from decimal import Decimal
from typing import Any, Literal, TextIO

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse

from .costs import job_cost
from .exceptions import JobInputError
from .models import BatchJob, Item, estimate_cost
from .security import spreadsheet_safe
from .structured import flatten, parse_output, schema_columns

__all__ = [
    "CSV_TAIL_COLUMNS",
    "EXPORT_FIELDS",
    "EXPORT_FORMATS",
    "ExportFormat",
    "export_columns",
    "export_filename",
    "export_jsonl_line",
    "job_estimate",
    "job_export",
    "job_export_lines",
    "job_export_response",
    "job_export_rows",
    "job_results_lines",
    "job_summary",
]

EXPORT_CHUNK_SIZE = 2000
EXPORT_LINES_PER_HOP = 500  # lines read per trip to the ORM thread when streaming under ASGI


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
        "filling": job.filling_until is not None,  # items still being inserted; ``total`` counts them all
        "counts": {
            "succeeded": job.succeeded_count,
            "failed": job.failed_count,
            "cancelled": job.cancelled_count,
            "remaining": job.remaining_count,
        },
        "progress": round(job.progress, 4),
        "mode": job.mode,
        "usage": {
            "input_tokens": job.input_tokens,
            "output_tokens": job.output_tokens,
            "cache_creation_input_tokens": job.cache_creation_input_tokens,
            "cache_read_input_tokens": job.cache_read_input_tokens,
        },
        "cost_usd": _money(job_cost(job)),
        "estimate_usd": str(job_estimate(job)),
        "estimated_cost_usd": _money(job.estimated_cost_usd),
        "budget_usd": _money(job.budget_usd),
        "saved_usd": _money(job.saved_usd if job_cost(job) is not None else None),
        "has_schema": bool(job.output_schema),
        "last_error": job.last_error,
        "advice": job.advice,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def _money(value: Any) -> str:
    """USD as a string; "unknown" when the model's price is unknown (never $0)."""
    return "unknown" if value is None else str(value)


def job_estimate(job: BatchJob) -> Any:
    """Estimated USD for the whole job: the cost so far, extrapolated from the items done
    (before any is done, from the prompt sizes and ``max_tokens``)."""
    if job.estimated_cost_usd is not None:
        return job.estimated_cost_usd
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
    return spreadsheet_safe(value)


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
