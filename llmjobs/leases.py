"""The items one run holds: claimed in bounded chunks with a lease, renewed, released.

A :class:`Leases` belongs to one ``JobRunner`` and is used from its writer thread
only (every method runs the ORM). Items stream from the database a chunk at a
time (``ItemQuerySet.claim``, at most ``max_chunk`` rows); nothing loads a job's
items at once. ``held`` is what the run claimed and has not written yet: claimed
chunks, calls in flight and answers waiting for the writer, never the whole job.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any, Protocol

from .models import Item
from .workers import ChunkSizer, worker_identity

__all__ = ["Leases"]


class _Report(Protocol):
    released: int


class Leases:
    __slots__ = ("held", "job_id", "last_renew", "lease", "report", "sizer")

    def __init__(self, job_id: int, *, lease: dt.timedelta, max_chunk: int, report: _Report) -> None:
        self.job_id = job_id
        self.lease = lease
        self.report = report
        self.held: set[int] = set()  # claimed by us, outcome not yet written
        self.last_renew = time.monotonic()
        self.sizer = ChunkSizer(max_chunk=max_chunk)

    def claim(self, *, done: int, most: int | None = None) -> list[tuple[int, Any]]:
        """The next chunk of claimable items as ``(pk, input)``, now leased to us; at most
        ``most`` of them when given (a run's small first claim, a preview's last one)."""
        if time.monotonic() - self.last_renew > self.lease.total_seconds() / 3:
            # After a stall (a database outage) our own leases may have lapsed: renew them
            # before claiming, so that we never claim (and pay for) an item we still hold.
            self.renew()
        size = self.sizer.for_claim(done=done)  # lasts a few seconds
        if most is not None:
            size = max(1, min(size, most))
        rows = Item.objects.filter(job_id=self.job_id).claim(limit=size, lease=self.lease, worker=worker_identity())
        self.held.update(pk for pk, _ in rows)
        return rows

    def renew(self) -> None:
        held = list(self.held)
        if held:
            Item.objects.filter(pk__in=held).renew(lease=self.lease)
        self.last_renew = time.monotonic()

    def release(self, ids: list[int]) -> int:
        """Put ``ids`` back to pending (interrupted, not answered)."""
        count = Item.objects.filter(pk__in=ids).release()
        self.report.released += count
        return count

    def written(self, ids: Iterable[Any]) -> None:
        """These items' outcomes are stored (or released): we no longer hold them."""
        self.held.difference_update(ids)

    def next_foreign_expiry(self) -> dt.datetime | None:
        """When the first lease held by another (perhaps dead) runner expires."""
        qs = Item.objects.filter(job_id=self.job_id)
        if self.held:
            qs = qs.exclude(pk__in=list(self.held))
        return qs.next_lease_expiry()

    def let_go(self, *, cancelled: bool) -> None:
        """The run ends: what we still hold is cancelled (the job was) or released."""
        held = list(self.held)
        if held:
            if cancelled:
                Item.objects.filter(pk__in=held).cancel_running()
            else:
                self.release(held)
            self.held.clear()
