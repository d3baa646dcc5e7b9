"""Writing a new job's items, and running the job while they are still being written (issue 17).

``insert_items``: the rows ``Item.objects.bulk_create`` would write, several times
faster: COPY on PostgreSQL (psycopg 3), ``executemany`` in batches elsewhere.

``fill``: the job and its first ``FIRST_BATCH`` items are committed together, the
job's item set still *open* (``BatchJob.filling_until``, a lease the submitter renews
with every batch). ``start(job)`` is then called at once (run the job, or enqueue it)
while a thread inserts the rest, one transaction per ``FILL_BATCH`` items; the last
one closes the set (``filling_until = NULL``) in the same transaction. So:

- a runner never finishes an open job: when it finds nothing to claim it waits for
  more rows (``fill_open`` is read *before* each claim, so once it says closed, the
  claim that follows sees every item);
- ``total`` is the whole input's count from the start, and is set again with each
  batch (a recount while rows are still arriving would lower it);
- a cancel stops both: ``job_cancel`` closes the set, and a batch whose job was
  cancelled (or cut short) is rolled back and the insertion stops;
- a submitter that dies mid-insert (SIGKILL) stops renewing the lease. Whoever reads
  the job next (a runner's claim or start, ``recover_stalled_jobs``) sees the lapsed
  lease and **cancels** the job, with the reason in ``last_error``: only part of the
  input exists, so nothing more is paid for (calls already in flight finish and are
  stored). ``job_retry`` runs the items that were inserted, if that is what's wanted.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from django.db import OperationalError, transaction
from django.db import connection as default_connection
from django.utils import timezone

from .conf import llmjobs_settings
from .db_retry import DbRetry
from .models import BatchJob, Item

__all__ = [
    "FILL_BATCH",
    "FIRST_BATCH",
    "cut_short",
    "fill",
    "fill_open",
    "insert_items",
    "join_fills",
    "still_filling",
]

log = logging.getLogger(__name__)

Row = tuple[dict[str, Any], str]  # (the item's fields, its custom id)

BULK_BATCH_SIZE = 2000  # rows per executemany (SQLite and others)
FIRST_BATCH = 1000  # items committed with the job: a runner can start on them at once
FILL_BATCH = 10_000  # items per transaction after the first batch
HEAD_START = 10.0  # seconds the filler waits at most for an in-process runner's first claim (``head_start``)


def insert_items(job_id: int, rows: Sequence[Row], start: int = 0, *, copy: bool = True) -> None:
    """Insert new pending items at positions ``start``, ``start + 1``...: COPY on PostgreSQL
    (unless ``copy`` is false: for ``bench/submit.py``'s comparison), else ``executemany`` in batches.

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
    names = [f.name for f in fields]
    template = [constant.get(name) for name in names]  # a row of defaults; four slots vary
    at_job, at_position, at_input, at_custom_id = (names.index(n) for n in ("job", "position", "input", "custom_id"))
    if input_field.encoder is None and connection.vendor in ("sqlite", "postgresql"):
        # What the field would store (json.dumps with the default encoder), without its
        # per-value layers; PostgreSQL's COPY parses the text into jsonb.
        encode: Callable[[Any], Any] = json.dumps
    else:
        encode = partial(input_field.get_db_prep_save, connection=connection)

    def row_params(position: int, item_fields: dict[str, Any], custom_id: str) -> list[Any]:
        row = template.copy()
        row[at_job] = job_id
        row[at_position] = position
        row[at_input] = encode(item_fields)
        row[at_custom_id] = custom_id
        return row

    with connection.cursor() as cursor:
        if copy and connection.vendor == "postgresql" and hasattr(cursor.cursor, "copy"):  # psycopg 3
            with cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as out:
                for position, (item_fields, custom_id) in enumerate(rows, start):
                    out.write_row(row_params(position, item_fields, custom_id))
            return
        sql = f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"
        for offset in range(0, len(rows), BULK_BATCH_SIZE):
            cursor.executemany(
                sql,
                [
                    row_params(position, item_fields, custom_id)
                    for position, (item_fields, custom_id) in enumerate(
                        rows[offset : offset + BULK_BATCH_SIZE], start + offset
                    )
                ],
            )


def _lease() -> dt.timedelta:
    return dt.timedelta(seconds=llmjobs_settings().lease_seconds)


class _Closed(Exception):
    """The job was cancelled (or cut short) while its items were inserted: roll this batch back."""


def fill(
    create: Callable[..., BatchJob],
    rows: Sequence[Row],
    start: Callable[[BatchJob], Any],
    *,
    head_start: bool = False,
    wait: bool = True,
) -> BatchJob:
    """Create the job (``create(total=..., filling_until=...)``) with its first batch of items,
    call ``start(job)`` as soon as they are committed, and insert the rest meanwhile on a
    thread of its own. Returns when both are done; the thread's error, if any, is raised.

    ``head_start``: ``start`` runs the job in this process. The filler then waits (at most
    ``HEAD_START`` s) until the runner has claimed its first items: both are Python and
    would share the GIL, and the runner's start (importing the SDK, opening the client)
    goes first; the rest is inserted while the first calls are in flight. The same for a
    job ``start`` queues (the web form, the API): on SQLite the filler's batches would
    hold the one write lock the worker's first claim and answers wait for.

    ``wait=False`` (a web request whose ``start`` enqueues the job): return once ``start``
    has, the rest still being inserted. A server that stops cleanly finishes the insertion
    first: the ASGI lifespan shutdown calls ``join_fills`` (uvicorn re-raises SIGTERM once
    shut down, so a thread alone would not be waited for; it is not a daemon either). One
    that is killed leaves a lapsed lease, and the job is cut short with the reason. The
    thread's error is logged, and cuts the job short."""
    with transaction.atomic():
        job = create(total=len(rows), filling_until=timezone.now() + _lease() if len(rows) > FIRST_BATCH else None)
        insert_items(job.pk, rows[:FIRST_BATCH])
    if len(rows) <= FIRST_BATCH:
        start(job)
        return job
    errors: list[BaseException] = []
    thread = threading.Thread(
        target=_fill_rest if wait else _fill_in_background,
        args=(job.pk, rows, errors, head_start),
        name=f"llmjobs-fill-{job.pk}",
        daemon=wait,
    )
    if not wait:  # ``start`` first (it writes too), then the rest: SQLite has one writer at a time
        with _fills_lock:
            _fills.add(thread)
        try:
            start(job)
        finally:
            thread.start()
        return job
    thread.start()
    try:
        start(job)
    finally:
        thread.join()  # a second Ctrl-C here leaves a job whose fill lease lapses: it is cut short
    if errors:
        raise errors[0]
    return job


_fills: set[threading.Thread] = set()  # fills still running after ``fill(wait=False)`` returned
_fills_lock = threading.Lock()


def _fill_in_background(*args: Any) -> None:
    try:
        _fill_rest(*args)
    finally:
        with _fills_lock:
            _fills.discard(threading.current_thread())


def join_fills(timeout: float | None = None) -> bool:
    """Wait (at most ``timeout`` s) for the insertions ``fill(wait=False)`` left running in
    this process; returns whether they are all done."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _fills_lock:
        threads = list(_fills)
    for thread in threads:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    with _fills_lock:
        return not _fills


def _insert_batch(job_id: int, batch: Sequence[Row], done: int, total: int) -> None:
    last = done + len(batch) >= total
    with transaction.atomic():
        insert_items(job_id, batch, done)
        # The job row is locked from here to the commit: a cancel waits for us, or we see it.
        still_open = (
            BatchJob.objects.filter(pk=job_id, filling_until__isnull=False)
            .exclude(status=BatchJob.Status.CANCELLED)
            .update(total=total, filling_until=None if last else timezone.now() + _lease())
        )
        if not still_open:
            raise _Closed


def _first_claim(job_id: int) -> None:
    """Wait (at most ``HEAD_START`` s, and half the fill lease, which nobody renews meanwhile)
    until an item of ``job_id`` is no longer pending."""
    deadline = time.monotonic() + min(HEAD_START, _lease().total_seconds() / 2)
    while time.monotonic() < deadline:
        try:
            if Item.objects.filter(job_id=job_id).exclude(status=Item.Status.PENDING).exists():
                return
        except OperationalError:  # a busy database: the batches that follow retry
            default_connection.close()
        time.sleep(0.02)


def _fill_rest(job_id: int, rows: Sequence[Row], errors: list[BaseException], head_start: bool = False) -> None:
    """The filler thread: the items after the first batch, one transaction per ``FILL_BATCH``,
    each retried over a fresh connection while the database is briefly unavailable or locked
    (a batch is all or nothing)."""
    done = FIRST_BATCH
    retry = DbRetry(label=f"job {job_id}: inserting items", outage_seconds=llmjobs_settings().db_outage_seconds)
    try:
        if head_start:
            _first_claim(job_id)
        while done < len(rows):
            batch = rows[done : done + FILL_BATCH]
            try:
                retry.call(_insert_batch, job_id, batch, done, len(rows))
            except _Closed:
                log.warning(
                    "job %s: cancelled after %d of %d item(s) were inserted; inserting no more", job_id, done, len(rows)
                )
                return
            done += len(batch)
    except BaseException as exc:
        log.exception("job %s: inserting its items failed after %d of %d", job_id, done, len(rows))
        errors.append(exc)
        try:
            cut_short(job_id, reason=f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300])
        except Exception:
            log.exception("job %s: could not close its item set; its fill lease will lapse", job_id)
    finally:
        default_connection.close()  # this thread's own connection


def fill_open(job_id: int) -> bool:
    """Whether more items may still be inserted into ``job_id``. A set whose submitter has
    stopped renewing it (killed mid-insert) is cut short here (``cut_short``)."""
    until = BatchJob.objects.filter(pk=job_id).values_list("filling_until", flat=True).first()
    if until is None:
        return False
    if until >= timezone.now():
        return True
    cut_short(job_id, expired=until)
    return False


def still_filling(job: BatchJob) -> bool:
    """``fill_open`` for a job just read; when its set has closed since (all in, or cut
    short and cancelled), ``job`` is read again."""
    if job.filling_until is None:
        return False
    if fill_open(job.pk):
        return True
    job.refresh_from_db()
    return False


def cut_short(job_id: int, *, expired: dt.datetime | None = None, reason: str = "") -> bool:
    """Close ``job_id``'s item set before all items were inserted and cancel the job: its
    pending items are cancelled, ``last_error`` says why. With ``expired``, only if the
    fill lease still has that value (nobody renewed or closed it since). Returns whether
    it did (once, whoever notices first)."""
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.filling_until is None or (expired is not None and job.filling_until != expired):
            return False
        expected = job.total
        inserted = Item.objects.filter(job_id=job_id).count()
        why = reason or "the submitting process stopped (killed?) while inserting them"
        Item.objects.filter(job_id=job_id).cancel_pending()
        job.filling_until = None
        job.last_error = (
            f"Submission cut short: only {inserted} of {expected} item(s) were inserted ({why}); the job was "
            "cancelled. Retry it to run the items inserted, or submit the input again."
        )
        job.save(update_fields=["filling_until", "last_error"])
        if job.status != BatchJob.Status.CANCELLED:
            job.mark_cancelled()
        job.refresh_counters()
    log.error("job %s: %s", job_id, job.last_error)
    return True
