"""One progress poller per job, shared by every SSE stream of that job in this process.

``subscribe(job_id, tick=..., reader=...)`` is a context manager: the first
subscriber of a job starts a ``JobPoller`` (an asyncio task on the running
loop); later ones join it; when the last one leaves, the task is cancelled.

Each tick the poller calls ``reader.read(now)`` in ONE ``sync_to_async`` hop
(the ORM, off the loop), encodes the ``progress`` event once when the payload
changed (``version`` counts the changes), and wakes the subscribers, which
send the already-encoded bytes. When the job is finished (or deleted) it
encodes ``done`` and ends; a database error is retried on the next tick up to
``MAX_FAILURES`` times in a row, then the poller stops with a one-line reason
(``failed``) and its streams end, so the browsers reconnect to a fresh one.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol

from asgiref.sync import sync_to_async
from django.db import DatabaseError, close_old_connections

from . import sse

__all__ = ["MAX_FAILURES", "JobPoller", "Reader", "pollers", "subscribe"]

log = logging.getLogger(__name__)

MAX_FAILURES = 3  # database errors in a row before a poller gives up


class Reader(Protocol):
    def read(self, now: float) -> tuple[dict[str, Any], bool]: ...


# loop -> {job id: poller}. Weak keys: a loop that is gone takes its pollers with it.
_pollers: MutableMapping[asyncio.AbstractEventLoop, dict[int, JobPoller]] = weakref.WeakKeyDictionary()


def pollers() -> dict[int, JobPoller]:
    """The running loop's live pollers by job id (tests, and the count in a debug page)."""
    return dict(_pollers.get(asyncio.get_running_loop(), {}))


class JobPoller:
    """Reads one job every ``tick`` seconds and fans the reading out to its subscribers."""

    created: ClassVar[int] = 0  # pollers ever started in this process (tests count them)

    def __init__(self, job_id: int, *, tick: float, reader: Reader) -> None:
        self.job_id = job_id
        self.tick = tick
        self.reader = reader
        self.subscribers = 0
        self.reads = 0
        self.version = 0  # bumped whenever the payload changes
        self.progress: bytes | None = None  # the latest `progress` event, encoded once
        self.done: bytes | None = None  # the `done` event, once the job is finished
        self.failed = ""  # why the poller stopped early (its streams end; browsers reconnect)
        self._payload: dict[str, Any] | None = None
        self._reading = asyncio.Event()
        self._read = sync_to_async(self._read_sync, thread_sensitive=True)
        self.task: asyncio.Task[None] | None = None
        JobPoller.created += 1

    @property
    def finished(self) -> bool:
        return self.done is not None or bool(self.failed)

    def start(self) -> None:
        # A fresh context: the poller outlives the request that started it, so it must not
        # inherit that request's thread-sensitive context (whose thread goes back to the pool).
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"progress-poller-{self.job_id}", context=contextvars.Context()
        )

    def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def next_reading(self) -> None:
        """Wait for the next reading (or for the poller to end)."""
        if not self.finished:
            await self._reading.wait()

    def _read_sync(self, now: float) -> tuple[dict[str, Any], bool]:
        try:
            return self.reader.read(now)
        except DatabaseError:
            # This thread's connection may be broken (database restarted): drop it, so that
            # the next tick reconnects instead of failing on the dead connection forever.
            close_old_connections()
            raise

    def _publish(self) -> None:
        event, self._reading = self._reading, asyncio.Event()
        event.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                try:
                    payload, finished = await self._read(loop.time())
                except DatabaseError as exc:
                    failures += 1
                    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    if failures >= MAX_FAILURES:
                        self.failed = f"job {self.job_id}: database unreadable {failures} times in a row ({reason})"
                        log.warning("progress poller stopped: %s", self.failed)
                        return
                    log.info("progress poller for job %s: %s; retrying", self.job_id, reason)
                else:
                    failures = 0
                    self.reads += 1
                    if payload != self._payload:
                        self._payload = payload
                        self.progress = sse.event("progress", payload) if payload.get("status") != "deleted" else None
                        self.version += 1
                    if finished:
                        self.done = sse.event("done", payload)
                        return
                    self._publish()
                await asyncio.sleep(self.tick)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: say so once, end the streams (they reconnect)
            self.failed = f"job {self.job_id}: {type(exc).__name__}: {exc}"
            log.exception("progress poller failed")
        finally:
            self._forget()
            self._publish()

    def _forget(self) -> None:
        registry = _pollers.get(asyncio.get_running_loop())
        if registry is not None and registry.get(self.job_id) is self:
            del registry[self.job_id]


@contextmanager
def subscribe(job_id: int, *, tick: float, reader: Callable[[int], Reader]) -> Iterator[JobPoller]:
    """Join (or start) the job's poller for as long as the ``with`` block runs."""
    loop = asyncio.get_running_loop()
    registry = _pollers.setdefault(loop, {})
    poller = registry.get(job_id)
    if poller is None:
        poller = registry[job_id] = JobPoller(job_id, tick=tick, reader=reader(job_id))
        poller.start()
    poller.subscribers += 1
    try:
        yield poller
    finally:
        poller.subscribers -= 1
        if poller.subscribers == 0:
            poller._forget()
            poller.stop()
