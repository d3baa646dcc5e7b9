"""Batch mode (issue 14): a job run through the Message Batches API, at 50% of the price.

``run_batch_job(job_id)`` (sync; the runner hands a batch-mode job to it):

1. resumes every batch stored in ``BatchJob.batch_state`` that was not collected
   (a crash or a restart while polling: nothing is submitted, or paid, twice);
2. claims the pending items (a lease of 25 h: no online runner takes them), splits
   them into batches within the API's limits (``MAX_REQUESTS``, ``MAX_BYTES``), each
   request's ``custom_id`` being ``item-<pk>``, and stores each batch id at once;
3. polls each batch with backoff until it has ended; a cancelled job cancels its
   batches through the API;
4. maps the results (any order) back by ``custom_id``, prices them at the batch rate,
   writes them and marks the batch collected, in one transaction;
5. puts errored and expired requests back to pending and submits them again in a
   new batch, up to ``retry_rounds`` times; then they fail with the reason.

Every database call goes through the run's ``DbRetry`` (as the online runner's): a locked
or restarting database is waited out for up to ``LLMJOBS_DB_OUTAGE_SECONDS``, above all
the write that stores a new batch's id (a batch the API has is paid for: losing its id
would send its items again). Past the limit the run stops with ``DatabaseUnavailable``;
the stored batches are polled, not sent again, by the next run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
import time
from typing import Any

from django.db import transaction

from .caching import CacheMarker
from .conf import api_target, llmjobs_settings
from .engine import Outcome
from .estimate import request_key
from .models import BatchJob, Item
from .prompts import build_params
from .reports import RunReport
from .writer import ITEM_FIELDS, DbRetry, fail_items, one_line, outcome_rows

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "run_batch_job"]

log = logging.getLogger(__name__)

MAX_REQUESTS = 100_000
MAX_BYTES = 200 * 1024 * 1024  # under the API's 256 MB, for the JSON envelope
BATCH_LEASE = dt.timedelta(hours=25)  # a batch ends within 24 h
PREFIX = "item-"


def _client() -> Any:
    import anthropic

    target = api_target()
    return anthropic.Anthropic(api_key=target.api_key, base_url=target.base_url, max_retries=5)


def _state(job: BatchJob) -> dict[str, Any]:
    state = job.batch_state or {}
    state.setdefault("batches", [])
    state.setdefault("round", 0)
    return state


def _save_state(job: BatchJob, state: dict[str, Any]) -> None:
    job.batch_state = state
    job.save(update_fields=["batch_state"])


def _submit(
    client: Any, job: BatchJob, state: dict[str, Any], marker: CacheMarker, max_requests: int, db: DbRetry
) -> int:
    """Claim the pending items and send them as batches; returns how many were sent."""
    sent = 0
    claim = Item.objects.filter(job_id=job.pk).claim
    while True:
        rows = db.call(claim, limit=min(max_requests, MAX_REQUESTS), lease=BATCH_LEASE)
        if not rows:
            return sent
        requests: list[dict[str, Any]] = []
        broken: list[tuple[int, str]] = []
        size = 0
        leaders: dict[str, int] = {}  # dedup: request digest -> the item that sends it
        followers: dict[str, list[int]] = {}  # leader pk (as text) -> items that get its answer
        for pk, fields in rows:
            try:
                params = marker.mark(build_params(job, fields))
            except Exception as exc:
                broken.append((pk, f"{type(exc).__name__}: {one_line(exc)}"))
                continue
            if job.dedup:
                digest = request_key(params)
                if digest in leaders:
                    followers.setdefault(str(leaders[digest]), []).append(pk)
                    continue
                leaders[digest] = pk
            request = {"custom_id": f"{PREFIX}{pk}", "params": params}
            size += len(json.dumps(request))
            if size > MAX_BYTES and requests:
                db.call(lambda pk=pk: Item.objects.filter(pk=pk).release())  # the next batch takes it
                break
            requests.append(request)
        if broken:
            db.call(fail_items, job.pk, broken, error_type="prompt_error")
        if not requests:
            continue
        batch = client.messages.batches.create(requests=requests)
        entry = {"id": batch.id, "status": "in_progress", "requests": len(requests), "followers": followers}
        state["batches"].append(entry)
        db.call(_save_state, job, state)  # stored at once: a restart polls it, never submits it again
        sent += len(requests)


def _poll(client: Any, job: BatchJob, entry: dict[str, Any], db: DbRetry, *, base: float, cap: float) -> None:
    """Wait for the batch to end (backoff), cancelling it when the job is cancelled."""
    delay = base
    cancelled = False
    while True:
        batch = client.messages.batches.retrieve(entry["id"])
        entry["counts"] = batch.request_counts.model_dump()
        entry["status"] = batch.processing_status
        if batch.processing_status == "ended":
            return
        if not cancelled and db.call(BatchJob.objects.status_of, job.pk) == BatchJob.Status.CANCELLED:
            client.messages.batches.cancel(entry["id"])
            cancelled = True
        time.sleep(delay)
        delay = min(delay * 2, cap)


def _collect(
    client: Any, job: BatchJob, state: dict[str, Any], entry: dict[str, Any], final: bool, db: DbRetry
) -> None:
    """Write the batch's results (by custom_id) and mark it collected, in one transaction."""
    outcomes: list[Outcome] = []
    retry: list[int] = []
    failures: list[tuple[int, str]] = []
    shared = entry.get("followers") or {}
    for result in client.messages.batches.results(entry["id"]):
        if not result.custom_id.startswith(PREFIX):
            continue
        pk = int(result.custom_id[len(PREFIX) :])
        copies = shared.get(str(pk), [])
        kind = result.result.type
        if kind == "succeeded":
            message = result.result.message
            text = "".join(getattr(block, "text", "") for block in message.content)
            usage = message.usage.model_dump(exclude_none=True)
            answer = Outcome(key=pk, status="succeeded", text=text, stop_reason=message.stop_reason, usage=usage)
            outcomes.append(dataclasses.replace(answer, attempts=1))
            outcomes.extend(dataclasses.replace(answer, key=c, usage=None) for c in copies)  # dedup: paid once
        elif kind == "canceled":
            outcomes.extend(Outcome(key=k, status="cancelled", attempts=1) for k in (pk, *copies))
        elif final:
            error = getattr(getattr(result.result, "error", None), "error", None)
            reason = f"batch request {kind}" + (f": {error.message}" if error is not None else "")
            failures.extend((k, reason) for k in (pk, *copies))
        else:
            retry.extend((pk, *copies))
    cancelled_job = db.call(BatchJob.objects.status_of, job.pk) == BatchJob.Status.CANCELLED
    rows = outcome_rows(outcomes, cancel=True, model=job.model, batch_price=True)
    db.call(_write, job, state, entry, rows, retry, failures)  # retried whole: one transaction
    if cancelled_job:
        db.call(Item.objects.filter(job_id=job.pk).cancel_pending)


def _write(
    job: BatchJob,
    state: dict[str, Any],
    entry: dict[str, Any],
    rows: Any,
    retry: list[int],
    failures: list[tuple[int, str]],
) -> None:
    with transaction.atomic():
        if rows.items:
            Item.objects.bulk_update(rows.items, ITEM_FIELDS, batch_size=500)
            BatchJob.objects.filter(pk=job.pk).add_to_counters(**rows.counters)
        if retry:
            Item.objects.filter(pk__in=retry).release()  # a new batch takes them
        if failures:
            fail_items(job.pk, failures, error_type="batch_error")
        entry["status"] = "collected"
        _save_state(job, state)


def run_batch_job(
    job_id: int,
    *,
    client: Any = None,
    poll_base: float = 1.0,
    poll_cap: float = 60.0,
    retry_rounds: int = 2,
    max_requests: int = MAX_REQUESTS,
    report: RunReport | None = None,
    stop: threading.Event | None = None,
) -> BatchJob:
    """Run (or resume) a batch-mode job to its end; returns the job. Database errors are
    retried (counted in ``report.db_retries``) until ``stop`` is set or the outage lasts
    past ``LLMJOBS_DB_OUTAGE_SECONDS`` (then ``DatabaseUnavailable``)."""
    client = client or _client()
    db = DbRetry(
        label=f"job {job_id} (batch mode)",
        outage_seconds=llmjobs_settings().db_outage_seconds,
        stop=stop,
        report=report,
    )
    job: BatchJob = db.call(BatchJob.objects.get, pk=job_id)
    state = _state(job)
    marker = CacheMarker(job)
    if job.status != BatchJob.Status.CANCELLED:
        db.call(job.mark_running)
    pending = Item.objects.filter(job_id=job.pk, status=Item.Status.PENDING)
    while True:
        for entry in state["batches"]:
            if entry["status"] != "collected":
                _poll(client, job, entry, db, base=poll_base, cap=poll_cap)
                _collect(client, job, state, entry, state["round"] >= retry_rounds, db)
        if db.call(BatchJob.objects.status_of, job.pk) == BatchJob.Status.CANCELLED:
            db.call(Item.objects.filter(job_id=job.pk).cancel_pending)
            break
        if not db.call(pending.exists):
            break
        if state["batches"]:
            state["round"] += 1
        if not _submit(client, job, state, marker, max_requests, db):
            break
    db.call(job.refresh_from_db)
    if job.status == BatchJob.Status.CANCELLED:
        db.call(job.refresh_counters)
    else:
        db.call(job.mark_finished)
    log.info("job %s (batch mode): %s", job.pk, job.status)
    return job
