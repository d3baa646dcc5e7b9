"""Live progress of a job: the SSE event stream and the throughput series.

``progress_events(job_id)`` is the async generator behind the job page's
``EventSource``. Every stream of one job in a server process shares ONE
``JobPoller`` (``poller.py``): it reads the job every ``TICK`` seconds with a
``JobReader`` (one small query, plus a query for the last errors when the
failure count moves and a retries aggregate at most every ``RETRIES_EVERY``
seconds; items/s comes from the counters' recent history), in one
``sync_to_async`` hop, encodes the ``progress`` event once, and wakes the
streams. So 200 open tabs cost one query loop, not 200. The stream ends with a
``done`` event when the job is not queued or running any more; after
``max_seconds`` it simply ends and the browser's ``EventSource`` reconnects
(the ``retry:`` hint says when). The poller stops when its last stream leaves.

``throughput(job)`` buckets finished items over the run with one aggregate
query, for the server-side SVG plot.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncHour, TruncMinute, TruncSecond
from django.utils import timezone

from ..models import BatchJob, Item
from ..pricing import model_known
from . import sse
from .poller import JobPoller, subscribe

__all__ = [
    "Bucket",
    "JobPoller",
    "JobReader",
    "progress_events",
    "snapshot_payload",
    "throughput",
    "throughput_svg_context",
]

TICK = 0.5  # seconds between reads of the job's counters
RATE_WINDOW = 10.0  # seconds of history behind items/s
RETRIES_EVERY = 30.0  # seconds between retries aggregates while running (a scan of the job's items)
HEARTBEAT = 15.0  # seconds of silence before a keep-alive comment
MAX_STREAM_SECONDS = 300.0  # then the stream ends and EventSource reconnects
RECONNECT_MS = 1500
LAST_ERRORS = 3

_JOB_FIELDS = (
    "status",
    *BatchJob.COUNTER_FIELDS,
    "started_at",
    "finished_at",
    "last_error",
    "rate_limited_count",
    "saved_usd",
    "budget_usd",
    "model",
)

_STATUS_LABELS = dict(BatchJob.Status.choices)


def _active(status: str) -> bool:
    return status in BatchJob.ACTIVE_STATUSES


def _last_errors(job_id: int) -> list[dict[str, Any]]:
    rows = (
        Item.objects.filter(job_id=job_id, status=Item.Status.FAILED)
        .order_by(F("finished_at").desc(nulls_last=True), "-position")
        .values("position", "error_type", "error_message")[:LAST_ERRORS]
    )
    return [
        {"position": r["position"], "type": r["error_type"], "message": (r["error_message"] or "")[:300]} for r in rows
    ]


def _settling(job_id: int) -> bool:
    """Items of a cancelled job still held by a live runner (their answers are on the way)."""
    return Item.objects.filter(job_id=job_id).live().exists()


def _retries(job_id: int) -> int:
    """Extra requests beyond one per finished item: 429s, 529s and transient errors."""
    agg = Item.objects.filter(job_id=job_id, attempts__gt=1).aggregate(n=Count("pk"), attempts=Sum("attempts"))
    return int(agg["attempts"] or 0) - int(agg["n"] or 0)


def snapshot_payload(
    row: dict[str, Any],
    *,
    items_per_s: float | None,
    retries: int | None,
    errors: list[dict[str, Any]],
) -> dict[str, Any]:
    """The JSON sent to the page for one reading of the job's row."""
    done = row["succeeded_count"] + row["failed_count"] + row["cancelled_count"]
    total = row["total"]
    remaining = max(total - done, 0)
    eta = None
    if _active(row["status"]) and items_per_s and items_per_s > 0 and remaining:
        eta = round(remaining / items_per_s, 1)
    return {
        "status": row["status"],
        "status_label": _STATUS_LABELS.get(row["status"], row["status"]),
        "active": _active(row["status"]),
        "total": total,
        "done": done,
        "succeeded": row["succeeded_count"],
        "failed": row["failed_count"],
        "cancelled": row["cancelled_count"],
        "remaining": remaining,
        "percent": round(100.0 * done / total, 1) if total else 100.0,
        "items_per_s": None if items_per_s is None else round(items_per_s, 2),
        "eta_s": eta,
        "retries": retries,
        "rate_limited": row["rate_limited_count"],
        "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"],
        "cost": str(row["cost_usd"]) if model_known(row.get("model") or "") else "unknown",
        "cache_creation_input_tokens": row.get("cache_creation_input_tokens", 0),
        "cache_read_input_tokens": row.get("cache_read_input_tokens", 0),
        "saved": str(row.get("saved_usd", 0)),
        "budget": None if row.get("budget_usd") is None else str(row["budget_usd"]),
        "last_error": row["last_error"],
        "errors": errors,
    }


DELETED = {"status": "deleted", "active": False}


class JobReader:
    """One job's progress readings, with the history behind items/s and the cached extras.

    Sync on purpose: ``JobPoller`` runs ``read`` in one ``sync_to_async`` hop a tick
    (the row, plus the errors/retries queries when they are due), off the event loop.
    """

    __slots__ = ("errors", "history", "job_id", "queryset", "retries", "retries_at", "retries_done", "seen_failed")

    def __init__(self, job_id: int) -> None:
        self.job_id = job_id
        self.history: deque[tuple[float, int]] = deque()
        self.seen_failed: int | None = None
        self.errors: list[dict[str, Any]] = []
        self.retries: int | None = None
        self.retries_at = -math.inf
        self.retries_done: int | None = None
        self.queryset = BatchJob.objects.filter(pk=job_id).values(*_JOB_FIELDS)

    def read(self, now: float) -> tuple[dict[str, Any], bool]:
        """(the payload, whether the job is finished) at loop time ``now``."""
        row = self.queryset.first()
        settling = False
        if row is not None and row["status"] == BatchJob.Status.CANCELLED:
            # Cancelled, but a runner may still be writing its in-flight answers: keep counting
            # until it lets go; then read the counters again so "done" carries the final ones.
            settling = _settling(self.job_id)
            if not settling:
                row = self.queryset.first()
        if row is None:  # deleted while watched
            return DELETED, True
        done = row["succeeded_count"] + row["failed_count"] + row["cancelled_count"]
        active = _active(row["status"]) or settling

        # items/s over the last RATE_WINDOW seconds of counter readings
        history = self.history
        history.append((now, done))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW:
            history.popleft()
        items_per_s = None
        if row["status"] == BatchJob.Status.RUNNING and now - history[0][0] >= 0.9:
            items_per_s = max(done - history[0][1], 0) / (now - history[0][0])

        if row["failed_count"] != self.seen_failed:
            self.seen_failed = row["failed_count"]
            self.errors = _last_errors(self.job_id) if self.seen_failed else []
        if self.retries is None or (
            done != self.retries_done and (not active or now - self.retries_at >= RETRIES_EVERY)
        ):
            self.retries, self.retries_at, self.retries_done = _retries(self.job_id), now, done
        return snapshot_payload(row, items_per_s=items_per_s, retries=self.retries, errors=self.errors), not active


async def progress_events(
    job_id: int,
    *,
    tick: float | None = None,
    max_seconds: float | None = None,
) -> AsyncIterator[bytes]:
    """SSE events for one job: ``progress`` whenever something changed, then ``done``.

    Every stream of the job in this process reads the same shared ``JobPoller``.
    """
    max_seconds = MAX_STREAM_SECONDS if max_seconds is None else max_seconds
    loop = asyncio.get_running_loop()
    started = loop.time()
    yield sse.retry(RECONNECT_MS)
    with subscribe(job_id, tick=TICK if tick is None else tick, reader=JobReader) as poller:
        seen = 0  # the poller's payload version last sent
        last_sent = started
        while True:
            now = loop.time()
            if poller.progress is not None and (poller.version != seen or now - last_sent >= HEARTBEAT):
                seen, last_sent = poller.version, now
                yield poller.progress
                continue  # the client may have been slow: look at the latest reading again
            if poller.done is not None:
                yield poller.done
                return
            if poller.failed or (seen and now - started >= max_seconds):
                return  # the client reconnects; a fresh stream picks up from the database
            await poller.next_reading()


# --- throughput over time ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    start: float  # seconds since the run started
    width: float  # seconds
    items: int
    retries: int

    @property
    def items_per_s(self) -> float:
        return self.items / self.width

    @property
    def retries_per_s(self) -> float:
        return self.retries / self.width


MAX_BUCKETS = 60


def throughput(job: BatchJob, *, now: dt.datetime | None = None, max_buckets: int = MAX_BUCKETS) -> list[Bucket]:
    """Items finished (and retries) per time bucket since the job started; one query.

    The database groups by second, minute or hour (whatever keeps the rows
    few for the run's length); the rows are then folded into at most
    ``max_buckets`` equal buckets.
    """
    if job.started_at is None:
        return []
    start = job.started_at
    end = job.finished_at or now or timezone.now()
    span = max((end - start).total_seconds(), 1.0)
    trunc: type[TruncSecond | TruncMinute | TruncHour]
    if span <= 15 * 60:
        trunc, grain = TruncSecond, 1
    elif span <= 15 * 3600:
        trunc, grain = TruncMinute, 60
    else:
        trunc, grain = TruncHour, 3600
    width = max(float(grain), math.ceil(span / max_buckets / grain) * grain)
    count = max(1, math.ceil(span / width))
    items = [0] * count
    retries = [0] * count
    rows = (
        Item.objects.filter(job_id=job.pk, finished_at__gte=start)
        # answered items only: a Cancel stamps every pending item at once (no spike), reused answers cost no time
        .exclude(status=Item.Status.CANCELLED)
        .exclude(reused=True)
        .annotate(t=trunc("finished_at"))
        .values("t")
        .annotate(n=Count("pk"), attempts=Sum("attempts"))
        .order_by("t")
    )
    for row in rows:
        offset = (row["t"] - start).total_seconds()
        index = min(max(int(offset // width), 0), count - 1)
        items[index] += row["n"]
        retries[index] += max(int(row["attempts"] or 0) - row["n"], 0)
    return [Bucket(start=i * width, width=width, items=items[i], retries=retries[i]) for i in range(count)]


# The plot's geometry, in SVG user units.
SVG_WIDTH, SVG_HEIGHT, SVG_PAD = 640, 180, 32


def throughput_svg_context(buckets: list[Bucket]) -> dict[str, Any]:
    """Template context for ``llmjobs/throughput.svg``: bars of items/s and a line of retries/s."""
    width, height, pad = SVG_WIDTH, SVG_HEIGHT, SVG_PAD
    peak = max([b.items_per_s for b in buckets] + [b.retries_per_s for b in buckets] + [1.0])
    plot_w, plot_h = width - 2 * pad, height - 2 * pad
    bar_w = plot_w / len(buckets) if buckets else plot_w
    bars, points = [], []
    for i, b in enumerate(buckets):
        h = plot_h * b.items_per_s / peak
        bars.append(
            {
                "x": round(pad + i * bar_w, 1),
                "y": round(pad + plot_h - h, 1),
                "w": round(max(bar_w - 1, 1), 1),
                "h": round(h, 1),
                "title": f"{b.start:.0f}s: {b.items_per_s:.1f} items/s, {b.retries_per_s:.1f} retries/s",
            }
        )
        ry = pad + plot_h - plot_h * b.retries_per_s / peak
        points.append(f"{pad + (i + 0.5) * bar_w:.1f},{ry:.1f}")
    span = buckets[-1].start + buckets[-1].width if buckets else 0
    return {
        "width": width,
        "height": height,
        "pad": pad,
        "plot_w": plot_w,
        "plot_h": plot_h,
        "bars": bars,
        "points": " ".join(points),
        "peak": peak,
        "span": span,
        "has_retries": any(b.retries for b in buckets),
        "empty": not buckets,
        "bottom": pad + plot_h,
        "right": pad + plot_w,
    }
