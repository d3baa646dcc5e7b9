"""``request.auser()`` for async requests: one long-lived thread, one kept-open connection.

Django's ``aget_user`` under ASGI makes a thread hop per query (session row, user row),
and each hop lands on the request's own fresh thread (``ThreadSensitiveContext``), which
opens a fresh database connection. On SQLite a fresh connection re-parses the whole schema
on its first query: ~0.7 ms of CPU, per playground stream, on top of the connect, two
hops and the thread (issue 17). Here ``UserLoader.load`` runs Django's own sync
``get_user`` (session row, user row, session-hash check, flush on mismatch: the same
checks) on ONE thread whose connection stays open between requests:

- reopened after ``MAX_AGE`` seconds, after a database error that left it unusable, or
  when a lookup left a transaction open (as ``CONN_MAX_AGE`` / ``close_old_connections``);
- a lookup that fails on a connection that went stale (server restart) is retried once
  on a fresh one;
- closed after ``IDLE_CLOSE`` seconds without a lookup, so a quiet server holds nothing
  (and PostgreSQL can drop a test database); ``close()`` closes it at once.

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


class UserLoader:
    MAX_AGE = 60.0
    IDLE_CLOSE = 2.0

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._opened_at: float | None = None  # touched on the thread only
        self.lookups = 0
        self.connects = 0  # connections this loader opened (tests: not one per request)

    async def load(self, request: HttpRequest) -> Any:
        """The request's user (cached on the request, as Django's ``auser`` does)."""
        for cached in ("_acached_user", "_cached_user"):
            if hasattr(request, cached):
                return getattr(request, cached)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        context = contextvars.copy_context()

        def job() -> None:
            try:
                result = context.run(self._lookup, request)
            except BaseException as exc:  # handed to the caller, who raises it
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        self._submit(job)
        return await future

    def close(self) -> None:
        """Close the thread's connections now (waits for it; a no-op without a thread)."""
        if self._thread is None:
            return
        done = threading.Event()

        def job() -> None:
            try:
                self._close_connections()
            finally:
                done.set()

        self._submit(job)
        done.wait(30)

    # --- on the thread ------------------------------------------------------------------

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="llmjobs-userload", daemon=True)
                self._thread.start()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.IDLE_CLOSE if self._opened_at is not None else None)
            except queue.Empty:
                self._close_connections()
                continue
            if job is None:
                self._close_connections()
                return
            try:
                job()
            except Exception:  # a job hands its errors to its caller; this is a bug: say so, keep serving
                log.exception("user lookup job failed")

    def _lookup(self, request: HttpRequest) -> Any:
        self.lookups += 1
        self._recycle()
        kept_open = self._opened_at is not None
        try:
            return self._attempt(request)
        except DatabaseError:
            if not kept_open:
                raise  # a fresh connection failed: a real error
            log.info("user lookup failed on a kept-open connection; retrying on a fresh one", exc_info=True)
            self._close_connections()
            return self._attempt(request)

    def _attempt(self, request: HttpRequest) -> Any:
        fresh = self._opened_at is None
        try:
            return _user_for(request)
        finally:
            if fresh and any(c.connection is not None for c in connections.all(initialized_only=True)):
                self._opened_at = time.monotonic()
                self.connects += 1

    def _recycle(self) -> None:
        """Close the kept-open connections if they are old, broken, or left in a transaction."""
        if self._opened_at is None:
            return
        old = time.monotonic() - self._opened_at > self.MAX_AGE
        for conn in connections.all(initialized_only=True):
            if conn.connection is None:
                continue
            broken = conn.errors_occurred and not conn.is_usable()
            if old or broken or conn.in_atomic_block or not conn.get_autocommit():
                self._close_connections()
                return

    def _close_connections(self) -> None:
        for conn in connections.all(initialized_only=True):
            try:
                conn.close()
            except Exception:  # closing a broken connection: nothing more to do
                log.warning("closing a user-lookup connection failed", exc_info=True)
        self._opened_at = None


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller went away (cancelled): nobody to tell
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


user_loader = UserLoader()
