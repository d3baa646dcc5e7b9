"""Per-user usage for staff (issue 12): active jobs, items and spend in the last 24 hours,
live runners on the shared workers, against the quota limits (``quotas``). Read only;
``BatchJobAdmin.get_urls`` serves it at ``admin/llmjobs/batchjob/usage/`` behind the
admin's own login and the "view batch job" permission."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from .conf import llmjobs_settings

__all__ = ["UserUsage", "usage_rows", "usage_view"]


@dataclass(frozen=True, slots=True)
class UserUsage:
    user: Any
    active_jobs: int
    items_today: int
    spend_today: Decimal
    runners: int  # live runners (workers busy on the user's jobs now)


def usage_rows(*, now: dt.datetime | None = None) -> list[UserUsage]:
    """One row per user who has jobs, busiest first (a handful of grouped queries)."""
    from .fairness import snapshot
    from .models import BatchJob
    from .quotas import paid_items

    now = now or timezone.now()
    since = now - dt.timedelta(days=1)
    jobs = (
        BatchJob.objects.exclude(owner=None)
        .values("owner_id")
        .annotate(
            active=Count("pk", filter=Q(status__in=BatchJob.ACTIVE_STATUSES)),
            submitted=Sum("total", filter=Q(created_at__gte=since)),
        )
        .order_by()
    )
    spend = dict(
        paid_items(since)
        .exclude(job__owner=None)
        .values("job__owner_id")
        .annotate(usd=Sum("cost_usd"))
        .order_by()
        .values_list("job__owner_id", "usd")
    )
    runners = Counter(r.owner for r in snapshot(now=now).runners)
    users = get_user_model().objects.in_bulk([row["owner_id"] for row in jobs])
    rows = [
        UserUsage(
            user=users[row["owner_id"]],
            active_jobs=row["active"],
            items_today=row["submitted"] or 0,
            spend_today=spend.get(row["owner_id"]) or Decimal(0),
            runners=runners[row["owner_id"]],
        )
        for row in jobs
        if row["owner_id"] in users
    ]
    return sorted(rows, key=lambda r: (-r.runners, -r.active_jobs, -r.spend_today, str(r.user)))


def usage_view(request: HttpRequest, admin_context: dict[str, Any]) -> HttpResponse:
    if not request.user.has_perm("llmjobs.view_batchjob"):
        raise PermissionDenied
    conf = llmjobs_settings()
    context = {
        **admin_context,
        "title": "Usage per user (last 24 hours)",
        "rows": usage_rows(),
        "limits": {
            "active_jobs": conf.quota_active_jobs or "no limit",
            "items_per_day": f"{conf.quota_items_per_day:,}" if conf.quota_items_per_day else "no limit",
            "spend_per_day": f"${conf.quota_spend_per_day:,.2f}" if conf.quota_spend_per_day > 0 else "no limit",
            "fair_slice": f"{conf.fair_slice:g} s" if conf.fair_slice > 0 else "off (first in, first out)",
        },
    }
    return TemplateResponse(request, "admin/llmjobs/usage.html", context)
