"""Clone a job: the same data with new settings, optionally reusing unchanged answers.

``job_clone`` creates a new draft job from the source job's items (their input
fields, in order) and the settings given (``job_create``'s keywords). With
``only_changed``, every new item whose rendered request (model, system prompt,
rendered prompt, max_tokens, stop sequences) is identical to the request of an
item the source job already answered successfully takes that answer: output,
stop reason, usage and status are copied, the item is marked ``reused`` and
costs nothing here. Only the other items are left pending, so running the
clone pays only for what changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from .jobs import job_create
from .models import BatchJob, Item
from .prompts import build_params

__all__ = ["clone_settings", "job_clone", "request_key"]

CHUNK = 2000


def request_key(job: Any, fields: Any) -> str | None:
    """A digest of the Messages API request one item makes (``None`` if it can't be rendered)."""
    try:
        params = build_params(job, fields if isinstance(fields, dict) else {"text": fields})
    except Exception:
        return None
    canonical = json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def clone_settings(job: BatchJob) -> dict[str, Any]:
    """The source job's settings as the new-job form's initial values."""
    return {
        "name": f"{job.name} (copy)"[:200],
        "prompt_template": job.prompt_template,
        "system_prompt": job.system_prompt,
        "model": job.model,
        "max_tokens": job.max_tokens,
        "concurrency": job.concurrency,
    }


def _source_inputs(source: BatchJob) -> list[Any]:
    rows = Item.objects.filter(job_id=source.pk).order_by("position").values_list("input", flat=True)
    return list(rows.iterator(chunk_size=CHUNK))


def _answers(source: BatchJob) -> dict[str, dict[str, Any]]:
    """Request digest -> the source's succeeded answer for it (the first one in position order)."""
    answers: dict[str, dict[str, Any]] = {}
    rows = (
        Item.objects.filter(job_id=source.pk, status=Item.Status.SUCCEEDED)
        .order_by("position")
        .values("input", "output", "stop_reason", "input_tokens", "output_tokens", "latency_ms", "ttft_ms")
    )
    for row in rows.iterator(chunk_size=CHUNK):
        answer: dict[str, Any] = dict(row)
        key = request_key(source, answer.pop("input"))
        if key is not None and key not in answers:
            answers[key] = answer
    return answers


def _reuse(job: BatchJob, answers: dict[str, dict[str, Any]], items: Iterable[Item]) -> int:
    now = timezone.now()
    reused = []
    for item in items:
        answer = answers.get(request_key(job, item.input) or "")
        if answer is None:
            continue
        for name, value in answer.items():
            setattr(item, name, value)
        item.status = Item.Status.SUCCEEDED
        item.reused = True
        item.attempts = 0
        item.started_at = item.finished_at = now
        reused.append(item)
    fields = ["status", "reused", "attempts", "started_at", "finished_at", *answers_fields()]
    Item.objects.bulk_update(reused, fields, batch_size=500)
    return len(reused)


def answers_fields() -> list[str]:
    return ["output", "stop_reason", "input_tokens", "output_tokens", "latency_ms", "ttft_ms"]


def job_clone(*, source: BatchJob, owner: Any = None, only_changed: bool = False, **settings: Any) -> BatchJob:
    """A new draft job on ``source``'s data with ``settings`` (``job_create``'s keywords except
    the data). With ``only_changed``, unchanged requests reuse the source's answers at no cost.
    Raises ``JobInputError`` (nothing created) when the settings don't fit the data."""
    records = _source_inputs(source)
    with transaction.atomic():
        job = job_create(owner=owner, records=records, **settings)
        job.source_job = source
        job.save(update_fields=["source_job"])
        if only_changed:
            answers = _answers(source)
            if answers:
                items = Item.objects.filter(job_id=job.pk).only("pk", "input").order_by("position")
                _reuse(job, answers, items.iterator(chunk_size=CHUNK))
                job.refresh_counters()
                if job.remaining_count == 0:
                    job.mark_finished(recount=False)
    return job
