"""Per-user quotas, checked when a job is submitted (issue 12). Every surface (the
form, ``submit_job``, the API, the admin, clone) creates jobs through
``jobs.job_create``, which calls ``check_quota``: a quota exceeded raises
``JobInputError`` with a one-line reason, and nothing is created.

Settings (0 = no limit): ``LLMJOBS_QUOTA_ACTIVE_JOBS`` (most queued or running
jobs per user), ``LLMJOBS_QUOTA_ITEMS_PER_DAY`` (most items submitted per user
in the last 24 hours) and ``LLMJOBS_QUOTA_SPEND_PER_DAY`` (most USD the user's items
cost in the last 24 hours: the ``cost_usd`` of items finished since then, whatever
job they belong to; a job that was already admitted may go past it, the next one is
refused). Staff see each user's usage against these limits in the admin
(``admin_usage``). Jobs without an owner (``submit_job`` without ``--owner``)
are not counted against anyone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Sum
from django.utils import timezone

from .conf import llmjobs_settings
from .exceptions import JobInputError

__all__ = ["Usage", "check_quota", "paid_items", "spend_of", "usage_of"]


@dataclass(frozen=True, slots=True)
class Usage:
    active_jobs: int
    items_today: int  # items submitted in the last 24 hours
    spend_today: Decimal = Decimal(0)  # USD of the user's items finished in the last 24 hours


def paid_items(since: dt.datetime) -> Any:
    """Items finished since ``since`` with a known cost: what the spend quota and the admin's
    usage page add up (items with an unknown cost count 0)."""
    from .models import Item

    return Item.objects.filter(finished_at__gte=since, cost_usd__isnull=False)


def spend_of(owner: Any, *, now: dt.datetime | None = None) -> Decimal:
    """USD the user's items cost in the last 24 hours."""
    since = (now or timezone.now()) - dt.timedelta(days=1)
    return paid_items(since).filter(job__owner=owner).aggregate(usd=Sum("cost_usd"))["usd"] or Decimal(0)


def usage_of(owner: Any, *, now: dt.datetime | None = None, spend: bool = True) -> Usage:
    from .models import BatchJob

    now = now or timezone.now()
    jobs = BatchJob.objects.filter(owner=owner)
    active = jobs.active().count()
    items = jobs.filter(created_at__gte=now - dt.timedelta(days=1)).aggregate(n=Sum("total"))["n"] or 0
    usd = spend_of(owner, now=now) if spend else Decimal(0)
    return Usage(active_jobs=active, items_today=int(items), spend_today=usd)


def check_quota(owner: Any, *, items: int) -> None:
    """Refuse a new job of ``items`` items for ``owner`` past a quota (``JobInputError``)."""
    conf = llmjobs_settings()
    if owner is None or getattr(owner, "pk", None) is None:
        return
    if not (conf.quota_active_jobs or conf.quota_items_per_day or conf.quota_spend_per_day > 0):
        return
    usage = usage_of(owner, spend=conf.quota_spend_per_day > 0)
    if conf.quota_active_jobs and usage.active_jobs >= conf.quota_active_jobs:
        raise JobInputError(
            f"quota: you have {usage.active_jobs} job(s) queued or running, the most allowed is "
            f"{conf.quota_active_jobs}; wait for one to finish"
        )
    if conf.quota_items_per_day and usage.items_today + items > conf.quota_items_per_day:
        raise JobInputError(
            f"quota: {items:,} more item(s) would make {usage.items_today + items:,} in 24 hours, "
            f"over your limit of {conf.quota_items_per_day:,} items a day"
        )
    if conf.quota_spend_per_day > 0 and usage.spend_today >= Decimal(str(conf.quota_spend_per_day)):
        raise JobInputError(
            f"quota: your jobs cost ${usage.spend_today:,.2f} in the last 24 hours, the most allowed is "
            f"${conf.quota_spend_per_day:,.2f} a day; wait, or ask for a higher limit"
        )
