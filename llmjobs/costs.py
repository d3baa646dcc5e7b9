"""Cost as a first-class feature (issue 14): pricing one answer, showing a job's money.

Prices come from genai-prices through :mod:`llmjobs.pricing`. A model the package
does not know has an *unknown* cost: ``None`` here, "unknown" on every surface,
never $0. Imports no engine; Django only for the job summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .budget import BudgetGuard, stopped_message
from .pricing import TokenUsage, model_known, price_usage

__all__ = [
    "ItemPrice",
    "apply_cost_options",
    "budget_guard",
    "fmt_usd",
    "job_cost",
    "job_summary",
    "price_answer",
    "stop_for_budget",
]


class ItemPrice:
    """What one answer cost, and what its cache reads saved (both ``None``: unknown)."""

    __slots__ = ("cost", "saved", "usage")

    def __init__(self, usage: TokenUsage, cost: Decimal | None, saved: Decimal | None) -> None:
        self.usage = usage
        self.cost = cost
        self.saved = saved


def price_answer(model: str, usage: Mapping[str, Any] | None, *, batch: bool = False) -> ItemPrice:
    """Price one API ``usage`` on ``model``; ``saved`` is what the cache reads saved against
    paying them as plain input."""
    tokens = TokenUsage.from_api(usage)
    if not usage or not model:
        return ItemPrice(tokens, None if usage else Decimal(0), Decimal(0))
    cost = price_usage(model, tokens, batch=batch)
    saved: Decimal | None = Decimal(0)
    if cost is not None and tokens.cache_read_tokens:
        uncached = TokenUsage(
            input_tokens=tokens.input_tokens + tokens.cache_read_tokens,
            output_tokens=tokens.output_tokens,
            cache_write_5m_tokens=tokens.cache_write_5m_tokens,
            cache_write_1h_tokens=tokens.cache_write_1h_tokens,
        )
        full = price_usage(model, uncached, batch=batch)
        saved = None if full is None else max(full - cost, Decimal(0))
    elif cost is None:
        saved = None
    return ItemPrice(tokens, cost, saved)


def apply_cost_options(job: Any, *, budget_usd: Any = None, dedup: bool | None = None, mode: str | None = None) -> Any:
    """Set a new job's cost options (budget, dedup, mode) and save them."""
    fields = []
    if budget_usd is not None:
        budget = Decimal(str(budget_usd))
        if budget <= 0:
            raise ValueError("the budget must be more than $0")
        job.budget_usd = budget
        fields.append("budget_usd")
    if dedup is not None:
        job.dedup = bool(dedup)
        fields.append("dedup")
    if mode:
        job.mode = mode
        fields.append("mode")
    if fields:
        job.save(update_fields=fields)
    return job


def budget_guard(job: Any) -> BudgetGuard | None:
    """The runner's budget guard for ``job`` (``None`` without a budget)."""
    if job.budget_usd is None:
        return None
    return BudgetGuard(
        model=job.model, budget=Decimal(job.budget_usd), spent=Decimal(job.cost_usd), batch=job.mode == "batch"
    )


def stop_for_budget(job: Any, guard: BudgetGuard) -> None:
    """End the run "stopped: budget reached": back to draft (resumable), the rest pending."""
    job.status = job.Status.DRAFT
    job.last_error = stopped_message(guard, job.remaining_count)
    job.save(update_fields=["status", "last_error"])


def fmt_usd(value: Decimal | None) -> str:
    """``$1.2345`` or ``unknown``."""
    if value is None:
        return "unknown"
    return f"${value:.4f}"


def job_cost(job: Any) -> Decimal | None:
    """The job's cost so far (``None`` when its model's price is unknown)."""
    if not model_known(job.model):
        return None
    return Decimal(job.cost_usd)


def job_summary(job: Any) -> dict[str, Any]:
    """The job's status, counts, tokens and money as plain JSON-ready data (``job_status --json``)."""
    from django.db.models import Count

    from .models import Item

    counts = dict.fromkeys(Item.Status.values, 0)
    for row in Item.objects.filter(job_id=job.pk).values("status").annotate(n=Count("pk")).order_by():
        counts[row["status"]] = row["n"]
    cost = job_cost(job)

    def money(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {
        "id": job.pk,
        "name": job.name,
        "status": job.status,
        "mode": job.mode,
        "model": job.model,
        "total": job.total,
        "counts": counts,
        "input_tokens": job.input_tokens,
        "output_tokens": job.output_tokens,
        "cache_creation_input_tokens": job.cache_creation_input_tokens,
        "cache_read_input_tokens": job.cache_read_input_tokens,
        "cost_usd": money(cost),
        "cost_known": cost is not None,
        "estimated_cost_usd": money(job.estimated_cost_usd),
        "budget_usd": money(job.budget_usd),
        "saved_usd": money(Decimal(job.saved_usd) if cost is not None else None),
        "last_error": job.last_error,
        "advice": job.advice,
    }
