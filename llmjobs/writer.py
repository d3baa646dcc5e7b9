"""The runner's writer: outcomes -> item rows, and the job's counters.

Every database call of a run goes through :class:`~llmjobs.db_retry.DbRetry` (re-exported
here) on the runner's one writer thread. Writes are transactions of idempotent row
updates, so a retried write never counts an outcome twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, cast

from django.db import connection, transaction
from django.utils import timezone

from .costs import price_answer
from .db_retry import DatabaseUnavailable, DbRetry, one_line
from .engine import Outcome
from .models import BatchJob, Item

__all__ = [
    "FINAL_DB_BUDGET",
    "ITEM_FIELDS",
    "DatabaseUnavailable",
    "DbRetry",
    "OutcomeRows",
    "fail_items",
    "one_line",
    "outcome_rows",
    "update_items",
]

FINAL_DB_BUDGET = 5.0  # seconds: retries of the last flush and release of a run that stops

ITEM_FIELDS = [*Item.RESULT_FIELDS, *Item.COST_FIELDS, "lease_expires_at", "finished_at"]


@dataclass(slots=True)
class OutcomeRows:
    """One batch of outcomes as item rows to update, ids to release, counter deltas.

    ``values`` holds one tuple per item: the values of ``ITEM_FIELDS`` in order, then the
    item's id (the parameters of :func:`update_items`' one ``UPDATE``)."""

    values: list[tuple[Any, ...]] = field(default_factory=list)
    released: list[int] = field(default_factory=list)
    counters: dict[str, Any] = field(default_factory=dict)

    @property
    def items(self) -> list[Item]:
        """The rows as unsaved ``Item`` objects (for ``bulk_update``; the runner uses ``values``)."""
        return [Item(pk=row[-1], **dict(zip(ITEM_FIELDS, row, strict=False))) for row in self.values]


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else max(0, round(seconds * 1000))


def outcome_rows(
    batch: list[Outcome], *, cancel: bool, now: dt.datetime | None = None, model: str = "", batch_price: bool = False
) -> OutcomeRows:
    """Item rows for ``batch``. A succeeded or failed outcome is stored as such (an answer
    that arrived is kept whatever happened since); a cancelled one is released back to
    pending, or stored as cancelled when the job itself was cancelled (``cancel``)."""
    now = now or timezone.now()
    rows = OutcomeRows()
    values = rows.values
    succeeded = failed = cancelled = tokens_in = tokens_out = cache_write = cache_read = 0
    cost = saved = Decimal(0)
    for o in batch:
        key = cast(int, o.key)  # the runner's calls are keyed by item id
        status = o.status
        if status == "cancelled" and not cancel:
            rows.released.append(key)  # interrupted, not cancelled: back to pending
            continue
        usage = o.usage or {}
        priced = price_answer(model, o.usage, batch=batch_price)  # cost (issue 14): None when unknown
        i_tok = usage.get("input_tokens")
        o_tok = usage.get("output_tokens")
        c_write = usage.get("cache_creation_input_tokens")
        c_read = usage.get("cache_read_input_tokens")
        # in ITEM_FIELDS order: RESULT_FIELDS, COST_FIELDS, lease_expires_at, finished_at; then the id
        values.append(
            (
                status,
                o.text or "",
                o.stop_reason or "",
                (o.error_type or "")[:64],
                o.error_message or "",
                o.attempts,
                i_tok,
                o_tok,
                _ms(o.latency),
                _ms(o.ttft),
                c_write,
                c_read,
                priced.cost,
                None,
                now,
                key,
            )
        )
        if status == "succeeded":
            succeeded += 1
        elif status == "failed":
            failed += 1
        else:
            cancelled += 1
        tokens_in += i_tok or 0  # as the API reports it (cache excluded)
        tokens_out += o_tok or 0
        cache_write += c_write or 0
        cache_read += c_read or 0
        if priced.cost:
            cost += priced.cost
        if priced.saved:
            saved += priced.saved
    rows.counters = {
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": cancelled,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "cost_usd": cost,
        "saved_usd": saved,
    }
    return rows


def _update_sql() -> tuple[str, list[int]]:
    """The one ``UPDATE`` of :func:`update_items` and the indexes of the values to adapt."""
    qn = connection.ops.quote_name
    fields = [Item._meta.get_field(name) for name in ITEM_FIELDS]
    sets = ", ".join(f"{qn(str(f.column))} = %s" for f in fields)  # type: ignore[union-attr]
    pk = str(Item._meta.pk.column)
    sql = f"UPDATE {qn(Item._meta.db_table)} SET {sets} WHERE {qn(pk)} = %s"
    adapt = [i for i, f in enumerate(fields) if f.get_internal_type() in ("DecimalField", "DateTimeField")]
    return sql, adapt


def update_items(values: list[tuple[Any, ...]]) -> None:
    """Store outcome rows (``OutcomeRows.values``) with one ``executemany`` UPDATE: no model
    instances, no ``CASE WHEN`` expression tree (``bulk_update`` spent most of the runner's
    CPU building those). Decimals and datetimes are adapted the way the ORM would."""
    if not values:
        return
    sql, adapt = _update_sql()
    fields = [Item._meta.get_field(ITEM_FIELDS[i]) for i in adapt]
    params: list[list[Any]] = []
    for row in values:
        out = list(row)
        for i, f in zip(adapt, fields, strict=True):
            if out[i] is not None:
                out[i] = f.get_db_prep_save(out[i], connection)  # type: ignore[union-attr]
        params.append(out)
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def fail_items(job_id: int, failures: list[tuple[int, str]], *, error_type: str) -> None:
    """Fail items of job ``job_id`` for reasons of their own (``(pk, reason)``), counters too."""
    now = timezone.now()
    with transaction.atomic():
        for pk, reason in failures:
            Item.objects.filter(pk=pk).fail(error_type=error_type, error_message=reason, now=now)
        BatchJob.objects.filter(pk=job_id).add_to_counters(failed=len(failures))
