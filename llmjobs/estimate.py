"""What a job will cost, before it runs (issue 14).

Input tokens come from ``count_tokens`` (free, its own rate limit) on a sample of
the job's distinct rendered requests (all of them when few); output tokens from
``max_tokens``, or from the answers already stored (a preview's) once there are
some. Priced by genai-prices at the job's mode (batch: half price), counting each
distinct request once when dedup is on, and the shared system prompt's cache
writes and reads when automatic caching applies (``caching.plan``).

No Messages call is made: an estimate is free.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Avg, Q, Sum

from .conf import api_target
from .models import BatchJob, Item
from .pricing import TokenUsage, price_usage
from .prompts import build_params

__all__ = ["SAMPLE_SIZE", "Estimate", "job_estimate", "request_key"]

SAMPLE_SIZE = 20  # distinct requests counted; all of them when the job has no more
COUNT_FIELDS = ("model", "messages", "system", "tools", "tool_choice")


def request_key(params: Mapping[str, Any]) -> str:
    """A stable digest of a rendered request (dedup: identical digests share one answer)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Estimate:
    requests: int  # items
    unique_requests: int  # what will be sent (dedup)
    sampled: int
    input_tokens: int  # per request, on average (all input, cached part included)
    output_tokens: int  # per request
    output_from: str  # "max_tokens" or "observed"
    cache_prefix_tokens: int
    cost_usd: Decimal | None

    def line(self) -> str:
        cost = "unknown (no price for this model)" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        dedup = f" ({self.unique_requests} distinct)" if self.unique_requests != self.requests else ""
        return (
            f"estimate: {cost} for {self.requests} request(s){dedup}: ~{self.input_tokens} input tokens each "
            f"(count_tokens on {self.sampled}), ~{self.output_tokens} output tokens each ({self.output_from})"
        )


def _client() -> Any:
    import anthropic

    target = api_target()
    return anthropic.Anthropic(api_key=target.api_key, base_url=target.base_url, max_retries=2, timeout=30)


def job_estimate(
    *,
    job: BatchJob,
    client: Any = None,
    sample_size: int = SAMPLE_SIZE,
    save: bool = True,
    as_of: dt.datetime | None = None,
) -> Estimate:
    """Estimate ``job``'s cost (the items not yet answered) and store it in ``estimated_cost_usd``.

    ``as_of``: the estimate as it stood at that time, while the job may be running since
    (``submit_job --run`` estimates beside the run): items answered after it still count
    as to do, and only answers stored before it are observed."""
    from .caching import plan

    answered = Q(status=Item.Status.SUCCEEDED)
    if as_of is not None:
        answered &= Q(finished_at__lt=as_of) | Q(finished_at__isnull=True)
    items = Item.objects.filter(job_id=job.pk).exclude(answered)
    distinct: dict[str, dict[str, Any]] = {}
    requests = 0
    for fields in items.values_list("input", flat=True).iterator(chunk_size=2000):
        try:
            params = build_params(job, fields if isinstance(fields, dict) else {"text": fields})
        except Exception:  # fails at run time, costs nothing
            continue
        requests += 1
        key = request_key(params) if job.dedup else str(requests)
        distinct.setdefault(key, params)
    unique = len(distinct)
    rng = random.Random(job.pk)
    sample = list(distinct.values())
    if len(sample) > sample_size:
        sample = rng.sample(sample, sample_size)
    client = client or _client()
    counted = [
        int(client.messages.count_tokens(**{k: p[k] for k in COUNT_FIELDS if k in p}).input_tokens) for p in sample
    ]
    per_input = round(sum(counted) / len(counted)) if counted else 0
    answers = Item.objects.filter(job_id=job.pk, status=Item.Status.SUCCEEDED, output_tokens__isnull=False)
    if as_of is not None:
        answers = answers.exclude(finished_at__gte=as_of)
    observed = answers.aggregate(avg=Avg("output_tokens")).get("avg")
    per_output = round(observed) if observed is not None else job.max_tokens
    cache = plan(job, sample[0], client=client) if sample else None
    prefix = cache.prefix_tokens if cache is not None else 0
    batch = job.mode == BatchJob.Mode.BATCH
    spent = Decimal(job.cost_usd)
    if as_of is not None:  # what the items finished before then cost (the job's counter moves since)
        spent = Item.objects.filter(job_id=job.pk, finished_at__lt=as_of).aggregate(usd=Sum("cost_usd")).get(
            "usd"
        ) or Decimal(0)
    cost: Decimal | None = None
    if unique:
        plain = TokenUsage(input_tokens=per_input - prefix, output_tokens=per_output)
        unit = price_usage(job.model, plain, batch=batch)
        if unit is not None:
            cost = unit * unique
            if prefix:
                one_h = cache is not None and cache.ttl == "1h"
                write = TokenUsage(
                    cache_write_1h_tokens=prefix if one_h else 0, cache_write_5m_tokens=0 if one_h else prefix
                )
                read = TokenUsage(cache_read_tokens=prefix)
                cost += (price_usage(job.model, write, batch=batch) or 0) + (
                    price_usage(job.model, read, batch=batch) or 0
                ) * (unique - 1)
            cost = (cost + spent).quantize(Decimal("0.000001"))  # plus what was already spent
    else:
        cost = spent
    estimate = Estimate(
        requests=requests,
        unique_requests=unique,
        sampled=len(sample),
        input_tokens=per_input,
        output_tokens=per_output,
        output_from="observed" if observed is not None else "max_tokens",
        cache_prefix_tokens=prefix,
        cost_usd=cost,
    )
    if save:
        job.estimated_cost_usd = cost
        job.save(update_fields=["estimated_cost_usd"])
    return estimate
