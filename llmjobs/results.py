"""Reading results: one page of a job's items (keyset pagination), one item in full, costs.

The job page's results table asks ``results_page`` for one page at a time over
a JSON endpoint. Pages are keyset-paginated: the cursor is the last row's sort
value and position, so page 1,000 costs what page 1 costs (no ``OFFSET`` scan
that grows with the page number). Sorted by position (the default), a page is
one range scan of the ``(job, position)`` unique index, or of the
``(job, status, position)`` index with a status filter. Sorted by tokens or
cost (highest first), the job's rows are sorted by an expression.

Costs come from genai-prices (``llmjobs.pricing``); a reused answer (a clone's
unchanged item) costs 0 here; an unknown model's price is ``None`` ("unknown").
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import ExpressionWrapper, F, IntegerField, Q, QuerySet, TextField, Value
from django.db.models.functions import Cast, Coalesce
from django.urls import reverse
from django.utils.text import Truncator

from .models import BatchJob, Item
from .pricing import TokenUsage, model_known, price_totals, price_usage
from .prompts import build_params, compile_template

__all__ = [
    "PAGE_SIZE",
    "SORTS",
    "ResultsPage",
    "item_cost",
    "item_row",
    "job_cost_so_far",
    "rendered_request",
    "results_page",
    "structured_output",
    "template_parts",
]

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
SORTS = ("position", "tokens", "cost")
TEXT_CHARS = 300
OUTPUT_CHARS = 2000


def item_cost(job: BatchJob, item: Item) -> Decimal | None:
    """USD for this item's request (0 for a reused answer, ``None`` when the price is unknown)."""
    if item.reused:
        return Decimal(0)
    if item.input_tokens is None and item.output_tokens is None:
        return Decimal(0)
    if item.cost_usd is not None:  # priced when stored, cache tokens and batch discount included
        return item.cost_usd
    usage = TokenUsage(
        input_tokens=item.input_tokens or 0,
        output_tokens=item.output_tokens or 0,
        cache_write_5m_tokens=item.cache_creation_input_tokens or 0,
        cache_read_tokens=item.cache_read_input_tokens or 0,
    )
    return price_usage(job.model, usage, batch=job.mode == BatchJob.Mode.BATCH)


def job_cost_so_far(job: BatchJob) -> Decimal | None:
    """USD the job has spent so far, priced by genai-prices (``None``: unknown model)."""
    if job.cost_usd or not model_known(job.model):
        return job.cost_usd if model_known(job.model) else None
    requests = job.succeeded_count + job.failed_count
    if not job.input_tokens and not job.output_tokens:
        return Decimal(0)
    usage = TokenUsage(input_tokens=job.input_tokens, output_tokens=job.output_tokens)
    return price_totals(job.model, usage, requests=max(requests, 1))


def rendered_request(job: Any, fields: Any) -> dict[str, Any] | None:
    """The Messages API parameters for one item (``None`` if the template can't be filled)."""
    try:
        return build_params(job, fields if isinstance(fields, dict) else {"text": fields})
    except Exception:
        return None


def template_parts(template: str) -> list[tuple[bool, str]]:
    """``(is_placeholder, text)`` pieces of a template, for highlighting its placeholders."""
    try:
        return list(compile_template(template).parts)
    except Exception:
        return [(False, template)]


def structured_output(output: str) -> Any:
    """The output parsed as JSON when it is an object or a list of objects (shown as a table), else ``None``."""
    text = (output or "").strip()
    if not text or text[0] not in "[{":
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        return value
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    return None


# --- pages --------------------------------------------------------------------------


def _tokens_key() -> Any:
    return ExpressionWrapper(
        Coalesce(F("input_tokens"), 0) + Coalesce(F("output_tokens"), 0), output_field=IntegerField()
    )


def _cost_key(job: BatchJob) -> Any:
    per_in, per_out = _unit_prices(job.model)
    return ExpressionWrapper(
        (Coalesce(F("input_tokens"), 0) * Value(per_in) + Coalesce(F("output_tokens"), 0) * Value(per_out))
        * (1 - Cast(F("reused"), IntegerField())),
        output_field=IntegerField(),
    )


def _unit_prices(model: str) -> tuple[int, int]:
    """Integer weights proportional to the model's input and output token prices."""
    one_in = price_usage(model, TokenUsage(input_tokens=1_000_000))
    one_out = price_usage(model, TokenUsage(output_tokens=1_000_000))
    if one_in is None or one_out is None:
        return 1, 5  # unknown price: Claude's usual 1:5 ratio keeps the order meaningful
    return int(one_in * 1000), int(one_out * 1000)


def _encode(value: int, position: int) -> str:
    return base64.urlsafe_b64encode(f"{value}:{position}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[int, int] | None:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        value, position = raw.split(":")
        return int(value), int(position)
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class ResultsPage:
    rows: list[dict[str, Any]]
    next_cursor: str | None
    sort: str
    status: str
    q: str


def _filtered(job: BatchJob, *, status: str, q: str) -> QuerySet[Item]:
    items = Item.objects.filter(job_id=job.pk)
    if status:
        items = items.filter(status=status)
    if q:
        items = items.annotate(input_text=Cast("input", TextField())).filter(
            Q(output__icontains=q) | Q(input__text__icontains=q) | Q(input_text__icontains=q)
        )
    return items


def results_page(
    job: BatchJob,
    *,
    status: str = "",
    q: str = "",
    sort: str = "position",
    cursor: str = "",
    size: int = PAGE_SIZE,
) -> ResultsPage:
    """One page of ``job``'s items, filtered by ``status``, searched for ``q`` in input and
    output, sorted by ``sort`` (position ascending; tokens or cost highest first), after ``cursor``."""
    if status not in Item.Status.values:
        status = ""
    if sort not in SORTS:
        sort = "position"
    q = (q or "").strip()[:200]
    size = max(1, min(size, MAX_PAGE_SIZE))
    items = _filtered(job, status=status, q=q)
    after = _decode(cursor) if cursor else None
    if sort == "position":
        if after is not None:
            items = items.filter(position__gt=after[1])
        items = items.order_by("position")
        key_name = None
    else:
        key = _tokens_key() if sort == "tokens" else _cost_key(job)
        items = items.annotate(sort_key=key)
        if after is not None:
            value, position = after
            items = items.filter(Q(sort_key__lt=value) | Q(sort_key=value, position__gt=position))
        items = items.order_by("-sort_key", "position")
        key_name = "sort_key"
    rows = list(items[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = _encode(getattr(last, key_name) if key_name else 0, last.position)
    return ResultsPage(
        rows=[item_row(job, item) for item in rows], next_cursor=next_cursor, sort=sort, status=status, q=q
    )


def item_row(job: BatchJob, item: Item) -> dict[str, Any]:
    """One row of the results table, as JSON (text only: the page inserts it as text, never HTML)."""
    cost = item_cost(job, item)
    return {
        "position": item.position,
        "custom_id": item.custom_id,
        "text": Truncator(item.text).chars(TEXT_CHARS),
        "status": item.status,
        "status_label": item.get_status_display(),
        "output": Truncator(item.output or "").chars(OUTPUT_CHARS),
        "error_type": item.error_type,
        "error_message": Truncator(item.error_message or "").chars(TEXT_CHARS),
        "attempts": item.attempts,
        "input_tokens": item.input_tokens,
        "output_tokens": item.output_tokens,
        "latency_ms": item.latency_ms,
        "ttft_ms": item.ttft_ms,
        "cost": None if cost is None else str(cost),
        "reused": item.reused,
        "url": reverse("llmjobs:item_detail", args=[job.pk, item.position]),
    }
