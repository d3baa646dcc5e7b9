"""``request.auser()`` for async requests: long-lived threads with kept-open connections.

Django's ``aget_user`` under ASGI makes a thread hop per query (session row, user row),
and each hop lands on the request's own fresh thread (``ThreadSensitiveContext``), which
opens a fresh database connection. On SQLite a fresh connection re-parses the whole schema
on its first query: ~0.7 ms of CPU, per playground stream, on top of the connect, two
hops and the thread (issue 17). Here ``UserLoader.load`` runs Django's own sync
``get_user`` (session row, user row, session-hash check, flush on mismatch: the same
checks) on a few long-lived threads whose connections stay open between requests:

- reopened after ``MAX_AGE`` seconds, after a database error that left it unusable, or
  when a lookup left a transaction open (as ``CONN_MAX_AGE`` / ``close_old_connections``);
- a lookup that fails on a connection that went stale (server restart) is retried once
  on a fresh one;
- closed after ``IDLE_CLOSE`` seconds without a lookup, so a quiet server holds nothing
  (and PostgreSQL can drop a test database); ``close()`` closes them at once.

Sync requests (WSGI, the sync test client) keep Django's lazy ``request.user`` unchanged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from django.contrib.auth.middleware import get_user as _sync_get_user
from django.db import DatabaseError, connections
from django.http import HttpRequest

__all__ = ["UserLoader", "user_loader"]

log = logging.getLogger(__name__)


def _user_for(request: HttpRequest) -> Any:
    user = _sync_get_user(request)  # django.contrib.auth.middleware.get_user: caches _cached_user
    request._acached_user = user  # type: ignore[attr-defined]  # what Django's auser caches
    return user


class _Worker:
    """One loader thread's own state (Django connections are per thread)."""

    def __init__(self) -> None:
        self.opened_at: float | None = None


_WAKE = object()  # a queue item that only wakes a worker (close() uses it)


class UserLoader:
    """A few long-lived threads that share one queue of lookups.

    Several threads, not one: a lookup gives the GIL up around every database call and, with
    the loop busy, waits up to the switch interval (5 ms) to get it back each time; one thread
    would queue every request behind those waits, several wait side by side (as Django's
    per-request threads did). Each thread keeps its own connection.
    """

    THREADS = 8
    MAX_AGE = 60.0
    IDLE_CLOSE = 2.0

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or self.THREADS
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = False
        self._open = 0  # threads holding a connection
        self._closing = False
        self.lookups = 0
        self.connects = 0  # connections opened (tests: not one per request)

    async def load(self, request: HttpRequest) -> Any:
        """The request's user (cached on the request, as Django's ``auser`` does)."""
        for cached in ("_acached_user", "_cached_user"):
            if hasattr(request, cached):
                return getattr(request, cached)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def job(worker: _Worker) -> None:
            try:
                result = context.run(self._lookup, worker, request)
            except BaseException as exc:  # handed to the caller, who raises it
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        self._submit(job)
        return await future

    def close(self, timeout: float = 30.0) -> None:
        """Close every thread's connection now; returns once none is open (or after ``timeout``)."""
        with self._lock:
            if not self._started:
                return
            self._closing = True
        try:
            for _ in range(self.threads):
                self._jobs.put(_WAKE)
            deadline = time.monotonic() + timeout
            while self._open and time.monotonic() < deadline:
                time.sleep(0.005)
        finally:
            with self._lock:
                self._closing = False

    # --- on the threads -----------------------------------------------------------------

    def _submit(self, job: Callable[[_Worker], None]) -> None:
        with self._lock:
            if not self._started:
                self._started = True
                for n in range(self.threads):
                    name = f"llmjobs-userload-{n}"
                    threading.Thread(target=self._run, args=(_Worker(),), name=name, daemon=True).start()
        self._jobs.put(job)

    def _run(self, worker: _Worker) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_CLOSE if worker.opened_at is not None else None)
            except queue.Empty:
                self._close_connections(worker)
                continue
            if job is _WAKE:
                if self._closing:
                    self._close_connections(worker)
                continue
            try:
                job(worker)
            except Exception:  # a job hands its errors to its caller; this is a bug: say so, keep serving
                log.exception("user lookup job failed")

    def _lookup(self, worker: _Worker, request: HttpRequest) -> Any:
        with self._lock:
            self.lookups += 1
        self._recycle(worker)
        kept_open = worker.opened_at is not None
        try:
            return self._attempt(worker, request)
        except DatabaseError:
            if not kept_open:
                raise  # a fresh connection failed: a real error
            log.info("user lookup failed on a kept-open connection; retrying on a fresh one", exc_info=True)
            self._close_connections(worker)
            return self._attempt(worker, request)

    def _attempt(self, worker: _Worker, request: HttpRequest) -> Any:
        fresh = worker.opened_at is None
        try:
            return _user_for(request)
        finally:
            if fresh and any(c.connection is not None for c in connections.all(initialized_only=True)):
                worker.opened_at = time.monotonic()
                with self._lock:
                    self.connects += 1
                    self._open += 1

    def _recycle(self, worker: _Worker) -> None:
        """Close the kept-open connections if they are old, broken, or left in a transaction."""
        if worker.opened_at is None:
            return
        old = time.monotonic() - worker.opened_at > self.MAX_AGE
        for conn in connections.all(initialized_only=True):
            if conn.connection is None:
                continue
            broken = conn.errors_occurred and not conn.is_usable()
            if old or broken or conn.in_atomic_block or not conn.get_autocommit():
                self._close_connections(worker)
                return

    def _close_connections(self, worker: _Worker) -> None:
        for conn in connections.all(initialized_only=True):
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing more to do
                log.warning("closing a user-lookup connection failed", exc_info=True)
        if worker.opened_at is not None:
            worker.opened_at = None
            with self._lock:
                self._open -= 1


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller went away (cancelled): nobody to tell
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


user_loader = UserLoader()
